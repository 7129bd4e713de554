"""`init=CHECKPOINT`: start a model from another run's backbone weights (transfer learning).

`meta-cli train algorithm=protonet init=<pretrain run>/checkpoints/best.pt` is Meta-Baseline
(Chen et al., 2021); `algorithm=maml init=...` is MAML from a pre-trained body. Only the
backbone's tensors are copied (its weights and batch-norm statistics); every other part of
the new model (a head, a scale, learned rates) keeps its fresh initialisation, and the
optimizer is built afterwards as in any run.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meta_cli.rundir import checkpoint
from meta_cli.errors import UserError
from meta_cli.models.base import Backbone

#: Backbone settings that change training only (regularisation, memory layout), not the
#: function a trained body computes: they may differ between the checkpoint and the new run.
FREE_BACKBONE_KEYS = ("channels_last", "dropout", "embedding_dropout", "dropblock_dropout",
                      "dropblock_size")


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """The backbone inside `model` and its state-dict prefix (e.g. 'backbone.' for ProtoNet,
    'maml.module.0.' for MAML): the outermost module that the backbone config group builds
    (their classes take `input_shape` from the engine)."""
    for name, module in model.named_modules():
        if isinstance(module, Backbone):
            return (f"{name}." if name else ""), module
    raise UserError(f"init= needs a model with a backbone; {type(model).__name__} has none.")


def target_name(module: nn.Module) -> str:
    """The `_target_` a config gives for a module of this class."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _prefix_in(state: dict[str, Any], own: dict[str, torch.Tensor]) -> str | None:
    """The prefix under which the checkpoint's model holds every tensor name of `own`, or None."""
    first = next(iter(own))
    candidates = {key[:-len(first)] for key in state if key.endswith(first)}
    found = sorted((p for p in candidates if all(p + k in state for k in own)), key=len)
    return found[0] if found else None


def _config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(stored) | set(current)) - set(FREE_BACKBONE_KEYS) - {"_target_"})
    return [f"backbone.{k} (checkpoint: {stored.get(k, '<absent>')}, now: {current.get(k, '<absent>')})"
            for k in keys if stored.get(k) != current.get(k)]


def read(path: str | Path, backbone_config: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The checkpoint at `path` (verified as `eval` verifies one), and the `init=...` words that
    name it in messages, after the checks that need no model: the file, its backbone's class
    and settings against `backbone_config` (this run's `backbone` node). The pre-flight runs
    these for every job; `load_backbone` adds the tensors' names and shapes."""
    file = Path(path).expanduser()
    where = f"init={path}"
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise UserError(f"{where} {what}; pass a checkpoint file, e.g. init=<run dir>/checkpoints/best.pt.")
    try:
        payload = checkpoint.load(file)
    except UserError as exc:  # damaged, foreign, not ours: its own sentence, said of init=
        raise UserError(f"{where}: {exc}") from None
    state, config = payload.get("algorithm"), payload.get("config")
    if not isinstance(state, dict) or not isinstance(config, dict) or "backbone" not in config:
        raise UserError(f"{where}: the checkpoint holds no trained model (no 'algorithm' weights "
                        f"and config); pass a run's checkpoints/best.pt.")
    stored = config["backbone"]
    if backbone_config is not None:
        if stored.get("_target_") != backbone_config.get("_target_"):
            raise UserError(f"{where} has a {stored.get('_target_')} backbone; this run's is "
                            f"{backbone_config.get('_target_')}. Use the same backbone= as the checkpoint's run.")
        differ = _config_differences(stored, backbone_config)
        if differ:
            raise UserError(f"{where} has another backbone: {'; '.join(differ[:3])}. "
                            f"Use the checkpoint's backbone settings.")
    return payload, where


def load_backbone(model: nn.Module, path: str | Path,
                  backbone_config: dict[str, Any] | None = None) -> dict[str, str]:
    """Copy the backbone tensors of the checkpoint at `path` into `model`'s backbone.

    The checkpoint is read as `meta-cli eval` reads one (verified against its manifest when it
    has one, tensors and plain data only). Its backbone must be of the same class (its
    config's `_target_`), with the same settings as `backbone_config` (this run's
    `backbone` node) where given, FREE_BACKBONE_KEYS aside, and every tensor of the same
    shape; else one UserError line names what differs. Returns {"path", "sha256"} of the
    checkpoint, for the new run's config and checkpoints.
    """
    payload, where = read(path, backbone_config)
    _, backbone = find_backbone(model)
    own_target = target_name(backbone)
    if payload["config"]["backbone"].get("_target_") != own_target:
        raise UserError(f"{where} has a {payload['config']['backbone'].get('_target_')} backbone; this run's is "
                        f"{own_target}. Use the same backbone= as the checkpoint's run.")
    state, file = payload["algorithm"], Path(path).expanduser()
    own = backbone.state_dict()
    source = _prefix_in(state, own)
    if source is None:
        raise UserError(f"{where}: its model holds no tensors named as this run's {own_target} "
                        f"backbone's (e.g. {next(iter(own))}); was it trained with another backbone?")
    shapes = [f"{k} {tuple(state[source + k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if tuple(state[source + k].shape) != tuple(v.shape)]
    if shapes:
        more = f" and {len(shapes) - 2} more" if len(shapes) > 2 else ""
        raise UserError(f"{where} has backbone tensors of other shapes (checkpoint vs this run): "
                        f"{', '.join(shapes[:2])}{more}: another width, or images of other channels? "
                        f"Use the checkpoint's backbone settings and a dataset of its channels.")
    backbone.load_state_dict({k: state[source + k] for k in own}, strict=True)
    sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
    return {"path": str(file.resolve()), "sha256": sha256}
