"""Resuming a run: find its newest valid checkpoint, and refuse one that does not match.

`meta-cli train resume=PATH` (a run dir or a checkpoint in one) replays the run's own
overrides from `<run>/.hydra/overrides.yaml` into the same run dir; a job started again in a
run dir that already holds checkpoints (a SLURM requeue) resumes without being told.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from meta_cli import checkpoint
from meta_cli.errors import UserError
from meta_cli.preflight import split_args

if TYPE_CHECKING:
    import torch

#: Settings that may differ between the checkpoint and the resuming command: where the data
#: lies, the device, the progress bar, the logger, the number of processes (the episodes are
#: numbered, so a meta-batch is the same however it is shared). Anything else changes the experiment.
FREE_KEYS = ("resume", "dataset.root", "dataset.download", "device", "train.progress", "logger", "distributed")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ, as `key (checkpoint: a, now: b)`, FREE_KEYS aside."""
    a, b = _flatten(stored), _flatten(current)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in FREE_KEYS)  # noqa: E731
    return [f"{k} (checkpoint: {a.get(k, '<absent>')}, now: {b.get(k, '<absent>')})"
            for k in sorted(set(a) | set(b)) if not free(k) and a.get(k) != b.get(k)]


def check_config(payload: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    trained, asked = (c.get("algorithm", {}).get("_target_") for c in (payload["config"], config))
    if trained != asked:  # one cause, not a list of every key the two algorithms do not share
        raise UserError(f"checkpoint {path} holds a {str(trained).rsplit('.', 1)[-1]} model ({trained}), and these "
                        f"options build a {str(asked).rsplit('.', 1)[-1]} ({asked}); resume with the run's own "
                        f"algorithm=, or start a new run dir.")
    diff = differences(payload["config"], config)
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise UserError(f"checkpoint {path} was trained with another config: {shown}. "
                        f"Resume with the run's own settings, or start a new run dir.")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, strict, with the differing keys named instead of torch's wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shape (checkpoint vs model)", shapes)) if keys]
        raise UserError(f"checkpoint {path} does not fit the model (other backbone, algorithm "
                        f"or ways?): {'; '.join(parts)}.")
    model.load_state_dict(state)


def run_of(resume: str) -> Path:
    """The run dir a `resume=` value points into: itself, or <run>/checkpoints/<name>.pt."""
    path = Path(resume).expanduser().resolve()
    return path if path.is_dir() else path.parent.parent


def find(resume: str | None, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from: `resume` if it names a file, else the newest valid
    step checkpoint of the run dir; None for a fresh start."""
    if resume is not None:
        if not isinstance(resume, str):
            raise UserError(f"resume must be a run dir or a checkpoint path; got {resume!r}.")
        if run_of(resume) != run_dir.resolve():
            raise UserError(f"resume={resume} continues in its own run dir {run_of(resume)}, not "
                            f"{run_dir}; run it as: meta-cli train resume={resume}")
        if Path(resume).expanduser().is_file():
            path = Path(resume).expanduser().resolve()
            return path, checkpoint.load(path)
    folder = run_dir / "checkpoints"
    found = checkpoint.latest_valid(folder) if folder.is_dir() else None
    if found is None and (resume is not None or (folder.is_dir() and checkpoint.steps(folder))):
        raise UserError(_nothing_to_resume(folder))
    return found


def restart_command(run: Path) -> str:
    """The command that starts the run in `run` again from scratch (in a new run dir): its own
    overrides (.hydra/overrides.yaml), without resume=."""
    try:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return "the run's own command"
    import shlex

    return shlex.join(["meta-cli", "train", *(str(o) for o in overrides if not str(o).startswith("resume="))])


def next_step(run: Path) -> tuple[str, str]:
    """For a training run that failed: what is kept, and the command that goes on from there
    (`resume=` needs a committed step checkpoint; without one, the run's own command again)."""
    committed = checkpoint.latest_committed(run / "checkpoints")
    if committed is not None:
        return (f"the checkpoints committed so far are intact (the newest: {committed[1].name})",
                f"resume with: meta-cli train resume={run}")
    return ("no checkpoint was committed yet, so there is nothing to resume",
            f"start the run again: {restart_command(run)}")


def _nothing_to_resume(folder: Path) -> str:
    """Why a run dir cannot be resumed, and what to do instead."""
    found = checkpoint.steps(folder)
    if not found:
        return (f"no step checkpoint to resume in {folder}: the run ended before it committed its first "
                f"one; start it again: {restart_command(folder.parent)}")
    newest = found[0][1]
    if not checkpoint.manifest_path(newest).exists():
        return (f"no committed checkpoint to resume in {folder}: {newest.name} has no manifest (the run "
                f"stopped between writing it and committing it, so its integrity is unchecked). To "
                f"resume from it anyway: meta-cli train resume={newest} (it is loaded only if it reads "
                f"as a whole meta-cli checkpoint); or start a new run.")
    try:
        checkpoint.load(newest, require_manifest=True)
        reason = "it could not be loaded"
    except UserError as exc:
        reason = str(exc).rstrip(".")
    return (f"no valid checkpoint to resume in {folder}: the newest, {reason}, and no older one "
            f"passes its checks either; start a new run instead.")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Overrides in order with one entry per key: a later value replaces an earlier one in its
    place, so replaying a run's overrides with the new command's never repeats a key."""
    merged: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        merged[override.split("=", 1)[0].lstrip("+~")] = override
    return list(merged.values())


def resume_args(args: list[str]) -> list[str]:
    """Expand `resume=PATH` into the run's own overrides plus `hydra.run.dir=<its run dir>`.

    A command naming an existing run dir with checkpoints (`hydra.run.dir=X`, as a requeued
    job does) resumes it too, so its config is checked before Hydra rewrites X/.hydra.
    """
    given = [a for a in args if a.startswith("resume=")]
    run_dirs = [a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("hydra.run.dir=")]
    multirun = "-m" in args or "--multirun" in args
    if not given and run_dirs and not multirun and checkpoint.steps(Path(run_dirs[-1]) / "checkpoints"):
        given = [f"resume={run_dirs[-1]}"]
        args = [*args, given[0]]
    if not given or given[-1] in ("resume=null", "resume="):
        return args
    if multirun:
        raise UserError("resume= resumes one run; resume the jobs of a sweep one by one.")
    path = Path(given[-1].split("=", 1)[1].strip("'\"")).expanduser().resolve()
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
    flags, rest = split_args([a for a in args if not a.startswith("resume=")])
    quote = lambda p: "'" + str(p).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    return [*flags, *merge_overrides(replay, rest, [f"resume={quote(path)}", f"hydra.run.dir={quote(run)}"])]
