"""Configs against the constructors they map onto: keys, types and ranges read from the
constructors' signatures without importing torch (`validation`, `signatures`), and the
presets a job applies (`presets`)."""
