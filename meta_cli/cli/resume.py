"""`meta-cli train resume=PATH`: the command line of the run being resumed.

`resume=PATH` (a run dir or a checkpoint in one) replays the run's own overrides from
`<run>/.hydra/overrides.yaml` into the same run dir; a job started again in a run dir that
already holds checkpoints (a SLURM requeue) resumes without being told. Which checkpoint it
continues from, and whether it fits, is the Checkpointer's to say (`meta_cli.rundir.checkpointer`).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from meta_cli.cli.commandline import CommandLine, quote
from meta_cli.errors import UserError
from meta_cli.rundir import checkpoint


def expand(line: CommandLine) -> CommandLine:
    """`resume=PATH` -> the run's own overrides, then this command's, `resume=` and
    `hydra.run.dir=<its run dir>`. A command naming an existing run dir with checkpoints
    (`hydra.run.dir=X`, as a requeued job does) resumes it too, so its config is checked before
    Hydra rewrites X/.hydra."""
    given, run_dir = line.value("resume"), line.value("hydra.run.dir")
    if given is None and run_dir and not line.multirun and checkpoint.steps(Path(run_dir) / "checkpoints"):
        given = run_dir
    if given in (None, "", "null"):
        return line
    if line.multirun:
        raise UserError("resume= resumes one run; resume the jobs of a sweep one by one.")
    path = Path(given).expanduser().resolve()
    if not path.exists():
        raise UserError(f"resume={path}: no such run dir or checkpoint.")
    run = path if path.is_dir() else path.parent.parent  # <run>/checkpoints/<name>.pt
    stored = run / ".hydra" / "overrides.yaml"
    if not stored.is_file():
        raise UserError(f"resume={path}: {run} is not a meta-cli run dir (no .hydra/overrides.yaml); "
                        f"pass the run dir or a checkpoint inside its checkpoints/ folder.")
    try:
        replay = [o for o in yaml.safe_load(stored.read_text()) or [] if not o.startswith("resume=")]
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise UserError(f"resume={path}: {stored} is unreadable ({exc}).")
    own = line.without("resume")
    return CommandLine(line.command, line.flags).merged(
        replay, own.overrides, [f"resume={quote(path)}", f"hydra.run.dir={quote(run)}"])
