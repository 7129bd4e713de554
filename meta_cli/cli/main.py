"""`meta-cli`: one Hydra app per subcommand, behind a small dispatcher.

Hydra has no subcommands, so `meta-cli train ...` hands the rest of the command line to the
`train` app. Before that, the whole command line (every job of a sweep) goes through the
pre-flight (`meta_cli.cli.preflight`), so a bad value stops with one line before any work starts.

Imports are deferred to where a command needs them: torch, learn2learn, pandas and
matplotlib cost seconds to load, and a misspelled key is refused without any of them.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from meta_cli.cli.commandline import CommandLine
from meta_cli.errors import UserError, warn

COMMANDS = {
    "train": ("meta_cli.apps.train", "train", "meta-train a model; writes checkpoints, metrics.csv, accuracy.csv"),
    "eval": ("meta_cli.apps.eval", "eval", "meta-test a checkpoint: meta-cli eval checkpoint=PATH"),
    "predict": ("meta_cli.apps.predict", "predict",
                "label your own images: meta-cli predict checkpoint=PATH support=DIR query=DIR"),
    "report": ("meta_cli.report.report", None, "table, summary.csv and plots of a run or sweep dir: meta-cli report PATH"),
}
USAGE = """usage: meta-cli <command> [-m] [key=value ...] [hydra options]

Meta-learning experiments on learn2learn, configured with Hydra: metric-based (Siamese,
ProtoNet, Matching Networks, MetaOptNet), optimisation-based (MAML, first-order MAML, Meta-SGD,
ANIL, Reptile), model- and memory-based (MANN, Meta-LSTM) learners, pre-training with
test-time heads, and meta-RL (MAML-TRPO) on Gymnasium tasks.

commands:
{commands}

examples:
  meta-cli train dataset=sinusoid
  meta-cli train algorithm=protonet dataset=omniglot dataset.shots=5
  meta-cli train -m algorithm=maml,protonet dataset.shots=1,5
  meta-cli eval checkpoint=outputs/<date>/<time>/checkpoints/best.pt
  meta-cli report outputs/multirun/<date>/<time>
  meta-cli train --help        (config groups and options of one command)
"""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {n.ljust(width)}  {d}" for n, (_, _, d) in COMMANDS.items()))


def _error(message: str, code: int) -> int:
    print(f"meta-cli: error: {message}", file=sys.stderr)
    return code


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings (PIL, matplotlib, torch) as one `meta-cli: warning:` line each, without
    the library's file path and source line."""
    warn(" ".join(str(message).split()))


