"""`meta-cli report`: a run's or a sweep's table, summary.csv and plots."""
