"""Meta-testing: seeded episodes, mean +- 95 % intervals, the result CSVs."""
