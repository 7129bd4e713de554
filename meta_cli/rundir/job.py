"""What every Hydra job shares: status.json, one-line errors that never end a sweep, the run dir."""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from meta_cli.runtime import allocator
from meta_cli.config import presets
from meta_cli.rundir import lock
from meta_cli.rundir.checkpointer import setting_overrides
from meta_cli.atomic import write_atomic
from meta_cli.runtime.distributed import RankLost, env_rank
from meta_cli.errors import UserError
from meta_cli.rundir.stopping import Stopped
from meta_cli.runlog import show, to_log_file

T = TypeVar("T")

# conf/hydra/launcher/<name>.yaml shares its name with the plugin's schema, on purpose: Hydra then
# checks our preset against it, and warns that this matching is deprecated. Set here, on import,
# because the jobs of a joblib or submitit launcher compose their config in other processes.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")
# Every job flushes denormals to zero (allocator.tune_process), which numpy's float limits
# then report once per dtype (Gymnasium's spaces ask for them): expected, not a problem.
warnings.filterwarnings("ignore", message=r"The value of the smallest subnormal")

# Under SLURM with several tasks per job (hydra/launcher=submitit_slurm_ddp) every task runs
# Hydra's job set-up; conf/train.yaml asks this resolver for hydra.output_subdir and the log
# file, so that rank 0 alone writes them (the other tasks get null / os.devnull).
OmegaConf.register_new_resolver("meta_cli.rank0", lambda value, elsewhere=None: value if env_rank() == 0 else elsewhere,
                                replace=True)

#: Messages of the jobs of this process that failed; the CLI turns them into its exit code.
FAILED: list[str] = []


class _FailedTrialLine(logging.Filter):
    """Hydra's Optuna sweeper logs "Failed experiment: Return value must be float-castable. Got
    'None'." for each trial whose job failed, which `guarded` returns None for: the job has
    already said why in its one line, and the end of the sweep counts it. Other failures of
    the sweeper pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "must be float-castable. Got 'None'" not in record.getMessage()


# On the sweeper's own logger (set here, on import: the sweeper runs in the CLI's process,
# which imports this module with its app).
logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl").addFilter(_FailedTrialLine())


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _write_status(out: Path, status: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "status.json", (json.dumps(status, indent=1) + "\n").encode())


def guarded(work: Callable[[], T], trains: bool = False) -> T | None:
    """Run a job, recording it in <run dir>/status.json whatever happens.

    status.json says `running` from the start, then `ok`, `failed` with the error, or
    `stopped` (SIGTERM/SIGINT: a checkpoint was committed first) with the iteration it holds,
    with start/end times and the job's overrides; a job killed outright stays `running`, which
    `report` shows as unfinished. Raising (or sys.exit) inside a job would end a whole
    multirun, so a failed job prints one line and returns None (the Optuna sweeper records
    that as a failed trial; NaN would crash it); the CLI reports the failure through its exit
    code once every job has run. A stop ends the sweep: the user asked for it.

    `trains`: the job trains into its run dir, which it holds locked (meta_cli.rundir.lock) for as
    long as it runs; a run dir another live process trains in is refused before anything in
    it is touched.
    """
    allocator.tune_process()  # here, so that launcher worker processes get it too
    rank = env_rank()
    if rank > 0:
        return _other_rank(work, rank, trains)
    hydra = HydraConfig.get()
    out = run_dir()
    if trains:
        try:
            lock.acquire(out)
        except UserError as exc:
            print(f"meta-cli: error: {exc}", file=sys.stderr, flush=True)
            FAILED.append(str(exc))
            return None
    status: dict[str, Any] = {
        "status": "running", "error": None, "start": _now(), "end": None,
        # The setting's overrides only: a resumed job (resume=, device=...) stays in its setting.
        "overrides": setting_overrides(list(hydra.overrides.task)), "job": hydra.job.get("num"), "run_dir": str(out),
    }
    if trains:
        status["preset"] = presets.applied(hydra.runtime.choices.get("preset")) or "none"
    _write_status(out, status)
    try:
        result = work()
        status["status"] = "ok"
        return result
    except UserError as exc:
        message = _with_next_step(exc, out, trains)
        status.update(status="failed", error=message)
        show(f"meta-cli: error: {message}", sys.stderr, logging.ERROR)
    except Exception as exc:  # a bug or an environment fault: the sweep still goes on
        (out / "error.log").write_text(traceback.format_exc())
        message = f"unexpected {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        status.update(status="failed", error=message)
        show(f"meta-cli: error: {message} (traceback in {out / 'error.log'})", sys.stderr, logging.ERROR)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
    except Stopped as stop:
        status.update(status="stopped", error=None, signal=stop.signal_name, iteration=stop.iteration,
                      checkpoint=stop.checkpoint)
        saved = f"saved {stop.checkpoint}" if stop.checkpoint else "no checkpoint was committed yet"
        show(f"meta-cli: stopped by {stop.signal_name} after iteration {stop.iteration}; {saved}. "
             f"Resume with: meta-cli train resume={out}", sys.stderr, logging.WARNING)
        raise SystemExit(stop.exit_code) from None
    except BaseException as exc:  # Ctrl-C outside meta-training (during the meta-test)
        status.update(status="stopped", error=f"interrupted ({type(exc).__name__} {exc})".strip())
        to_log_file(f"meta-cli: {status['error']}", logging.WARNING)
        raise
    finally:
        status["end"] = _now()
        _write_status(out, status)
        if trains:
            lock.release(out)
    FAILED.append(status["error"])
    return None


def _with_next_step(exc: UserError, out: Path, trains: bool) -> str:
    """A lost rank's message, with what to do next: for training, the command that goes on
    from the checkpoints committed so far (meta_cli.rundir.checkpointer.next_step)."""
    if not isinstance(exc, RankLost):
        return str(exc)
    if not trains:
        return f"{exc}; run the command again"
    from meta_cli.rundir.checkpointer import next_step

    state, then = next_step(out)
    return f"{exc}; {state}: {then}"


def _other_rank(work: Callable[[], T], rank: int, trains: bool = False) -> T | None:
    """A job on rank > 0 of a distributed run: it computes its share and writes nothing.

    An error every rank raises alike (a bad value, a non-finite loss after the all-reduce)
    is rank 0's to report, in one line; a rank that lost its peers, or failed on its own,
    says so itself."""
    try:
        return work()
    except RankLost as exc:
        message = _with_next_step(exc, run_dir(), trains)
        print(f"meta-cli: error: {message}", file=sys.stderr, flush=True)
        FAILED.append(message)
    except UserError as exc:
        FAILED.append(str(exc))
    except Stopped as stop:
        raise SystemExit(stop.exit_code) from None
    except Exception as exc:  # its own fault: the others will report losing it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"meta-cli: error: rank {rank}: unexpected {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        traceback.print_exc()
        FAILED.append(first)
    return None
