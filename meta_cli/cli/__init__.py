"""The command line: the dispatcher (`main`), the command line parsed once (`commandline`),
the pre-flight every job passes before Hydra runs it (`preflight`), `resume=`'s expansion,
and the relaunch over several processes (`launch`)."""
from meta_cli.cli.main import main, run

__all__ = ["main", "run"]
