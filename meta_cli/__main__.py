"""`python -m meta_cli train ...`: the same as the `meta-cli` console script."""
from meta_cli.cli.main import main

if __name__ == "__main__":
    main()
