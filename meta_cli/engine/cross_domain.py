"""`meta-cli eval checkpoint=CKPT dataset=NAME`: meta-testing a checkpoint on another dataset.

The eval dataset is opened as the config gives it, then its episodes are brought to the
checkpoint's model input by the rule of `meta_cli.data.adapted` (size and channels from the
checkpoint; its normalisation unless dataset.mean/std are given). The keys eval.yaml sets to
`checkpoint` come from the checkpoint: the dataset's image size, channels, normalisation and
its episodes' ways, shots and query (eval.ways/shots/query choose other episodes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_object

from meta_cli.config.signatures import signature
from meta_cli.config.validation import check_node, option_of
from meta_cli.data.adapted import AdaptedSource
from meta_cli.data.transform import ImageTransform, normalisation
from meta_cli.engine.instantiate import instantiate
from meta_cli.errors import UserError

#: The value eval.yaml gives the eval dataset's keys that the checkpoint decides.
FROM_CHECKPOINT = "checkpoint"
#: Keys the checkpoint fixes, and what to set instead.
FIXED = {"image_size": "the model's input size", "channels": "the model's input channels",
         "ways": "eval.ways", "shots": "eval.shots", "query": "eval.query"}


def given(node: dict[str, Any] | None) -> bool:
    """Whether the eval command names a dataset of its own (dataset=NAME)."""
    return bool(node) and "_target_" in node


def check_plain(node: dict[str, Any] | None, data_root: str | None) -> None:
    """Without dataset=NAME, dataset.* keys have nothing to apply to."""
    changed = sorted(k for k, v in (node or {}).items() if v != FROM_CHECKPOINT)
    episode_keys = [k for k in changed if FIXED.get(k, "").startswith("eval.")]
    if episode_keys:  # with or without dataset=NAME
        k = episode_keys[0]
        raise UserError(f"dataset.{k}={node[k]}: eval takes the episodes' {k} from the checkpoint; set "
                        f"{FIXED[k]} instead.")
    if not given(node) and changed:
        raise UserError(f"dataset.{changed[0]} applies to a dataset given with dataset=NAME (e.g. "
                        f"dataset=image_folder dataset.root=DIR); without one, eval meta-tests on the "
                        f"checkpoint's own dataset.")
    if given(node) and data_root is not None:
        raise UserError("data_root moves the checkpoint's own dataset; with dataset=NAME set dataset.root "
                        "instead.")


def model_transform(payload: dict[str, Any], path: Path) -> ImageTransform:
    """The image transform the checkpoint's model was trained with."""
    if "transform" not in payload:
        raise UserError(f"checkpoint {path} has no image input (it was trained on "
                        f"{payload.get('choices', {}).get('dataset')}); dataset=NAME meta-tests image "
                        f"classifiers only.")
    return ImageTransform.from_dict(payload["transform"])


def open_dataset(node: dict[str, Any], trained: dict[str, Any], model: ImageTransform) -> AdaptedSource:
    """The eval dataset of `node` (eval.yaml's `checkpoint` values filled from the checkpoint's
    `trained` dataset node and `model` transform), its episodes brought to `model`'s input."""
    node = dict(node)
    params = signature(node["_target_"]).parameters
    for key, what in FIXED.items():
        value = node.pop(key, FROM_CHECKPOINT)
        if value != FROM_CHECKPOINT:
            raise UserError(f"dataset.{key}={value}: eval takes {what} from the checkpoint"
                            + (f"; set {what} instead." if what.startswith("eval.")
                               else f" ({'x'.join(map(str, model.shape))}) and brings the images to it; "
                                    f"leave dataset.{key} unset."))
    mean, std = node.pop("mean", FROM_CHECKPOINT), node.pop("std", FROM_CHECKPOINT)
    if (mean == FROM_CHECKPOINT) != (std == FROM_CHECKPOINT):
        raise UserError("set both dataset.mean and dataset.std (the eval images' normalisation), or neither "
                        "(the checkpoint's).")
    target = model
    if mean != FROM_CHECKPOINT:
        if not (isinstance(mean, list) and isinstance(std, list)) and not (mean is None and std is None):
            raise UserError(f"dataset.mean and dataset.std must be lists of numbers (or both null); got "
                            f"{mean!r} and {std!r}.")
        mean, std = normalisation(mean, std, model.channels)
        target = ImageTransform(model.size, model.channels, model.invert, model.resize, mean, std)
    own = {"image_size": model.size, "channels": model.channels, "mean": None, "std": None,
           **{k: trained.get(k) for k in ("ways", "shots", "query")}}
    node.update({k: v for k, v in own.items() if k in params and v is not None or k in ("mean", "std") and k in params})
    check_node(node, "dataset")
    cls = get_object(node["_target_"])
    if getattr(cls, "task", None) != "classification" or not hasattr(cls, "episode"):
        raise UserError(f"dataset={_name(node)} is not a classification dataset; "
                        f"eval dataset=NAME meta-tests on image classes (e.g. dataset=image_folder).")
    source = instantiate(node)
    if not hasattr(source, "transform"):
        raise UserError(f"{source.title} holds no images; eval dataset=NAME meta-tests on image datasets.")
    return AdaptedSource(source, target, advice="meta-test on every class of the dataset with eval.split=all")


def describe(node: dict[str, Any]) -> str:
    """The eval dataset as accuracy.csv's eval_dataset names it: its group option, with the
    folder for a dataset that is a folder (image_folder:/data/crops)."""
    name = _name(node)
    cls = get_object(node["_target_"])
    if not getattr(cls, "under_data_root", True) and node.get("root"):
        return f"{name}:{Path(str(node['root'])).expanduser().absolute()}"
    return name


def _name(node: dict[str, Any]) -> str:
    """The dataset group option of `node` (its _target_ when no option builds it)."""
    return option_of("dataset", node["_target_"]) or node["_target_"]


def fit_source(source: Any, backbone: dict[str, Any]) -> Any:
    """`source` with its images brought to the input `backbone` takes (a timm model's), when
    that differs from the dataset's own; else `source` itself."""
    from meta_cli.engine.instantiate import arguments

    cls = get_object(backbone["_target_"])
    target = cls.input_transform(**arguments(backbone)) if hasattr(cls, "input_transform") else None
    if target is None or not hasattr(source, "transform") or target == source.transform:
        return source
    return AdaptedSource(source, target)
