"""Meta-testing: a fixed, seeded set of episodes; accuracy +- ci95 per (ways, shots)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import Split, TaskSource
from meta_cli.errors import UserError
from meta_cli.metrics import EpisodeMean
from meta_cli.params import Ge

Ways = Annotated[int, Ge(2)] | list[Annotated[int, Ge(2)]] | None
Shots = Annotated[int, Ge(1)] | list[Annotated[int, Ge(1)]] | None


@dataclass
class EvalSettings:
    """`eval.*`: which episodes to test on. Same seed -> the same episodes, every time."""

    episodes: Annotated[int, Ge(1)] = 600
    seed: Annotated[int, Ge(0)] = 0
    split: Literal["train", "val", "test"] = "test"
    ways: Ways = None
    shots: Shots = None
    query: Annotated[int, Ge(1)] | None = None

    def settings(self, algorithm: Algorithm, source: TaskSource) -> list[tuple[int, int, int]]:
        """The (ways, shots, query) to evaluate; raises UserError for ones that cannot work."""
        ways = _as_list(self.ways, source.ways)
        shots = _as_list(self.shots, source.shots)
        query = self.query if self.query is not None else source.query
        if source.task == "regression" and self.ways is not None:
            raise UserError("eval.ways does not apply to regression; leave it unset.")
        if algorithm.fixed_ways and any(w != algorithm.outputs for w in ways):
            raise UserError(
                f"eval.ways={self.ways} but this {type(algorithm).__name__} model has a "
                f"{algorithm.outputs}-way output layer: its head size is fixed by the training "
                f"ways. Use eval.ways={algorithm.outputs}, or a metric algorithm such as protonet."
            )
        for w in ways:
            algorithm.check_ways(w, "eval.ways")
        combos = [(w, s, query) for w, s in itertools.product(ways, shots)]
        for w, s, q in combos:
            source.check(self.split, w, s, q, prefix="eval.")
        return combos


def _as_list(value: int | list[int] | None, default: int) -> list[int]:
    if value is None:
        return [default]
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class Result:
    ways: int
    shots: int
    query: int
    episodes: int
    accuracy: float  # nan for regression
    ci95: float  # of accuracy; of the loss for regression
    loss: float
    #: Per episode, in episode order: query loss and accuracy (None for regression), kept in
    #: episodes.csv so intervals can be recomputed and runs compared episode for episode.
    episode_losses: list[float] = field(default_factory=list)
    episode_accuracies: list[float] = field(default_factory=list)


def evaluate(algorithm: Algorithm, source: TaskSource, split: Split, episodes: int, seed: int,
             ways: int, shots: int, query: int) -> Result:
    """Mean query accuracy and loss over `episodes` episodes of `split` drawn from `seed`."""
    accuracy, loss = EpisodeMean(), EpisodeMean()
    with torch.no_grad():
        for index in range(episodes):
            episode = source.episode(split, index, seed, ways, shots, query)
            episode_loss, episode_accuracy = algorithm.episode_loss(episode, training=False)
            loss.update(episode_loss.item())
            if episode_accuracy is not None:
                accuracy.update(episode_accuracy.item())
    mean_loss, loss_ci = loss.compute()
    if accuracy.values:
        mean_acc, acc_ci = accuracy.compute()
        return Result(ways, shots, query, episodes, mean_acc, acc_ci, mean_loss, loss.values, accuracy.values)
    return Result(ways, shots, query, episodes, math.nan, loss_ci, mean_loss, loss.values)
