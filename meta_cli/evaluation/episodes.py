"""Meta-testing: a fixed, seeded set of episodes; accuracy +- ci95 per (ways, shots), written
to accuracy.csv and episodes.csv."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import Split, TaskSource
from meta_cli.runtime.distributed import World
from meta_cli.errors import UserError
from meta_cli.evaluation.cached import EmbeddingTable
from meta_cli.evaluation.metrics import mean_ci95
from meta_cli.rundir.outputs import format_table, write_accuracy, write_episodes
from meta_cli.params import Ge, Gt
from meta_cli.runlog import show
from meta_cli.config.validation import check_node

#: eval.* keys of the continual protocol only.
CONTINUAL_KEYS = ("classes", "streams", "lr", "stream_shots", "heldout", "learner", "oracle_epochs")

Ways = Annotated[int, Ge(2)] | list[Annotated[int, Ge(2)]] | None
Shots = Annotated[int, Ge(1)] | list[Annotated[int, Ge(1)]] | None


@dataclass
class EvalSettings:
    """`eval.*`: which episodes to test on. Same seed -> the same episodes, every time."""

    episodes: Annotated[int, Ge(1)] = 600
    seed: Annotated[int, Ge(0)] = 0
    #: all: every class of the dataset (a dataset the model never saw, meta-tested whole).
    split: Literal["train", "val", "test", "all"] = "test"
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
    #: Embed each image of the split once and run every episode on the cached embeddings:
    #: the same numbers (up to float rounding), much faster; only for learners whose embedding
    #: is fixed per image and backbones that do not normalise by batch (evaluation/cached.py).
    cache: bool = False
    #: episodes: few-shot episodes (accuracy.csv). instances: Santoro et al.'s sequences, accuracy
    #: by the presentation number of a class (instances.csv; evaluation/instances.py). continual:
    #: classes learned one image per SGD step, class after class (evaluation/continual.py,
    #: continual.csv).
    protocol: Literal["episodes", "instances", "continual"] = "episodes"
    #: protocol=instances: the presentation numbers reported; each class is shown max(instances) times.
    instances: list[Annotated[int, Ge(1)]] = (1, 2, 3, 5, 10)
    #: continual: the schedule, classes learned per stream (each at most the split's classes).
    classes: list[Annotated[int, Ge(1)]] = field(default_factory=lambda: [10, 25, 50, 100])
    #: continual: seeded streams per schedule length (+- ci95 over them).
    streams: Annotated[int, Ge(1)] = 20
    #: continual: the SGD rate of the stream; a list: each tried on meta-validation streams, the
    #: best per schedule length used on the test streams.
    lr: Annotated[float, Gt(0)] | list[Annotated[float, Gt(0)]] = field(
        default_factory=lambda: [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1])
    #: continual: training images per class (each shown once) and held-out images per class.
    stream_shots: Annotated[int, Ge(1)] = 15
    heldout: Annotated[int, Ge(1)] = 5
    #: continual: who learns the stream. model: the model's adaptable part (its own, or a fresh
    #: linear head on its frozen backbone); oracle: the same head on the same images, i.i.d.
    #: (shuffled) for `oracle_epochs` epochs, the upper line; scratch: a freshly initialised
    #: network of the backbone's architecture, all of it learning the stream.
    learner: Literal["model", "oracle", "scratch"] = "model"
    oracle_epochs: Annotated[int, Ge(1)] = 5

    def changed(self) -> list[str]:
        """The eval.* keys set away from their defaults, in the order of the fields."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != (
            f.default_factory() if f.default is dataclasses.MISSING else f.default)]

    def check_applies(self, task: str) -> None:
        """UserError for an eval.* key set away from its default that the meta-test of
        episodes (classification or regression: `task`) would not read."""
        changed = self.changed()
        if "tasks" in changed:
            raise UserError(f"eval.tasks applies to meta-RL only; {task} meta-tests eval.episodes episodes: "
                            f"set eval.episodes instead and leave eval.tasks unset.")
        if self.protocol != "instances" and "instances" in changed:
            raise UserError("eval.instances applies to eval.protocol=instances; set that too, or leave "
                            "eval.instances unset.")
        if task == "regression" and self.ways is not None:
            raise UserError("eval.ways does not apply to regression; leave it unset.")
        if self.protocol == "continual":
            if "episodes" in changed:  # (ways, shots, query: filled in from the data by `fill_from`)
                raise UserError("eval.episodes counts episodes, not eval.protocol=continual's streams "
                                "(eval.streams); leave eval.episodes unset.")
        else:
            for key in CONTINUAL_KEYS:
                if key in changed:
                    raise UserError(f"eval.{key} applies to eval.protocol=continual only; set "
                                    f"eval.protocol=continual or leave eval.{key} unset.")
        if task == "regression" and self.cache:
            raise UserError("eval.cache applies to image classification; leave it false for regression.")

    def __post_init__(self) -> None:
        # One form from here on: a list, or None for the dataset's.
        self.ways = _as_list(self.ways)
        self.shots = _as_list(self.shots)
        self.instances = tuple(sorted(set(_as_list(self.instances))))
        self.lr = [float(v) for v in _as_list(self.lr)]

    def fill_from(self, source: TaskSource) -> None:
        """Take the data's ways, shots and query where eval.* leaves them unset: `meta-cli eval`
        cannot change dataset.*, so its messages must name eval.* keys only."""
        if getattr(source, "task", None) not in ("classification", "regression"):
            return
        if self.ways is None and source.task == "classification":
            self.ways = [source.ways]
        self.shots = self.shots or [source.shots]
        self.query = self.query if self.query is not None else source.query

    def settings(self, source: TaskSource) -> list[tuple[int, int, int]]:
        """The (ways, shots, query) to evaluate; raises UserError for ones the data cannot give
        (what the model can answer is the algorithm's `check_ways`)."""
        self.check_applies(source.task)
        ways = self.ways or [source.ways]
        shots = self.shots or [source.shots]
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


