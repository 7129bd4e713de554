"""Meta-testing: a fixed, seeded set of episodes; accuracy +- ci95 per (ways, shots)."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterator, Literal, Protocol

import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import Split, TaskSource
from meta_cli.distributed import World
from meta_cli.errors import UserError
from meta_cli.metrics import mean_ci95
from meta_cli.params import Ge
from meta_cli.validation import check_node

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
    #: Meta-RL: the test tasks, each adapted from the meta-trained policy (returns.csv).
    tasks: Annotated[int, Ge(1)] = 40
    #: Intra-op threads of each process while it meta-tests. A CPU kernel's sums (MAML's
    #: test-time gradients, a convolution) are split by thread, so the last digits of an
    #: episode depend on the thread count: a fixed count gives the same numbers on any number
    #: of processes (distributed.processes=N: one process per core, each at 1 thread, is the
    #: fast way to meta-test on many cores). null: the process's own threads (faster on one
    #: process with many cores, but then the numbers depend on the cores and processes).
    threads: Annotated[int, Ge(1)] | None = 1

    def check_applies(self, task: str) -> None:
        """UserError for an eval.* key set away from its default that the meta-test of `task`
        would not read: meta-RL tests `tasks` tasks at one thread, episodes have no tasks."""
        changed = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        if task == "rl":
            for key in ("episodes", "ways", "shots", "query", "threads"):
                if key in changed:
                    instead = ("; set eval.tasks (the number of test tasks) instead" if key == "episodes"
                               else " (its trajectories per step are dataset.trajectories)" if key == "shots"
                               else "")
                    raise UserError(f"eval.{key} does not apply to meta-RL, which meta-tests eval.tasks tasks "
                                    f"(returns.csv, on one thread); leave eval.{key} unset{instead}.")
            return
        if "tasks" in changed:
            raise UserError(f"eval.tasks applies to meta-RL only; {task} meta-tests eval.episodes episodes: "
                            f"set eval.episodes instead and leave eval.tasks unset.")
        if task == "regression" and self.ways is not None:
            raise UserError("eval.ways does not apply to regression; leave it unset.")

    def settings(self, source: TaskSource) -> list[tuple[int, int, int]]:
        """The (ways, shots, query) to evaluate; raises UserError for ones the data cannot give
        (what the model can answer is the algorithm's `check_ways`)."""
        self.check_applies(source.task)
        ways = _as_list(self.ways, source.ways)
        shots = _as_list(self.shots, source.shots)
        query = self.query if self.query is not None else source.query
        combos = [(w, s, query) for w, s in itertools.product(ways, shots)]
        keys = {"ways": "eval.ways" if self.ways is not None else "dataset.ways",
                "shots": "eval.shots" if self.shots is not None else "dataset.shots",
                "query": "eval.query" if self.query is not None else "dataset.query"}
        defaults = [k for k in ("ways", "shots", "query") if keys[k].startswith("dataset.")]
        hint = (f"Meta-testing takes {', '.join(keys[k] for k in defaults)} unless "
                f"{', '.join('eval.' + k for k in defaults)} {'is' if len(defaults) == 1 else 'are'} set."
                if defaults else "")
        for w, s, q in combos:
            source.check(self.split, w, s, q, keys=keys, use="meta-testing", hint=hint)
        return combos


def with_test_time(trained: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's algorithm node with `given` test-time keys (eval's and predict's
    `algorithm.KEY=VALUE`: `head`, `finetune`, `test_adaptation_steps`...) over it, checked
    against the algorithm's constructor. The weights fix the algorithm itself."""
    if not given:
        return trained
    if "_target_" in given:
        raise UserError("the checkpoint fixes the algorithm; give only its test-time keys, "
                        "e.g. algorithm.test_adaptation_steps=10 or algorithm.head=logistic.")
    node = {**trained, **given}
    check_node(node, "algorithm")
    return node


def describe_test_time(given: dict[str, Any] | None) -> str:
    """The test-time keys as accuracy.csv's `test_settings` records them, e.g.
    'algorithm.head=logistic algorithm.finetune=true' ('' for the checkpoint's own)."""
    def value(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) or v is None else str(v).replace(" ", "")
    return " ".join(f"algorithm.{k}={value(v)}" for k, v in (given or {}).items())


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


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (None: left as they are)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(algorithm: Algorithm, source: TaskSource, split: Split, episodes: int, seed: int,
             ways: int, shots: int, query: int, world: World = World(), threads: int | None = 1) -> Result:
    """Mean query accuracy and loss over `episodes` episodes of `split` drawn from `seed`.

    Each process evaluates its contiguous share of the episode numbers at `threads` intra-op
    threads and the per-episode results are gathered in episode order, so any number of
    processes gives the result of one (at the same `threads`).
    """
    losses, accuracies = [], []
    with torch.no_grad(), intra_op_threads(threads):
        for index in world.share(episodes):
            episode = source.episode(split, index, seed, ways, shots, query)
            episode_loss, episode_accuracy = algorithm.episode_loss(episode, training=False)
            losses.append(episode_loss.item())
            if episode_accuracy is not None:
                accuracies.append(episode_accuracy.item())
    losses, accuracies = world.gather(losses), world.gather(accuracies)
    mean_loss, loss_ci = mean_ci95(losses)
    if accuracies:
        mean_acc, acc_ci = mean_ci95(accuracies)
        return Result(ways, shots, query, episodes, mean_acc, acc_ci, mean_loss, losses, accuracies)
    return Result(ways, shots, query, episodes, math.nan, loss_ci, mean_loss, losses)


class Validation(Protocol):
    """The metric that picks best.pt, computed every `train.val_every` iterations."""

    metric: str  # its name in the best record, e.g. "val_accuracy"

    def __call__(self, iteration: int) -> tuple[float, dict[str, float | None]]:
        """The metric, and the values of the val row of metrics.csv."""

    def better(self, value: float, best: float) -> bool:
        """Whether `value` beats the best so far."""


class EpisodeValidation:
    """Meta-validation: accuracy (loss for regression) over `episodes` fixed val episodes of
    the dataset's shape, meta-tested as in `eval` and split across processes."""

    def __init__(self, algorithm: Algorithm, source: TaskSource, episodes: int, seed: int,
                 world: World = World(), threads: int | None = 1) -> None:
        self.algorithm, self.source, self.episodes, self.seed, self.world = algorithm, source, episodes, seed, world
        self.threads = threads
        self.classification = source.task == "classification"
        self.metric = "val_accuracy" if self.classification else "val_loss"

    def better(self, value: float, best: float) -> bool:
        return value > best if self.classification else value < best

    def __call__(self, iteration: int) -> tuple[float, dict[str, float | None]]:
        # As meta-testing: dropout off, running statistics (resnet12, wrn28) used, not updated.
        self.algorithm.eval()
        try:
            result = evaluate(self.algorithm, self.source, "val", self.episodes, self.seed,
                              self.source.ways, self.source.shots, self.source.query, self.world, self.threads)
        finally:
            self.algorithm.train()
        if not math.isfinite(result.loss):
            raise UserError(f"the val loss is {result.loss} at iteration {iteration} (split val); the last "
                            f"good checkpoint is kept: lower train.meta_lr.")
        accuracy = None if math.isnan(result.accuracy) else result.accuracy
        return (accuracy if self.classification else result.loss), {"loss": result.loss, "accuracy": accuracy}
