"""The Checkpointer: the one owner of a run's checkpoints.

Handed the run dir and what every checkpoint records (config, splits, transform), it decides
how a run starts (`start`: resume from the newest valid checkpoint, or begin, with `init=`'s
backbone), when a checkpoint is committed (`due`: every `train.checkpoint_every` steps, at
each validation, at the end, on a stop), writes them (`commit`, `save_best`: atomic, with a
manifest and sha256, `meta_cli.rundir.checkpoint`), keeps `last.pt` on the newest, prunes the
oldest, and gives back the best model at the end (`load_best`). `restore_weights` loads a
checkpoint's tensors into a model, naming what does not fit.

Only rank 0 writes (`writes=True`); the other ranks read what it wrote.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from meta_cli.atomic import write_atomic
from meta_cli.errors import UserError, shown
from meta_cli.rundir import checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("meta_cli.train")

#: Settings that may differ between a checkpoint and the command resuming it: where the data
#: lies, the device, the progress bar, the logger, the number of processes (the episodes are
#: numbered, so a meta-batch is the same however it is shared). Anything else changes the experiment.
FREE_KEYS = ("resume", "dataset.root", "dataset.download", "device", "train.progress", "logger", "distributed")


def is_free(key: str) -> bool:
    """Whether a config key is one of FREE_KEYS (or below one)."""
    return any(key == f or key.startswith(f + ".") for f in FREE_KEYS)


def setting_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define a run's experiment: Hydra's own and FREE_KEYS' left out, so
    that a resumed job (resume=, device=...) stays in the setting of its sweep."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")
    return [o for o in overrides if not key(o).startswith("hydra") and not is_free(key(o))]


class Resumable:
    """What the Checkpointer saves and restores besides the files' fixed part: the Trainer."""

    iteration: int

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    def __init__(self, run_dir: Path, saved: dict[str, Any], keep: int, every: int, writes: bool = True,
                 before_save: Callable[[], None] = lambda: None) -> None:
        """`saved`: what every checkpoint holds besides the training state (config, choices,
        splits, transform); `keep`: step checkpoints kept; `every`: the cadence in steps;
        `before_save`: makes what a checkpoint counts durable first (metrics.csv's rows)."""
        self.run_dir, self.saved, self.keep, self.every = run_dir, saved, keep, every
        self.writes, self.before_save = writes, before_save
        self.folder = run_dir / "checkpoints"

    # -- the start of a run --------------------------------------------------------------
    def start(self, trainer: Resumable, model: "nn.Module", config: dict[str, Any]) -> None:
        """Resume `trainer` from the run dir's newest valid checkpoint (or `config['resume']`),
        checked to be of this config and data; or begin a new run: `init=`'s backbone into
        `model`, splits.json written."""
        found = find(config["resume"], self.run_dir)
        if found is not None:
            path, payload = found
            check_compatible(payload, config, path)
            if payload.get("splits") != self.saved.get("splits"):
                raise UserError(f"checkpoint {path} was trained on other class splits than "
                                f"{config['dataset'].get('root')} gives now; use the same data.")
            restore_weights(model, payload["algorithm"], path)
            trainer.load_state_dict(payload)
            log.info("resuming %s from iteration %d (%s)", self.run_dir, trainer.iteration, path.name)
            return
        if config.get("init") is not None:  # transfer: the backbone from another run, the rest new
            from meta_cli.rundir.transfer import load_backbone

            self.saved["init"] = load_backbone(model, config["init"], config["backbone"])
            log.info("backbone from %s (sha256 %s)", self.saved["init"]["path"], self.saved["init"]["sha256"][:12])
        if self.writes:
            splits = json.dumps(self.saved.get("splits", {}), indent=1, ensure_ascii=False)
            write_atomic(self.run_dir / "splits.json", splits.encode())

    # -- during training -----------------------------------------------------------------
    def opened(self) -> None:
        """Before the first step: the folder exists, temp files of interrupted writes are gone."""
        if self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_partials(self.folder)

    def due(self, iteration: int, validated: bool, last: bool, every: int | None = None) -> bool:
        """Whether a step checkpoint is committed after `iteration`: at each validation, at the
        end, and every `every` steps (train.checkpoint_every, or a time budget's cadence)."""
        return validated or last or iteration % (every or self.every) == 0

    def step_path(self, iteration: int) -> Path:
        return self.folder / checkpoint.step_name(iteration)

    def save_best(self, state: dict[str, Any]) -> None:
        self._save("best.pt", state)

    def commit(self, iteration: int, state: dict[str, Any]) -> None:
        """step-N.pt (unless already committed), last.pt as that same file, then the oldest
        step checkpoints beyond `keep` pruned."""
        path = self.step_path(iteration)
        if not self.writes or checkpoint.manifest_path(path).exists():
            return
        self._save(path.name, state)
        checkpoint.link_last(path)
        checkpoint.prune(self.folder, self.keep)

    def _save(self, name: str, state: dict[str, Any]) -> None:
        if self.writes:
            self.before_save()
            checkpoint.save({**self.saved, **state}, self.folder / name)

    def last_committed(self) -> tuple[int, str | None]:
        found = checkpoint.latest_committed(self.folder)
        return (found[0], str(found[1])) if found else (0, None)

    # -- the end ---------------------------------------------------------------------------
    def load_best(self, model: "nn.Module") -> Path:
        """best.pt's weights into `model` (committed, verified); its path."""
        path = (self.folder / "best.pt").resolve()
        payload = checkpoint.load(path, require_manifest=True)
        restore_weights(model, payload["algorithm"], path)
        return path


def restore_weights(model: "nn.Module", state: dict[str, "torch.Tensor"], path: Path) -> None:
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


# -- discovery and compatibility ------------------------------------------------------------
def run_of(resume: str) -> Path:
    """The run dir a `resume=` value points into: itself, or <run>/checkpoints/<name>.pt."""
    path = Path(resume).expanduser().resolve()
    return path if path.is_dir() else path.parent.parent


def find(resume: str | None, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from: `resume` if it names a file, else the newest valid
    step checkpoint of the run dir; None for a fresh start."""
    if resume is not None:
        if not isinstance(resume, str):
            raise UserError(f"resume must be a run dir or a checkpoint path; got {shown(resume)}.")
        if run_of(resume) != run_dir.resolve():
            raise UserError(f"resume={resume} continues in its own run dir {run_of(resume)}, not "
                            f"{run_dir}; run it as: meta-cli train resume={resume}")
        if Path(resume).expanduser().is_file():
            path = Path(resume).expanduser().resolve()
            return path, checkpoint.load(path)
    folder = run_dir / "checkpoints"
    found = checkpoint.latest_valid(folder) if folder.is_dir() else None
    if found is None and (resume is not None or (folder.is_dir() and checkpoint.steps(folder))):
        raise UserError(nothing_to_resume(folder))
    return found


def restart_command(run: Path) -> str:
    """The command that starts the run in `run` again from scratch (in a new run dir): its own
    overrides (.hydra/overrides.yaml), without resume=."""
    import shlex

    import yaml

    try:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return "the run's own command"
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


def nothing_to_resume(folder: Path) -> str:
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
    return [f"{k} (checkpoint: {a.get(k, '<absent>')}, now: {b.get(k, '<absent>')})"
            for k in sorted(set(a) | set(b)) if not is_free(k) and a.get(k) != b.get(k)]


def check_compatible(payload: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """A checkpoint may be resumed by a config that differs from its own in FREE_KEYS only."""
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
