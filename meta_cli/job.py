"""What every Hydra job shares: one-line errors that never end a sweep, and the run dir."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

from hydra.core.hydra_config import HydraConfig

from meta_cli.errors import UserError

T = TypeVar("T")

#: Messages of the jobs of this process that failed; the CLI turns them into its exit code.
FAILED: list[str] = []


def guarded(work: Callable[[], T]) -> T | None:
    """Run a job; a UserError becomes one line on stderr and a recorded failure.

    Raising (or sys.exit) inside a job would end a whole multirun, so the job returns None
    and the CLI reports the failure through its exit code once every job has run.
    """
    try:
        return work()
    except UserError as exc:
        print(f"meta-cli: error: {exc}", file=sys.stderr)
        FAILED.append(str(exc))
        return None


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)
