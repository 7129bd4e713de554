"""The run folder: checkpoints and their owner (the Checkpointer), metrics.csv and the result
files, the lock, whole-file writes, stops on signals, status.json."""
