"""Several processes for one command: `distributed.processes=N` relaunches the command through
torch's elastic launcher (exactly `torchrun --standalone --nproc_per_node=N -m meta_cli ...`),
and every rank of a torchrun/SLURM launch agrees with rank 0 on the run dir before Hydra runs.

Rank 0 alone makes the run dir and writes into it; the other ranks run the same Hydra job
and write nothing (conf/train.yaml's `meta_cli.rank0` resolver gives them no .hydra/ and no
log file). Under torchrun with
`--max-restarts`, a restarted group finds its run dir again (rank 0 records it by the
launch's run id in `<outputs>/.elastic/`) and resumes from its newest checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from meta_cli.cli.commandline import CommandLine
from meta_cli.errors import UserError, warn

#: Hydra overrides of ranks > 0, which share rank 0's run dir: their log lines would repeat
#: rank 0's. (Their .hydra/ and log file are rank 0's alone through conf/train.yaml's
#: meta_cli.rank0 resolver, which SLURM tasks need too.)
QUIET = ["hydra.job_logging.root.level=WARNING", "hydra/hydra_logging=disabled"]


def processes(configs: list[dict[str, Any]], launcher: str | None) -> int:
    """The `distributed.processes` every job of the command line asks for (they must agree)."""
    asked = {c["distributed"]["processes"] for c in configs if "distributed" in c}
    if len(asked) > 1:
        raise UserError(f"distributed.processes takes one value for the whole command line (got "
                        f"{sorted(asked, key=str)}): a sweep's jobs share the processes it launches.")
    n = asked.pop() if asked else 1
    alone = next((reason for c in configs if (reason := _single_process(c))), None)
    if n != 1 and alone:
        if n != "auto":
            raise UserError(f"{alone}; set distributed.processes=1, not {n}.")
        n = 1
    if n == "auto":
        n = min(_devices(configs[0]), *(c["train"]["meta_batch_size"] for c in configs if "train" in c))
    if n > 1 and launcher in ("joblib", "ray"):
        raise UserError(f"hydra/launcher={launcher} runs one process per job; distributed.processes={n} "
                        f"is for the basic launcher, or submitit_slurm with tasks_per_node.")
    return int(n)


def _single_process(config: dict[str, Any]) -> str | None:
    """Why the job's regime runs in one process, or None (eval jobs share any regime's work)."""
    if "train" not in config:
        return None
    from meta_cli.engine.regimes.base import regime_of

    return regime_of(config["algorithm"]["_target_"]).single_process


def _devices(config: dict[str, Any]) -> int:
    """GPUs where the job runs on CUDA, else CPU cores: what `processes: auto` takes one each of."""
    from meta_cli.runtime.device import pick_device

    if pick_device(config["device"]["kind"]).type == "cuda":
        import torch

        return torch.cuda.device_count()
    return _cores()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_dir_default(multirun: bool, command: str = "train") -> str:
    """Hydra's default run (or sweep) dir for now, as conf/<command>.yaml names it
    (hydra.run.dir or hydra.sweep.dir, its `${now:FORMAT}` parts filled in)."""
    from importlib import resources

    import yaml

    hydra = yaml.safe_load((resources.files("meta_cli.conf") / f"{command}.yaml").read_text())["hydra"]
    pattern = hydra["sweep" if multirun else "run"]["dir"]
    now = datetime.now()
    return re.sub(r"\$\{now:([^}]*)\}", lambda m: now.strftime(m.group(1)), pattern)


def relaunch(line: CommandLine, n: int) -> int:
    """Run the command as N processes of one run on this machine; returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if line.value(line.run_dir_key) is None:  # one run dir for every rank, and for restarts
        line = line.merged([f"{line.run_dir_key}={run_dir_default(line.multirun, line.command)}"])
    # The launcher's own chatter ("Received 15 death signal, shutting down workers"): torch's
    # elastic modules give each logger its own level, so the parent's alone would not hold.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # One intra-op thread per core each (torchrun would set 1 whatever the cores).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores() // n)))
    threads, cores = os.environ["OMP_NUM_THREADS"], _cores()
    if threads.isdigit() and int(threads) * n > cores:
        # Measured on 2 cores: 2 ranks of 2 threads ran first-order MAML 5x slower than of 1.
        warn(f"OMP_NUM_THREADS={threads} gives {n} processes {int(threads) * n} threads on {cores} "
             f"cores, and their threads will wait on each other; unset it or set it to {max(1, cores // n)}.")
    launch = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={n}", "--module", "meta_cli", line.command, *line.argv()])
    try:
        run(launch)
    except ChildFailedError as exc:  # the ranks printed their one line; pass on the exit code
        codes = [f.exitcode for f in exc.failures.values()]
        stopped = [c for c in codes if c in (130, 143)]
        own = [c for c in codes if c > 0]
        killed = [-c for c in codes if c < 0]  # ranks the launcher killed: -signal
        return stopped[0] if stopped else max(own) if own else 128 + killed[0] if killed else 1
    except SignalException as exc:  # Ctrl-C or SIGTERM to this launcher: the ranks stopped cleanly
        return 128 + int(exc.sigval)
    return 0


def agree_on_run_dir(line: CommandLine, world: Any) -> CommandLine:
    """Under torchrun/SLURM, every rank adopts rank 0's run (or sweep) dir; ranks > 0 also get
    QUIET. After a torchrun restart, rank 0 takes the dir the first attempt recorded."""
    if line.value(line.run_dir_key) is None:
        chosen = None
        if world.main:
            chosen = _recorded_dir() or run_dir_default(line.multirun, line.command)
            _record_dir(chosen)
        line = line.merged([f"{line.run_dir_key}={world.broadcast(chosen)}"])
    return line if world.main else line.merged(QUIET)


def _pointer() -> Path | None:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return Path("outputs") / ".elastic" / f"{run_id}.json" if run_id else None


def _recorded_dir() -> str | None:
    pointer = _pointer()
    if pointer is None or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    try:
        return json.loads(pointer.read_text())["run_dir"]
    except (OSError, ValueError, KeyError):
        return None


def _record_dir(run_dir: str) -> None:
    pointer = _pointer()
    if pointer is not None and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"run_dir": run_dir}) + "\n")


def record_failure(message: str) -> None:
    """A failing rank's one line, as torch's elastic launcher reads a rank's error file
    ($TORCHELASTIC_ERROR_FILE): torchrun's failure report then shows it as the rank's
    traceback, instead of a link on how to get one. Nothing outside a torchrun launch."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or not message:
        return
    import time

    line = f"meta-cli: error: {message}"
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:  # the report falls back to torchrun's own words
        pass


def quiet_rank() -> bool:
    """Whether this process is a rank > 0 of a launch (its output would repeat rank 0's)."""
    from meta_cli.runtime.distributed import env_rank

    return env_rank() > 0

