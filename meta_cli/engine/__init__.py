"""The engine: a config's objects built (`build`), trained by the `Trainer`, through the
regime its algorithm learns in (`regimes`)."""
