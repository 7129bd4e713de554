"""The contract of a backbone: (N, *input_shape) inputs -> (N, out_features) embeddings."""
from __future__ import annotations

from typing import Any

from torch import nn

from meta_cli.errors import UserError


class Backbone(nn.Module):
    """A feature extractor built for one input shape; algorithms put their heads on it.

    `input_shape` (one sample, e.g. (1, 28, 28)) comes from the dataset, not the config.
    Subclasses set `out_features` in their constructor, and say in `check` which configs
    cannot work, so that a sweep is checked without building a single model.
    """

    injected = ("input_shape",)
    out_features: int

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        #: One sample's shape, e.g. (1, 28, 28) (algorithm=mann reads it for its pixel input).
        self.input_shape = tuple(input_shape)

    @classmethod
    def check(cls, input_shape: tuple[int, ...], **config: Any) -> None:
        """Raise UserError for a config (this backbone's keys) that cannot take inputs of
        `input_shape`. The pre-flight calls it for every job; the constructor calls it first."""

    @classmethod
    def input_transform(cls, **config: Any) -> Any:
        """The image input this backbone takes whatever the dataset (an `ImageTransform`: a
        timm model's pretrained size and normalisation), or None: the dataset's own."""
        return None

    @classmethod
    def batch_independent(cls, **config: Any) -> bool:
        """Whether, in eval mode, an image's embedding is the same whatever else is in its batch
        (running batch-norm statistics, or none): meta-testing may then embed each image once
        (eval.cache). False where batch norm uses each batch's statistics (the Conv-4 family)."""
        return False

    @classmethod
    def vmap_blocker(cls, **config: Any) -> str | None:
        """Why this config cannot run under torch.func's vmap (algorithm.backend=vmap): random
        ops (dropout) or running statistics, as the option to change; None when it can."""
        return None


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image input; one line for a dataset of other inputs (sinusoid's (1,))."""
    if len(input_shape) != 3:
        raise UserError(f"backbone {name} needs images (C, H, W); this dataset gives inputs of shape "
                        f"{tuple(input_shape)}. Use backbone=mlp.")
    return tuple(input_shape)  # type: ignore[return-value]


class NoBackbone(Backbone):
    """backbone=none: for meta-RL, whose algorithms build their own policy network."""

    @classmethod
    def check(cls, input_shape: tuple[int, ...], **config: Any) -> None:
        raise UserError("backbone=none is for the meta-RL datasets, whose algorithms build their own "
                        "policy network; choose a backbone for this dataset (e.g. backbone=conv4).")