def _as_list(value: int | list[int] | None) -> list[int] | None:
    if value is None:
        return None
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
             ways: int, shots: int, query: int, world: World = World(), threads: int | None = 1,
             table: EmbeddingTable | None = None) -> Result:
    """Mean query accuracy and loss over `episodes` episodes of `split` drawn from `seed`.

    Each process evaluates its contiguous share of the episode numbers at `threads` intra-op
    threads and the per-episode results are gathered in episode order, so any number of
    processes gives the result of one (at the same `threads`). `table`: the split's cached
    embeddings (eval.cache), which the same episodes are made of.
    """
    losses, accuracies = [], []
    with torch.no_grad(), intra_op_threads(threads), (table.body() if table else contextlib.nullcontext()):
        for index in world.share(episodes):
            episode = (table.episode(index, seed, ways, shots, query) if table
                       else source.episode(split, index, seed, ways, shots, query))
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


def test_rows(algorithm: Algorithm, source: TaskSource, evaluation: EvalSettings,
              identity: dict[str, Any], world: World = World()) -> list[dict[str, Any]]:
    """accuracy.csv rows, one per (ways, shots) of `evaluation`; `identity` names the run
    (algorithm, dataset, backbone, seed, checkpoint). With several processes each meta-tests
    its share of the episodes (`evaluate`)."""
    algorithm.eval()
    rows: list[dict[str, Any]] = []
    settings = evaluation.settings(source)
    table = None
    if evaluation.cache:
        with intra_op_threads(evaluation.threads):
            table = EmbeddingTable(algorithm, source, evaluation.split)
    for ways, shots, query in settings:
        result = evaluate(algorithm, source, evaluation.split, evaluation.episodes,
                          evaluation.seed, ways, shots, query, world, evaluation.threads, table)
        rows.append({
            **identity,
            "ways": ways if source.task == "classification" else None,
            "shots": shots, "query": query, "split": evaluation.split,
            "episodes": result.episodes, "accuracy": result.accuracy, "ci95": result.ci95,
            "loss": result.loss, "_episodes": result,
        })
    return rows


def write_results(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """accuracy.csv, episodes.csv (every episode of every row), and the table on stdout."""
    write_episodes(run_dir / "episodes.csv", [
        {"dataset": r.get("dataset"), "eval_dataset": r.get("eval_dataset"),
         "ways": r["ways"], "shots": r["shots"], "query": r["query"], "split": r["split"],
         "episode": i, "loss": loss,
         "accuracy": r["_episodes"].episode_accuracies[i] if r["_episodes"].episode_accuracies else None}
        for r in rows for i, loss in enumerate(r["_episodes"].episode_losses)])
    write_accuracy(run_dir / "accuracy.csv", rows)
    show(format_table(rows))
