"""`meta-cli`: one Hydra app per subcommand, behind a small dispatcher.

Hydra has no subcommands, so `meta-cli train ...` hands the rest of the command line to the
`train` app. Before that, the whole command line (every job of a sweep) is validated, so a
bad value stops with one line before any work starts.
"""
from __future__ import annotations

import importlib
import os
import sys

from meta_cli.errors import UserError

COMMANDS = {
    "train": ("meta_cli.apps.train", "train", "meta-train a model; writes checkpoints, metrics.csv, accuracy.csv"),
    "eval": ("meta_cli.apps.eval", "eval", "meta-test a checkpoint: meta-cli eval checkpoint=PATH"),
    "predict": ("meta_cli.apps.predict", "predict",
                "label your own images: meta-cli predict checkpoint=PATH support=DIR query=DIR"),
    "report": ("meta_cli.report", None, "table, summary.csv and plots of a run or sweep dir: meta-cli report PATH"),
}
USAGE = """usage: meta-cli <command> [-m] [key=value ...] [hydra options]

Few-shot meta-learning experiments (MAML, ProtoNet) on learn2learn, configured with Hydra.

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
# Hydra flags that take a value; flags that print instead of running a job, or that change
# where configs come from (the check composes the packaged configs only): no pre-check.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--cfg", "-c",
              "--resolve", "--shell-completion",
              "-sc", "--experimental-rerun", "--config-name", "-cn", "--config-path", "-cp",
              "--config-dir", "-cd"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {n.ljust(width)}  {d}" for n, (_, _, d) in COMMANDS.items()))


def _overrides(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in VALUE_FLAGS:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def _error(message: str, code: int) -> int:
    print(f"meta-cli: error: {message}", file=sys.stderr)
    return code


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from meta_cli import __version__
        print(f"meta-cli {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        return _error(f"unknown command '{command}' (choose from: {', '.join(COMMANDS)}); "
                      f"see 'meta-cli --help'.", 2)
    module_name, config_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    if config_name is None:  # a plain command, not a Hydra app
        try:
            return module.main(args)
        except UserError as exc:
            return _error(str(exc), 1)
    from meta_cli.job import FAILED  # noqa: F401 (also installs the job's warning filters)
    from meta_cli.precheck import check_plugins, check_writable, precheck
    from meta_cli.resume import resume_args

    if not INFO_FLAGS.intersection(args):
        try:
            if command == "train":
                args = resume_args(args)
            check_plugins(_overrides(args))
            precheck(config_name, _overrides(args), module.precheck)
            check_writable(_overrides(args), "-m" in args or "--multirun" in args)
        except UserError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            return _error(str(exc), 1)
    sys.argv = [f"meta-cli {command}", *args]
    from meta_cli.summary import SWEEP_DIRS, write_summary
    try:
        module.main()
    finally:
        # Here rather than only in on_multirun_end, which Hydra skips when a job raised; and
        # jobs of a parallel launcher fail in other processes, so read their status.json.
        failed_jobs = 0
        for sweep in (d for d in SWEEP_DIRS if d.is_dir()):
            jobs = write_summary(sweep).drop_duplicates("job")
            failed = int((jobs["status"] != "ok").sum())
            failed_jobs += failed
            print(f"meta-cli: {len(jobs) - failed} of {len(jobs)} jobs ok"
                  + (f", {failed} failed" if failed else "")
                  + f"; summary: {sweep / 'summary.csv'} (meta-cli report {sweep})",
                  file=sys.stderr, flush=True)
    if FAILED or failed_jobs:
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
    raise SystemExit(code)


if __name__ == "__main__":  # python -m meta_cli.cli
    main()
