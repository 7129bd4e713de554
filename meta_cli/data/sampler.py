"""Episode sampling over an in-memory image tensor, by class.

Same semantics as learn2learn's TaskDataset with NWays, KShots(shots + query), LoadData,
RemapLabels and ConsecutiveLabels: `ways` distinct classes, `shots + query` distinct images
of each, labels 0..ways-1 in random class order. It indexes one tensor that already lives
on the training device, instead of loading sample by sample through a Python dataset.
"""
from __future__ import annotations

import numpy as np
import torch

from meta_cli.data.base import Episode


class ClassSampler:
    """Draws episodes from `images` (N, C, H, W) grouped by class.

    `class_images[c]` holds the image indices of base class c. With `rotations`, every base
    class yields four classes (0, 90, 180, 270 degrees): class v is base v // 4 rotated by
    (v % 4) * 90, so the rotation is chosen per class, not per task.
    """

    def __init__(self, images: torch.Tensor, class_images: list[np.ndarray],
                 rotations: bool = False) -> None:
        self.images = images
        self.class_images = class_images
        self.rotations = rotations

    @property
    def num_classes(self) -> int:
        return len(self.class_images) * (4 if self.rotations else 1)

    @property
    def min_images_per_class(self) -> int:
        return min(len(c) for c in self.class_images)

    def sample(self, rng: np.random.Generator, ways: int, shots: int, query: int) -> Episode:
        per_class = shots + query
        classes = rng.choice(self.num_classes, size=ways, replace=False)
        picks, turns = [], []
        for c in classes:
            base, turn = divmod(int(c), 4) if self.rotations else (int(c), 0)
            members = self.class_images[base]
            picks.append(members[rng.permutation(len(members))[:per_class]])
            turns.append(turn)
        index = torch.from_numpy(np.concatenate(picks)).to(self.images.device)
        batch = self.images.index_select(0, index)
        batch = batch.view(ways, per_class, *batch.shape[1:])
        if any(turns):
            batch = torch.stack([torch.rot90(b, k, dims=(-2, -1)) if k else b
                                 for b, k in zip(batch, turns)])
        labels = torch.arange(ways, device=batch.device)
        return Episode(
            support=batch[:, :shots].reshape(ways * shots, *batch.shape[2:]),
            support_labels=labels.repeat_interleave(shots),
            query=batch[:, shots:].reshape(ways * query, *batch.shape[2:]),
            query_labels=labels.repeat_interleave(query),
        )
