"""What every dataset gives the engine: seeded episodes by (split, index)."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from meta_cli.errors import UserError

Split = Literal["train", "val", "test"]
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}


@dataclass
class Episode:
    """One few-shot task.

    Classification: support (ways * shots, C, H, W), support_labels (ways * shots,) in
    0..ways-1, class-major; query (ways * query, C, H, W), query_labels (ways * query,).
    Regression: support (shots, 1), support_labels (shots, 1); query likewise.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(*(t.to(device, non_blocking=True) for t in
                         (self.support, self.support_labels, self.query, self.query_labels)))


def episode_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one episode, derived from (seed, split, index) alone.

    Episodes never touch a global RNG, so the same seed gives the same episodes whatever ran
    before (evaluation is independent of training; resuming replays nothing).
    """
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


#: The config keys an episode shape comes from, by default: named in messages so that a user
#: reads the key they set (train.ways and eval.ways default to dataset.ways).
DATASET_KEYS = {"ways": "dataset.ways", "shots": "dataset.shots", "query": "dataset.query"}


class TaskSource(abc.ABC):
    """A dataset that yields episodes. Subclasses are Hydra `_target_`s."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    # Set at run time by the engine, not from the config.
    injected: tuple[str, ...] = ("splits",)

    ways: int
    shots: int
    query: int

    title: str = "dataset"  # its name in messages, e.g. "omniglot minimal"

    @abc.abstractmethod
    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        """Episode number `index` of `split`; the same arguments give the same episode."""

    def num_classes(self, split: Split) -> int:
        """Classes an episode of `split` can draw from."""
        raise NotImplementedError

    def images_per_class(self, split: Split) -> int:
        """Images of the smallest class of `split`: an episode takes shots + query of each."""
        raise NotImplementedError

    def check(self, split: Split, ways: int, shots: int, query: int,
              keys: dict[str, str] = DATASET_KEYS, use: str = "", hint: str = "") -> None:
        """Raise UserError when an episode of this shape cannot be drawn from `split`.

        `keys` names the config key each of ways, shots and query came from (the one the user
        set), `use` what the episodes are for, `hint` which other key also bounds the value.
        """
        where = f"the {self.title} {split} split" + (f" ({use})" if use else "")
        tail = f" {hint}" if hint else ""
        n = self.num_classes(split)
        if ways > n:
            raise UserError(f"{keys['ways']}={ways} is more than the {n} classes of {where}; use "
                            f"{keys['ways']} <= {n}.{tail}")
        per_class = self.images_per_class(split)
        if shots + query > per_class:
            raise UserError(f"shots + query = {shots} + {query} is more than the {per_class} images per "
                            f"class of {where}; lower {keys['shots']} or {keys['query']}.{tail}")

    def to(self, device: torch.device) -> "TaskSource":
        """Keep the data on the training device so that sampling never copies from host."""
        return self

    def describe(self) -> dict[str, Any]:
        """What checkpoints store about the data: "splits" (class lists, also splits.json),
        for image datasets "transform" (`ImageTransform.to_dict`, replayed by `meta-cli
        predict`), and "data", how this dataset makes its episodes (plain values)."""
        return {"splits": {}}