def _preflight(line: CommandLine) -> tuple[CommandLine, int]:
    """Check the command line; returns it (train: `resume=` expanded; under torchrun/SLURM:
    rank 0's run dir) and the number of processes to relaunch it as (1: run it here).
    UserError on a fault."""
    from meta_cli.cli import launch
    from meta_cli.cli.preflight import check, check_flags, check_plugins, check_writable, compose_jobs
    from meta_cli.cli.resume import expand
    from meta_cli.rundir import lock
    from meta_cli.runtime import distributed

    if line.unchecked:
        return line, 1
    check_flags(line)
    check_plugins(line.overrides)
    if line.command == "train" and not line.info:
        line = expand(line)  # resume=RUN: the run's own overrides, its dir
    jobs = compose_jobs(line.command, list(line.overrides))
    if line.info:
        return line, 1
    world = distributed.world()
    first = jobs[0].config
    if distributed.launched() and "distributed" in first:
        from meta_cli.runtime.device import pick_device

        settings = {k: v for k, v in first["distributed"].items() if not k.startswith("_")}
        world = distributed.init(distributed.DistributedSettings(**settings), pick_device(first["device"]["kind"]).type)
        agreed = launch.agree_on_run_dir(line, world)
        if line.command == "train" and agreed != line:  # a torchrun restart finds its checkpoints there
            agreed = expand(agreed)
        if agreed != line:
            line, jobs = agreed, compose_jobs(line.command, list(agreed.overrides))
    if distributed.launched():  # before any rank goes into Hydra, which makes rank 0's run dir
        distributed.check_same_config(world, [j.config for j in jobs])
    processes = 1 if distributed.launched() else launch.processes([j.config for j in jobs],
                                                                  line.value("hydra/launcher"))
    fault = None
    if world.main:  # the other ranks would only repeat its checks (and its messages)
        try:
            app = importlib.import_module(COMMANDS[line.command][0])
            cache: dict[str, Any] = {}
            size = world.size if distributed.launched() else processes
            for job in jobs:  # a preset's value that does not fit is named as the preset's
                check(job, lambda config: app.precheck(config, cache, size))
            check_writable(line)
            resumed = line.value("hydra.run.dir")
            if line.command == "train" and processes == 1 and line.value("resume") and resumed:
                # Before Hydra rewrites <run>/.hydra: a run dir another process trains in is refused here.
                lock.acquire(Path(resumed))
        except UserError as exc:
            fault = str(exc)
    # Under torchrun, the other ranks wait for rank 0's verdict: had they gone on, Hydra would
    # have made the run dir of a run that rank 0 refused.
    fault = world.broadcast(fault)
    if fault is not None:
        raise UserError(fault)
    return line, processes


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from meta_cli import __version__
        print(f"meta-cli {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command in ("-sc", "--shell-completion") and args and args[0].startswith("query="):
        from meta_cli.cli.help import complete  # the shell asks for the line it completes

        print(" ".join(complete(list(COMMANDS))))
        return 0
    if command not in COMMANDS:
        return _error(f"unknown command '{command}' (choose from: {', '.join(COMMANDS)}); "
                      f"see 'meta-cli --help'.", 2)
    warnings.showwarning = _one_line_warnings
    # conf/hydra/launcher/<name>.yaml shares its name with the plugin's schema on purpose (Hydra
    # then checks the preset against it) and Hydra warns that this matching is deprecated.
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")
    module_name, config_name, _ = COMMANDS[command]
    if config_name is None:  # a plain command, not a Hydra app
        try:
            return importlib.import_module(module_name).main(args)
        except UserError as exc:
            return _error(str(exc), 1)
    if args and args[0] in ("--help", "-h") and len(args) == 1:
        from meta_cli.cli.help import app_help

        print(app_help(config_name))
        return 0
    from meta_cli.cli import launch

    try:
        line, processes = _preflight(CommandLine.parse(command, args))
    except UserError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        launch.record_failure(str(exc))
        return 1 if launch.quiet_rank() else _error(str(exc), 1)
    if processes > 1:
        return launch.relaunch(line, processes)
    module = importlib.import_module(module_name)
    from meta_cli.report.summary import SWEEP_DIRS
    from meta_cli.rundir.job import FAILED

    # Hydra's completion script registers itself for sys.argv[0]'s name: the program's, alone.
    sys.argv = ["meta-cli" if line.unchecked else f"meta-cli {command}", *line.argv()]
    try:
        module.main()
    finally:
        # Here rather than only in on_multirun_end, which Hydra skips when a job raised; and
        # jobs of a parallel launcher fail in other processes, so read their status.json.
        failed_jobs = 0
        for sweep in (d for d in SWEEP_DIRS if d.is_dir() and not launch.quiet_rank()):
            from meta_cli.report.summary import summary, write_summary

            frame = summary(sweep)
            write_summary(sweep, frame=frame)
            states = frame.drop_duplicates("job")["status"].value_counts()
            ok = int(states.get("ok", 0))
            failed_jobs += int(states.sum()) - ok
            others = ", ".join(f"{n} {s}" for s, n in states.items() if s != "ok")
            print(f"meta-cli: {ok} of {int(states.sum())} jobs ok" + (f", {others}" if others else "")
                  + f"; summary: {sweep / 'summary.csv'} (meta-cli report {sweep})",
                  file=sys.stderr, flush=True)
    if FAILED or failed_jobs:
        launch.record_failure(FAILED[-1] if FAILED else "")
        return 1
    return 0


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except BrokenPipeError:  # `meta-cli train --help | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:  # outside meta-training (which saves first): nothing to keep
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print("meta-cli: interrupted.", file=sys.stderr)
        code = 130
    from meta_cli.runtime import distributed

    distributed.finish(code)  # a rank of a launch leaves here
    raise SystemExit(code)


if __name__ == "__main__":  # python -m meta_cli.cli.main
    main()
