"""Santoro et al.'s protocol (2016, section 4.1, Table 1): `eval.protocol=instances`.

An episode is one sequence of `ways` classes, each shown `max(eval.instances)` times (a
different image of the class each time) in a shuffled order, each image presented with the
label of the step before it (or its own, as the model was trained: MANN's
`delayed_labels`). Every step is scored: the model predicts the image's label from the steps
before it. Accuracy is reported by instance number: the 1st, 2nd, 3rd ... presentation of a
class, over all classes of an episode, mean +- ci95 over `eval.episodes` episodes; written to
instances.csv and printed as a table.

Algorithms that read sequences define `instance_logits(images (B, T, ...), labels (B, T),
ways) -> (B, T, ways)` (MANN).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from meta_cli.data.base import SPLIT_CODES, TaskSource
from meta_cli.errors import UserError
from meta_cli.evaluation.episodes import EvalSettings, intra_op_threads
from meta_cli.evaluation.metrics import mean_ci95
from meta_cli.rundir.outputs import INSTANCE_COLUMNS, text_table, write_csv
from meta_cli.runlog import show
from meta_cli.runtime.distributed import World

#: Sequences per instance_logits call: one batch of B sequences.
CHUNK = 50


def check(algorithm: type, source: TaskSource, evaluation: EvalSettings) -> None:
    """UserError, before anything is built, for an instances meta-test that cannot run: an
    algorithm that does not read sequences, or more presentations of a class than the split
    has images of it."""
    if not hasattr(algorithm, "instance_logits"):
        raise UserError(f"eval.protocol=instances scores a model step by step along a sequence; "
                        f"{algorithm.__name__} does not read sequences (algorithm=mann does). "
                        f"Use eval.protocol=episodes.")
    if source.task != "classification":
        raise UserError("eval.protocol=instances is for classification datasets; use eval.protocol=episodes.")
    presentations = max(evaluation.instances)
    if presentations < 2:
        raise UserError("eval.instances: a class's 1st presentation alone is chance by construction; "
                        "ask for a later one too, e.g. eval.instances=[1,2,3,5,10].")
    per_class = source.images_per_class(evaluation.split)
    if presentations > per_class:
        raise UserError(f"eval.instances asks for the {presentations}th presentation of a class, more than the "
                        f"{per_class} images per class of the {source.title} {evaluation.split} split; use "
                        f"instance numbers <= {per_class}.")
    for ways in evaluation.ways or [source.ways]:
        source.check(evaluation.split, ways, presentations - 1, 1, keys={
            "ways": "eval.ways", "shots": "eval.instances", "query": "eval.instances"}, use="eval.protocol=instances")


def sequence(source: TaskSource, split: str, index: int, seed: int, ways: int,
             presentations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence `index`: images (ways * presentations, ...) and labels (ways * presentations,),
    `presentations` different images of each of `ways` classes in a shuffled order; the same
    arguments give the same sequence."""
    episode = source.episode(split, index, seed, ways, presentations - 1, 1)
    images = torch.cat([episode.support, episode.query])
    labels = torch.cat([episode.support_labels, episode.query_labels])
    order = np.random.default_rng([seed, SPLIT_CODES[split], index, 1]).permutation(len(labels))
    order = torch.as_tensor(order, device=labels.device)
    return images[order], labels[order]


def presentation_numbers(labels: torch.Tensor, ways: int) -> torch.Tensor:
    """labels (B, T) -> (B, T): how many times step t's class has been shown up to and
    including step t (1 at its first presentation)."""
    seen = torch.nn.functional.one_hot(labels, ways).cumsum(dim=1)
    return seen.gather(2, labels[..., None])[..., 0]


def accuracies(logits: torch.Tensor, labels: torch.Tensor, instances: list[int]) -> torch.Tensor:
    """logits (B, T, ways), labels (B, T) -> (B, len(instances)): each sequence's accuracy at
    each instance number, over its classes."""
    correct = (logits.argmax(dim=-1) == labels).double()
    number = presentation_numbers(labels, logits.shape[-1])
    return torch.stack([(correct * (number == k)).sum(1) / (number == k).sum(1) for k in instances], dim=1)


def evaluate(algorithm: Any, source: TaskSource, evaluation: EvalSettings, ways: int,
             world: World = World()) -> list[list[float]]:
    """Per sequence, in order, the accuracy at each of `evaluation.instances`. Each process
    scores its contiguous share of the sequences; they come back in order."""
    presentations = max(evaluation.instances)
    share, rows = list(world.share(evaluation.episodes)), []
    with torch.no_grad(), intra_op_threads(evaluation.threads):
        for start in range(0, len(share), CHUNK):
            drawn = [sequence(source, evaluation.split, i, evaluation.seed, ways, presentations)
                     for i in share[start:start + CHUNK]]
            images, labels = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
            logits = algorithm.instance_logits(images, labels, ways)
            rows += accuracies(logits, labels, evaluation.instances).tolist()
    return world.gather(rows)


def meta_test(algorithm: Any, source: TaskSource, evaluation: EvalSettings, identity: dict[str, Any],
              out: Path, world: World = World()) -> float:
    """instances.csv (one row per (ways, instance)) and its table; returns the accuracy at the
    2nd instance of the first ways (the first instance number asked if 2 is not)."""
    algorithm.eval()
    rows = []
    for ways in evaluation.ways or [source.ways]:
        per_sequence = np.asarray(evaluate(algorithm, source, evaluation, ways, world))
        for column, instance in enumerate(evaluation.instances):
            accuracy, ci95 = mean_ci95(per_sequence[:, column])
            rows.append({**identity, "ways": ways, "presentations": max(evaluation.instances),
                         "instance": instance, "split": evaluation.split, "episodes": evaluation.episodes,
                         "accuracy": accuracy, "ci95": ci95})
    if world.main:
        write_csv(out / "instances.csv", INSTANCE_COLUMNS, rows)
        show(text_table([{"ways": r["ways"], "instance": r["instance"], "split": r["split"],
                          "episodes": r["episodes"],
                          "accuracy": f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} %"} for r in rows]))
    second = [r for r in rows if r["ways"] == rows[0]["ways"] and r["instance"] == 2] or rows
    return second[0]["accuracy"]
