"""The continual evaluation protocol (eval.protocol=continual; Javed & White 2019, Beaulieu et
al. 2020): classes learned one after another, one image per SGD step, then tested on all of them.

A stream of C classes: stream number s of `split` is episode s of that split with
max(eval.classes) ways, eval.stream_shots training and eval.heldout held-out images per class
(`TaskSource.episode`: a seeded class order and seeded images); its first C classes are the
stream of length C, so a longer schedule extends a shorter one. The adaptable part of the model
(`StreamLearner`: OML's head, ANML's prediction network; for any other model with a backbone, a
fresh linear layer on its frozen embeddings) starts with zero rows for the C classes and takes
one SGD step per training image, class after class, each image once: no replay, no second pass.
After the stream: accuracy over the C classes on their held-out images (`heldout`) and on the
stream's own training images (`stream`), separate rows, mean +- ci95 over eval.streams streams.

Several rates (eval.lr a list): every rate runs on the meta-validation split's streams, and
the best held-out accuracy picks the rate of each schedule length for the test streams (never
chosen on the test streams). A rate whose stream meets a non-finite loss is that rate's
`diverged` row, not a crash.

Speed: the streams and rates of one schedule length run as one computation, `torch.func.vmap`
over (stream, rate) of the same pure function of one stream (`learn_stream_once`) that the
plain loop calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from hydra.utils import get_object
from torch.func import grad_and_value, vmap

import numpy as np

from meta_cli.algorithms.continual import FrozenEmbedding, Features, Params, Scratch, StreamLearner, take
from meta_cli.data.base import Split, TaskSource
from meta_cli.errors import UserError
from meta_cli.evaluation.metrics import mean_ci95
from meta_cli.models.base import Backbone
from meta_cli.rundir.outputs import text_table, write_continual
from meta_cli.runlog import show

if TYPE_CHECKING:
    from meta_cli.evaluation.episodes import EvalSettings


# -- the pre-flight ---------------------------------------------------------------------------
def check(algorithm: dict[str, Any], source: TaskSource, evaluation: "EvalSettings") -> None:
    """UserError for a continual evaluation this model or this data cannot give."""
    cls = get_object(algorithm["_target_"])
    blocker = cls.continual_blocker(**{k: v for k, v in algorithm.items() if not k.startswith("_")})
    if blocker:
        raise UserError(f"eval.protocol=continual needs a model with a backbone: {blocker}; use eval.protocol=episodes.")
    if source.task == "regression":
        return  # incremental regression: functions are drawn fresh, as many as asked
    if source.task != "classification":
        raise UserError(f"eval.protocol=continual learns classes or functions; dataset {type(source).__name__} is "
                        f"{source.task}: use eval.protocol=episodes.")
    longest = max(evaluation.classes)
    splits = [evaluation.split] + (["val"] if len(evaluation.lr) > 1 else [])
    for split in splits:
        n = source.num_classes(split)
        if longest > n:
            why = " (where several eval.lr are compared)" if split != evaluation.split else ""
            raise UserError(f"eval.classes={evaluation.classes} asks for {longest} classes but the {source.title} "
                            f"{split} split{why} has {n}; use eval.classes up to {n}.")
        per_class = source.images_per_class(split)
        needed = evaluation.stream_shots + evaluation.heldout
        if needed > per_class:
            raise UserError(f"eval.stream_shots + eval.heldout = {evaluation.stream_shots} + {evaluation.heldout} = "
                            f"{needed} is more than the {per_class} images per class of the {source.title} {split} "
                            f"split; lower them to a sum of {per_class}.")


def learner_of(model: torch.nn.Module, learner: str = "model", seed: int = 0) -> StreamLearner:
    """The model's own learner (OML, ANML), else a fresh linear head on its backbone's frozen
    embeddings (the first Backbone module inside it: MAML's, ProtoNet's, pretrain's); for
    eval.learner=scratch a fresh network of that backbone's architecture (seeded by `seed`)."""
    backbone = next((m for m in model.modules() if isinstance(m, Backbone)), None)
    if learner == "scratch" and backbone is not None:
        return Scratch(backbone, seed).to(next(backbone.parameters()).device)
    if hasattr(model, "stream_logits"):
        return model  # type: ignore[return-value]
    if backbone is None:
        raise UserError(f"eval.protocol=continual needs a model with a backbone; {type(model).__name__} has "
                        f"none. Use eval.protocol=episodes.")
    return FrozenEmbedding(backbone)


# -- one stream ----------------------------------------------------------------------------------
@dataclass
class Stream:
    """One stream's data: the fixed part's features of its training images, in stream order
    (class after class), their labels (T,), and of its held-out images, labels (H,)."""

    train: Features
    train_labels: torch.Tensor
    heldout: Features
    heldout_labels: torch.Tensor
    #: Regression (incremental sine): the values (T,) and (H,) output `label` must give; None
    #: for classification.
    train_targets: torch.Tensor | None = None
    heldout_targets: torch.Tensor | None = None


#: Function k of regression stream s is episode s * FUNCTIONS_PER_STREAM + k of the split, so a
#: longer schedule extends a shorter one.
FUNCTIONS_PER_STREAM = 10**6


def draw_functions(source: TaskSource, learner: StreamLearner, split: Split, index: int, seed: int,
                   longest: int, shots: int, heldout: int) -> tuple[Features, ...]:
    """Incremental regression (OML's incremental sine): stream `index` is `longest` functions
    (episodes of `split`), `shots` points of each learned in function order then `heldout`
    held-out points of each. Output k of the adaptable part is function k: features of the
    training points, their function ids, values, and the same of the held-out points."""
    episodes = [source.episode(split, index * FUNCTIONS_PER_STREAM + k, seed, 1, shots, heldout)
                for k in range(longest)]
    inputs = torch.cat([torch.cat([e.support for e in episodes]), torch.cat([e.query for e in episodes])])
    with torch.no_grad():
        features = learner.stream_features(inputs)
    n = longest * shots
    device = episodes[0].support.device
    ids = lambda per: torch.arange(longest, device=device).repeat_interleave(per)  # noqa: E731
    return (take(features, slice(0, n)), ids(shots), take(features, slice(n, None)), ids(heldout),
            torch.cat([e.support_labels[:, 0] for e in episodes]), torch.cat([e.query_labels[:, 0] for e in episodes]))


def draw(source: TaskSource, learner: StreamLearner, split: Split, index: int, seed: int, longest: int,
         shots: int, heldout: int) -> tuple[Features, ...]:
    """Stream `index` of `split` at its full length (regression: `draw_functions`): features of the training images
    (longest * shots, class-major), their classes (0..longest-1), features of the held-out images
    and their classes. The fixed part runs once over all of them (batch norm's batch: the whole
    stream, as an episode's support and query)."""
    if source.task == "regression":
        return draw_functions(source, learner, split, index, seed, longest, shots, heldout)
    episode = source.episode(split, index, seed, longest, shots, heldout)
    with torch.no_grad():
        features = learner.stream_features(torch.cat([episode.support, episode.query]))
    n = len(episode.support)
    return (take(features, slice(0, n)), episode.support_labels, take(features, slice(n, None)),
            episode.query_labels)


def cut(full: tuple[Features, ...], classes: int, shots: int, heldout: int) -> Stream:
    """The stream of the first `classes` classes (functions) of a full-length one."""
    train, train_labels, held, held_labels, *targets = full
    t, h = classes * shots, classes * heldout
    return Stream(take(train, slice(0, t)), train_labels[:t], take(held, slice(0, h)), held_labels[:h],
                  *([targets[0][:t], targets[1][:h]] if targets else []))


#: The stream of the oracle's shuffled epochs: after episode_rng's split codes and the batches' 3.
ORACLE_STREAM = 4


def oracle(stream: Stream, epochs: int, seed: int, index: int, classes: int) -> Stream:
    """The oracle's sequence: the stream's training images i.i.d., `epochs` shuffled epochs
    (each a permutation drawn from (seed, stream index, classes)), the held-out images as they
    are. Accuracy on the sequence is accuracy on the stream's images (each appears `epochs` times)."""
    rng = np.random.default_rng([seed, ORACLE_STREAM, index, classes])
    n = len(stream.train_labels)
    order = torch.from_numpy(np.concatenate([rng.permutation(n) for _ in range(epochs)])).to(stream.train_labels.device)
    return Stream(take(stream.train, order), stream.train_labels[order], stream.heldout, stream.heldout_labels,
                  None if stream.train_targets is None else stream.train_targets[order], stream.heldout_targets)


def _outputs(learner: StreamLearner, params: Params, features: Features, labels: torch.Tensor,
             targets: torch.Tensor | None) -> torch.Tensor:
    """Classification: the (n, classes) logits. Regression: output labels[i] of each point, (n,)."""
    out = learner.stream_logits(params, features)
    if targets is None:
        return out
    # A one-hot product, not gather: vmap's gather over (stream, rate) with an index batched on
    # the streams only mixed the rates up (torch 2.14).
    picks = labels[..., None] == torch.arange(out.shape[-1], device=out.device)
    return (out * picks.to(out.dtype)).sum(-1)


def squared_error(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean squared error, from primitive ops: F.mse_loss under vmap over (stream, rate) with
    targets batched on the streams only mismatched the rates' dimension (torch 2.14)."""
    return (out - targets).pow(2).mean()


def _loss(learner: StreamLearner, params: Params, features: Features, labels: torch.Tensor,
          targets: torch.Tensor | None) -> torch.Tensor:
    out = _outputs(learner, params, features, labels, targets)
    return F.cross_entropy(out, labels) if targets is None else squared_error(out, targets)


def learn_stream_once(learner: StreamLearner, start: Params, train: Features, train_labels: torch.Tensor,
                      heldout: Features, heldout_labels: torch.Tensor, lr: torch.Tensor,
                      train_targets: torch.Tensor | None = None, heldout_targets: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stream at one rate, a pure function (vmap maps it over streams and rates): one SGD step
    per training image (point) in order from `start`, then the score on the held-out images and on
    the training images (scalars: accuracy; regression, with targets: the MSE), and whether any
    step's loss was not finite (bool scalar)."""
    step = grad_and_value(partial(_loss, learner))
    params, diverged = start, torch.zeros((), dtype=torch.bool, device=train_labels.device)
    for i in range(train_labels.shape[-1]):
        target = None if train_targets is None else train_targets[i:i + 1]
        grads, loss = step(params, take(train, slice(i, i + 1)), train_labels[i:i + 1], target)
        params = {n: p - lr * grads[n] for n, p in params.items()}
        diverged = diverged | ~torch.isfinite(loss)

    def score(features: Features, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        out = _outputs(learner, params, features, labels, targets)
        if targets is None:
            return (out.argmax(-1) == labels).float().mean()
        return squared_error(out, targets)

    return score(heldout, heldout_labels, heldout_targets), score(train, train_labels, train_targets), diverged


def _start(learner: StreamLearner, classes: int) -> Params:
    return {n: p.detach() for n, p in learner.stream_start(classes).items()}


def run_looped(learner: StreamLearner, streams: list[Stream], classes: int, lrs: list[float]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(streams, rates) held-out accuracies, stream accuracies and divergence flags, stream by
    stream and rate by rate (the reference of `run_batched`)."""
    start = _start(learner, classes)
    out = [[learn_stream_once(learner, start, s.train, s.train_labels, s.heldout, s.heldout_labels,
                              torch.tensor(lr, device=s.train_labels.device), s.train_targets, s.heldout_targets)
            for lr in lrs] for s in streams]
    return tuple(torch.stack([torch.stack([cell[k] for cell in row]) for row in out]) for k in range(3))  # type: ignore[return-value]


def _stack(parts: list[Features]) -> Features:
    if isinstance(parts[0], tuple):
        return tuple(torch.stack(group) for group in zip(*parts))
    return torch.stack(parts)


def run_batched(learner: StreamLearner, streams: list[Stream], classes: int, lrs: list[float]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`run_looped`'s results from one vmapped computation over streams and rates."""
    start = _start(learner, classes)
    device = streams[0].train_labels.device
    rates = torch.tensor(lrs, device=device, dtype=next(iter(start.values())).dtype)
    one = partial(learn_stream_once, learner, start)
    regression = streams[0].train_targets is not None
    targets = ((torch.stack([s.train_targets for s in streams]), torch.stack([s.heldout_targets for s in streams]))
               if regression else ())
    over_rates = vmap(one, in_dims=(None, None, None, None, 0) + (None, None) * regression)
    over_streams = vmap(over_rates, in_dims=(0, 0, 0, 0, None) + (0, 0) * regression)
    return over_streams(_stack([s.train for s in streams]), torch.stack([s.train_labels for s in streams]),
                        _stack([s.heldout for s in streams]), torch.stack([s.heldout_labels for s in streams]),
                        rates, *targets)


# -- the protocol ----------------------------------------------------------------------------
def schedule_results(model: torch.nn.Module, source: TaskSource, split: Split, evaluation: "EvalSettings",
                     rates: dict[int, list[float]], batched: bool = True) -> dict[int, tuple[torch.Tensor, ...]]:
    """For each schedule length C (a key of `rates`): (streams, rates[C]) held-out and stream
    scores and divergence flags on `split`'s streams, every length cut from the same streams of
    max(eval.classes) classes."""
    learner = learner_of(model, evaluation.learner, evaluation.seed)
    longest = max(evaluation.classes)
    full = [draw(source, learner, split, s, evaluation.seed, longest, evaluation.stream_shots, evaluation.heldout)
            for s in range(evaluation.streams)]
    run = run_batched if batched else run_looped
    results = {}
    for classes in sorted(rates):
        streams = [cut(f, classes, evaluation.stream_shots, evaluation.heldout) for f in full]
        if evaluation.learner == "oracle":
            streams = [oracle(s, evaluation.oracle_epochs, evaluation.seed, i, classes) for i, s in enumerate(streams)]
        results[classes] = tuple(t.cpu() for t in run(learner, streams, classes, rates[classes]))
    return results


def _rows(classes: int, held: torch.Tensor, stream: torch.Tensor, diverged: torch.Tensor, lr: float,
          split: str, identity: dict[str, Any]) -> list[dict[str, Any]]:  # identity: with the learner
    """The heldout and stream rows of one rate: (streams,) accuracies and flags."""
    rows = []
    failed = bool(diverged.any())
    metric = "loss" if identity.get("task") == "regression" else "accuracy"
    for kind, values in (("heldout", held), ("stream", stream)):
        mean, ci = (math.nan, math.nan) if failed else mean_ci95(values.tolist())
        rows.append({**identity, "classes": classes, "split_kind": kind, metric: mean, "ci95": ci,
                     "streams": len(values), "eval_lr": lr, "split": split,
                     "status": "diverged" if failed else "ok"})
    return rows


def continual_rows(model: torch.nn.Module, source: TaskSource, evaluation: "EvalSettings",
                   identity: dict[str, Any]) -> list[dict[str, Any]]:
    """continual.csv's rows: with several rates, every rate's val rows, then the test rows of
    the rate each schedule length chose on val; with one rate, its test rows."""
    model.eval()
    identity = {**{k: identity.get(k) for k in ("algorithm", "dataset", "backbone", "seed", "checkpoint")},
                "learner": evaluation.learner, "task": source.task}
    lrs = list(evaluation.lr)
    rows: list[dict[str, Any]] = []
    chosen = {c: lrs[0] for c in evaluation.classes}
    if len(lrs) > 1:
        every = {c: lrs for c in evaluation.classes}
        for classes, (held, stream, diverged) in schedule_results(model, source, "val", evaluation, every).items():
            scores = []
            for j, lr in enumerate(lrs):
                rows += _rows(classes, held[:, j], stream[:, j], diverged[:, j], lr, "val", identity)
                score = held[:, j].mean().item() * (-1 if source.task == "regression" else 1)
                scores.append(-math.inf if diverged[:, j].any() or not math.isfinite(score) else score)
            chosen[classes] = lrs[max(range(len(lrs)), key=lambda j: scores[j])]
    test_rows = []
    results = schedule_results(model, source, evaluation.split, evaluation,
                               {c: [chosen[c]] for c in evaluation.classes})
    for classes, (held, stream, diverged) in results.items():
        test_rows += _rows(classes, held[:, 0], stream[:, 0], diverged[:, 0], chosen[classes], evaluation.split,
                           identity)
    return rows + sorted(test_rows, key=lambda r: r["classes"])


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """continual.csv and the test rows on the terminal."""
    write_continual(out / "continual.csv", rows)
    shown = [{"classes": r["classes"], "split_kind": r["split_kind"], "split": r["split"], "learner": r["learner"],
              "result": "diverged" if r["status"] != "ok" else (
                  f"MSE {r['loss']:.4f} +- {r['ci95']:.4f}" if r.get("task") == "regression"
                  else f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} %"),
              "streams": r["streams"], "eval_lr": r["eval_lr"]}
             for r in rows if r["split"] != "val"]
    show(text_table(shown))


def headline(rows: list[dict[str, Any]]) -> float:
    """The held-out accuracy of the longest schedule on the test streams (nan if it diverged)."""
    tests = [r for r in rows if r["split"] != "val" and r["split_kind"] == "heldout"]
    return tests[-1].get("accuracy", tests[-1].get("loss", math.nan)) if tests else math.nan
