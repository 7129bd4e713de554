"""How an algorithm learns: from episodes, mini-batches or rollouts. See `base.Regime`."""
