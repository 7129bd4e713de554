"""The preprocessing of an image dataset, as one small value that checkpoints store.

An image reaches a model in two steps, and an `ImageTransform` is both:

- `pixels`: a PIL image -> (C, size, size) uint8, what the datasets cache: a transparent image
  (RGBA, LA, a palette or single colour marked transparent) composited onto white, converted to
  RGB or grayscale, LANCZOS-resized when it is not size x size (the aspect ratio is not kept), and
  inverted when `invert` (Omniglot: black strokes on white become 255 on 0).
- `to_input`: those pixels (N, C, H, W) -> float model inputs, 0..1, then (x - mean) / std per
  channel when mean and std are set. Samplers apply it to each episode's images only.

Training data and `meta-cli predict` both go through these two methods of the transform the
checkpoint stores (`to_dict` / `from_dict`), so inference replays exactly the training
preprocessing. Augmentation (Omniglot's rotations, flips, affine) is part of meta-training
episodes, not of the transform.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from meta_cli.errors import UserError

RESIZE = {"lanczos": Image.LANCZOS}
#: What shows through transparent pixels: the paper a drawing sits on (Omniglot's strokes are
#: black on white, and drawing tools save black on transparent). PIL's convert would drop the
#: alpha and keep whatever colour the transparent pixels hold, often the strokes' own black.
BACKGROUND = (255, 255, 255, 255)


def flatten(image: Image.Image) -> Image.Image:
    """`image` with any transparency composited onto BACKGROUND (RGBA); others unchanged."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")  # a palette's or a single colour's transparency becomes alpha
    return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba)


@dataclass(frozen=True)
class ImageTransform:
    """File image -> cached uint8 pixels -> float model input; see the module docstring.

    mean and std hold one value per channel, or are both None (inputs stay 0..1).
    """

    size: int
    channels: Literal[1, 3]
    invert: bool = False
    resize: Literal["lanczos"] = "lanczos"  # how an image of another size is brought to size
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Lists (from a checkpoint or a config) become tuples: the transform stays hashable.
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if not (isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 1):
            raise ValueError(f"size must be an int >= 1; got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}")
        if not isinstance(self.invert, bool):
            raise ValueError(f"invert must be true or false; got {self.invert!r}")
        if self.resize not in RESIZE:
            raise ValueError(f"resize must be one of {', '.join(RESIZE)}; got {self.resize!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be set or both be None")
        if self.mean is not None:
            if len(self.mean) != self.channels or len(self.std) != self.channels:
                raise ValueError(f"mean and std need {self.channels} values, one per channel")
            if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
                raise ValueError("mean must be finite and std finite and > 0")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One model input: (channels, size, size)."""
        return (self.channels, self.size, self.size)

    def pixel_key(self) -> dict[str, Any]:
        """What `pixels` depends on: it keys the dataset caches (mean/std are not cached)."""
        return {"size": self.size, "channels": self.channels, "invert": self.invert,
                "resize": self.resize}

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (channels, size, size) uint8. PIL's errors propagate."""
        image = flatten(image).convert("RGB" if self.channels == 3 else "L")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), RESIZE[self.resize])
        array = np.asarray(image, dtype=np.uint8).reshape(self.size, self.size, self.channels)
        if self.invert:
            array = 255 - array
        # A copy, channels first: PIL's buffer is read-only and torch wants writable memory.
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 pixels -> float32 model inputs on the same device."""
        x = pixels.float().div_(255)
        if self.mean is not None:
            shape = (1, -1, 1, 1)
            x.sub_(torch.tensor(self.mean, device=x.device).view(shape))
            x.div_(torch.tensor(self.std, device=x.device).view(shape))
        return x

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> one (channels, size, size) float model input."""
        return self.to_input(self.pixels(image)[None])[0]

    def describe_input(self) -> str:
        """What a model input is, in words (for messages about tensors given as inputs)."""
        text = "float, 0..1" + (" (strokes = 1)" if self.invert else "")
        if self.mean is not None:
            text += f", then normalised with mean {list(self.mean)} and std {list(self.std)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain values only: checkpoints are read with torch.load(weights_only=True)."""
        values = asdict(self)
        for name in ("mean", "std"):
            values[name] = None if values[name] is None else list(values[name])
        return values

    @classmethod
    def from_config(cls, size: int, channels: Literal[1, 3], mean: Sequence[float] | None,
                    std: Sequence[float] | None) -> "ImageTransform":
        """A dataset's transform from its config: dataset.mean and dataset.std checked, with a
        UserError naming the key (one value serves every channel)."""
        mean, std = normalisation(mean, std, channels)
        return cls(size, channels, mean=mean, std=std)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ImageTransform":
        """The transform `to_dict` wrote; ValueError for any other dict."""
        if not isinstance(values, dict):
            raise ValueError(f"a transform is a dict; got {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = set(values) - names, {"size", "channels"} - set(values)
        if unknown or missing:
            raise ValueError(f"unknown keys {sorted(unknown)}" if unknown else f"missing {sorted(missing)}")
        return _made(**values)


def _made(**values: Any) -> ImageTransform:
    """ImageTransform(**values) from recorded values; any bad value is a ValueError."""
    try:
        return ImageTransform(**values)
    except TypeError as exc:  # e.g. mean is a number, not a list
        raise ValueError(str(exc)) from None


def normalisation(mean: Sequence[float] | None, std: Sequence[float] | None,
                  channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """dataset.mean and dataset.std -> one value per channel (one given value serves every
    channel), or (None, None); UserError naming the key for a bad value."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise UserError("set both dataset.mean and dataset.std, or both to null (no normalisation).")
    values = []
    for key, given in (("mean", mean), ("std", std)):
        if len(given) not in (1, channels):
            raise UserError(f"dataset.{key} must have 1 or {channels} values (one per channel); "
                            f"got {list(given)}.")
        values.append(tuple(float(v) for v in given) * (channels if len(given) == 1 else 1))
    if min(values[1]) <= 0:
        raise UserError(f"dataset.std values must be > 0; got {list(std)}.")
    return values[0], values[1]
