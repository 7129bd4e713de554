"""Another dataset's images brought to a model's input (cross-domain meta-testing, timm bodies).

The rule, in order, for every image of an episode (the same for any image dataset):

1. back to pixels in 0..1: the dataset's own normalisation undone, and its inversion
   (Omniglot's strokes = 1) undone, so that paper is white whatever the dataset;
2. channels: 1 -> 3 repeats the gray channel; 3 -> 1 is the ITU-R 601-2 luma that PIL's
   `convert("L")` uses, L = 0.299 R + 0.587 G + 0.114 B; any other pair cannot be converted
   (a UserError: a model of 2 or 4 input channels takes no image dataset);
3. size: resized to the model's size x size when it differs (bilinear with antialiasing; the
   aspect ratio is not kept, as in `ImageTransform.pixels`);
4. the model's own inversion, then its normalisation: (x - mean) / std per channel with the
   mean and std of the model's training data (the checkpoint's transform), or the ones given.

An image folder is decoded at the model's size and channels to begin with (LANCZOS, as its
training images were), so that for it steps 2 and 3 change nothing.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from meta_cli.data.base import Episode, Split
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError

#: PIL's "L" conversion weights (ITU-R 601-2 luma) for R, G, B.
LUMA = (0.299, 0.587, 0.114)


def check_channels(have: int, want: int, what: str = "the dataset's images") -> None:
    """UserError unless images of `have` channels can be brought to `want` (step 2)."""
    if have != want and {have, want} != {1, 3}:
        raise UserError(f"{what} have {have} channel{'s' if have != 1 else ''} and the model takes {want}: "
                        f"only 1 <-> 3 (gray <-> RGB) can be converted; use a model of 1 or 3 input channels.")


def to_unit(x: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Model inputs (N, C, H, W) made by `transform` -> pixels in 0..1, white paper (step 1)."""
    if transform.mean is not None:
        shape = (1, -1, 1, 1)
        x = x * torch.tensor(transform.std, device=x.device).view(shape) \
            + torch.tensor(transform.mean, device=x.device).view(shape)
    return 1 - x if transform.invert else x


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) 0..1 -> (N, channels, H, W) (step 2)."""
    have = x.shape[1]
    if have == channels:
        return x
    check_channels(have, channels)
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size) (step 3); unchanged when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def from_unit(x: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Pixels in 0..1 -> the inputs `transform` makes (step 4)."""
    if transform.invert:
        x = 1 - x
    if transform.mean is not None:
        shape = (1, -1, 1, 1)
        x = (x - torch.tensor(transform.mean, device=x.device).view(shape)) \
            / torch.tensor(transform.std, device=x.device).view(shape)
    return x


def bring(x: torch.Tensor, source: ImageTransform, target: ImageTransform) -> torch.Tensor:
    """Inputs made by `source` (N, C, H, W) -> the inputs `target` makes (steps 1-4)."""
    if source == target:
        return x
    x = to_unit(x, source)
    x = resize(convert_channels(x, target.channels), target.size)
    return from_unit(x, target)


class AdaptedSource:
    """An image TaskSource whose episodes reach the model as `target` inputs.

    Everything but the episodes' images (classes, splits, checks, messages) is the wrapped
    dataset's own.
    """

    def __init__(self, inner: Any, target: ImageTransform, advice: str = "") -> None:
        """`advice`: said first where the dataset's split has too few classes."""
        check_channels(inner.transform.channels, target.channels)
        self.inner, self.target, self.advice = inner, target, advice
        self.input_shape = target.shape

    def check(self, *args: Any, **kwargs: Any) -> None:
        # The inner dataset's check, with this source's advice (its own methods see self.inner).
        type(self.inner).check(self, *args, **kwargs)

    def classes_advice(self, split: Split, ways: int) -> str:
        own = self.inner.classes_advice(split, ways)
        return "; or ".join(a for a in (self.advice if split != "all" else "", own) if a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int, query: int) -> Episode:
        e = self.inner.episode(split, index, seed, ways, shots, query)
        source = self.inner.transform
        return Episode(bring(e.support, source, self.target), e.support_labels,
                       bring(e.query, source, self.target), e.query_labels, e.seed)

    def batch(self, split: Split, index: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's mini-batch (algorithm=pretrain), its images brought to the model's input."""
        images, labels = self.inner.batch(split, index, seed, size)
        return bring(images, self.inner.transform, self.target), labels

    def inputs(self, split: Split, rows: Any) -> torch.Tensor:
        return bring(self.inner.inputs(split, rows), self.inner.transform, self.target)

    def describe(self) -> dict[str, Any]:
        """The dataset's, with the model's input as the transform (what `predict` replays)."""
        described = self.inner.describe()
        described["transform"] = self.target.to_dict()
        return described

    def to(self, device: torch.device) -> "AdaptedSource":
        self.inner = self.inner.to(device)
        return self
