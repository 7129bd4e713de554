"""Episode sampling over an in-memory image tensor, by class.

Same semantics as learn2learn's TaskDataset with NWays, KShots(shots + query), LoadData,
RemapLabels and ConsecutiveLabels: `ways` distinct classes, `shots + query` distinct images
of each, labels 0..ways-1 in random class order. It indexes one tensor that already lives
on the training device, instead of loading sample by sample through a Python dataset.

The same sampler serves the numbered mini-batches of (image, class) that non-episodic
training (algorithm=pretrain) draws: `ClassSampler.batch`, and `ClassBatches` for datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from meta_cli.data.base import Episode, Split, batch_examples, batch_rng


@dataclass(frozen=True)
class Affine:
    """Ranges of the per-image random affine augmentation (see `random_affine`)."""

    degrees: float = 10.0  #: angles U[-degrees, degrees]
    scale: float = 0.1     #: zoom U[1 - scale, 1 + scale]
    shift: float = 0.1     #: shifts U[-shift, shift] of the half-width
    shear: float = 0.0     #: shear U[-shear, shear] (tan of the angle), along x


def random_affine(batch: torch.Tensor, rng: np.random.Generator, affine: Affine = Affine()) -> torch.Tensor:
    """Turn, scale, shear and shift each image of (N, C, H, W) by its own small random amount.

    Parameters come from `rng`, so an episode stays a function of its seed. Uncovered
    pixels are 0: background for images whose strokes are 1.
    """
    n = batch.shape[0]
    angle = np.deg2rad(rng.uniform(-affine.degrees, affine.degrees, n))
    zoom = rng.uniform(1 - affine.scale, 1 + affine.scale, n)
    tx, ty = rng.uniform(-affine.shift, affine.shift, (2, n))
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    rotation = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    if affine.shear:
        # Drawn only when asked for, so the default draws (and episodes) stay as they were.
        shear = np.zeros((n, 2, 2))
        shear[:, 0, 0] = shear[:, 1, 1] = 1.0
        shear[:, 0, 1] = rng.uniform(-affine.shear, affine.shear, n)
        rotation = rotation @ shear
    theta = np.concatenate([rotation, np.stack([tx, ty], 1)[:, :, None]], 2)
    theta_t = torch.as_tensor(theta, dtype=batch.dtype, device=batch.device)
    grid = F.affine_grid(theta_t, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ClassSampler:
    """Draws episodes from `images` (N, C, H, W) grouped by class.

    `class_images[c]` holds the image indices of base class c. With `rotations`, every base
    class yields four classes (0, 90, 180, 270 degrees), with `flips` also their mirror images:
    class v is base v // variants turned by (v % 4) * 90 degrees and mirrored when
    (v // 4) % 2, so the transform is chosen per class, not per task.
    """

    def __init__(self, images: torch.Tensor, class_images: list[np.ndarray],
                 rotations: bool = False, augment: Affine | None = None, flips: bool = False,
                 convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images = images
        #: Applied to the selected images only: lets `images` stay uint8 on the device (a
        #: quarter of float32's memory; tiered-ImageNet's train split is 9.5 GB as uint8).
        self.convert = convert
        self.class_images = class_images
        self.rotations = rotations
        self.flips = flips
        self.augment = augment
        self.variants = (4 if rotations else 1) * (2 if flips else 1)
        # Example e of the mini-batches: image e // variants of the classes' images laid end to
        # end, as class variant e % variants.
        self._flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in class_images])
        self._base_of = np.repeat(np.arange(len(class_images)), [len(c) for c in class_images])

    @property
    def num_classes(self) -> int:
        return len(self.class_images) * self.variants

    @property
    def num_examples(self) -> int:
        """(image, class) pairs an epoch visits: every image once as each of its class variants."""
        return len(self._flat) * self.variants

    def _transform(self, images: torch.Tensor, variant: int) -> torch.Tensor:
        turns, mirror = (variant % 4, variant // 4) if self.rotations else (0, variant)
        if mirror:
            images = images.flip(-1)
        return torch.rot90(images, turns, dims=(-2, -1)) if turns else images

    def sample(self, rng: np.random.Generator, ways: int, shots: int, query: int) -> Episode:
        per_class = shots + query
        classes = rng.choice(self.num_classes, size=ways, replace=False)
        picks, variants = [], []
        for c in classes:
            base, variant = divmod(int(c), self.variants)
            members = self.class_images[base]
            picks.append(members[rng.permutation(len(members))[:per_class]])
            variants.append(variant)
        index = torch.from_numpy(np.concatenate(picks)).to(self.images.device)
        batch = self.images.index_select(0, index)
        if self.convert is not None:
            batch = self.convert(batch)
        batch = batch.view(ways, per_class, *batch.shape[1:])
        if any(variants):
            batch = torch.stack([self._transform(b, v) for b, v in zip(batch, variants)])
        if self.augment is not None:
            batch = random_affine(batch.flatten(0, 1), rng, self.augment).view_as(batch)
        labels = torch.arange(ways, device=batch.device)
        return Episode(
            support=batch[:, :shots].reshape(ways * shots, *batch.shape[2:]),
            support_labels=labels.repeat_interleave(shots),
            query=batch[:, shots:].reshape(ways * query, *batch.shape[2:]),
            query_labels=labels.repeat_interleave(query),
            seed=int(rng.integers(2**62)),  # drawn last: the images above are what they were
            classes=torch.as_tensor(classes, dtype=torch.int64, device=batch.device),
        )

    def sample_rows(self, rng: np.random.Generator, ways: int, shots: int,
                    query: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The episode `sample(rng, ...)` draws, as rows of `images`: support rows (ways * shots,)
        and query rows (ways * query,), class-major, and the episode's seed. Only for a sampler
        without class variants or augmentation, whose images are the stored ones (the same
        draws from `rng`, in the same order, as `sample`)."""
        if self.variants > 1 or self.augment is not None:
            raise ValueError("an episode of turned or augmented images has no stored rows")
        per_class = shots + query
        classes = rng.choice(self.num_classes, size=ways, replace=False)
        rows = np.stack([self.class_images[int(c)][rng.permutation(len(self.class_images[int(c)]))[:per_class]]
                         for c in classes])
        seed = int(rng.integers(2**62))
        return rows[:, :shots].reshape(-1), rows[:, shots:].reshape(-1), seed

    def rows(self) -> np.ndarray:
        """Every row of `images` that belongs to one of the classes, class by class."""
        return self._flat

    def inputs(self, rows: np.ndarray) -> torch.Tensor:
        """Model inputs (len(rows), C, H, W) of those rows of `images`."""
        batch = self.images.index_select(0, torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.images.device))
        return self.convert(batch) if self.convert is not None else batch

    def draw(self, examples: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples `examples` (n,) in 0..num_examples-1 -> images (n, C, H, W) and their
        classes (n,) int64 in 0..num_classes-1 (class v = base class v // variants as variant
        v % variants, as episodes number them), turned/mirrored as their class says and
        augmented with `rng` as episodes are."""
        examples = np.asarray(examples, dtype=np.int64)
        image, variant = np.divmod(examples, self.variants)
        classes = self._base_of[image] * self.variants + variant
        # Gathered grouped by variant, each group turned at once, then put back in batch order
        # (an indexed assignment per group measured 5x slower than this).
        grouped = np.argsort(variant, kind="stable")
        index = torch.from_numpy(self._flat[image[grouped]]).to(self.images.device)
        batch = self.images.index_select(0, index)
        if self.convert is not None:
            batch = self.convert(batch)
        if self.variants > 1:
            sizes = np.bincount(variant, minlength=self.variants).tolist()
            batch = torch.cat([self._transform(part, v) for v, part in enumerate(batch.split(sizes))])
            back = torch.from_numpy(np.argsort(grouped)).to(batch.device)
            batch = batch.index_select(0, back)
        if self.augment is not None:
            batch = random_affine(batch, rng, self.augment)
        return batch, torch.from_numpy(classes).to(batch.device)

    def batch(self, seed: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch number `index` of shuffled epochs over all examples (`batch_examples`),
        augmented from its own stream (`batch_rng`): images (size, C, H, W), classes (size,)."""
        return self.draw(batch_examples(seed, index, size, self.num_examples), batch_rng(seed, index))


class ClassBatches:
    """Mini-batches for a TaskSource whose `_sampler(split)` is a ClassSampler (a mixin placed
    before TaskSource): classes and examples are counted as the sampler numbers them, so the
    class ids of batches are those of the split's episodes, variants included."""

    def _sampler(self, split: Split) -> ClassSampler:
        raise NotImplementedError

    def num_classes(self, split: Split) -> int:
        return self._sampler(split).num_classes

    def num_examples(self, split: Split) -> int:
        return self._sampler(split).num_examples

    def batch(self, split: Split, index: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sampler(split).batch(seed, index, size)
