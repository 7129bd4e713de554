"""The contract between the training loop and a meta-learning algorithm."""
from __future__ import annotations

import abc
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.data.base import Episode
from meta_cli.errors import UserError

Task = Literal["classification", "regression"]


def full_precision(embeddings: torch.Tensor) -> torch.autocast:
    """Turns train.precision=bf16 autocast off for a metric head: distances, attention and the
    SVM's QP (whose LU has no bfloat16 kernel) run in float32 on float32 embeddings."""
    return torch.autocast(embeddings.device.type, enabled=False)


class Algorithm(nn.Module, abc.ABC):
    """A meta-learner whose parameters are the meta-parameters (what Adam updates).

    Subclasses take the backbone (an nn.Module with `out_features`), the task kind and the
    number of outputs (ways) from the engine, and their hyperparameters from the config.
    """

    injected = ("backbone", "task", "outputs")
    tasks: tuple[Task, ...] = ("classification", "regression")
    #: True when the model's output layer fixes the number of ways (MAML's head).
    fixed_ways = False

    def __init__(self, backbone: nn.Module, task: Task, outputs: int) -> None:
        super().__init__()
        self.check_task(task)
        self.task = task
        self.outputs = outputs

    @classmethod
    def check_task(cls, task: Task) -> None:
        if task not in cls.tasks:
            raise UserError(
                f"algorithm {cls.__name__} does only {' and '.join(cls.tasks)}; "
                f"this dataset is {task}. Pick another algorithm or dataset."
            )

    def check_ways(self, ways: int, key: str) -> None:
        """Raise UserError when this model cannot answer `ways`-way episodes; `key` names the
        setting that asks for them (e.g. "eval.ways"). Fixed heads are checked by the engine
        (`fixed_ways`); this is for other limits, such as MANN's one-hot label input."""

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """Adapt to `episode.support` (and `support_labels`), then return the model's output
        on `episode.query`: (n_query, ways) logits for classification, (n_query, 1)
        predictions for regression. `episode.query_labels` is not read, so prediction on
        unlabelled images shares this path with meta-training and meta-testing.

        `training` selects the meta-training inner loop (e.g. second-order) versus the
        test-time one.
        """
        # Not abstract: a model that only defines episode_loss (a test double) is still valid.
        raise NotImplementedError(f"{type(self).__name__} does not define query_logits")

    def episode_loss(self, episode: Episode, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query loss (scalar) and query accuracy (scalar; None for regression) after
        adapting to the support set, from `query_logits`."""
        output = self.query_logits(episode, training)
        return self.loss(output, episode.query_labels), self.accuracy(output, episode.query_labels)

    def meta_objective(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Meta-training on one episode: (objective whose gradient is this task's share of the
        meta-gradient, query loss to report, query accuracy to report). For gradient-based
        meta-learners the objective is the query loss itself; Reptile's is not."""
        loss, accuracy = self.episode_loss(episode, training=True)
        return loss, loss, accuracy

    def meta_optimizer(self, meta_lr: float) -> torch.optim.Optimizer:
        """The outer optimizer: Adam on every meta-parameter (learn2learn's examples)."""
        return torch.optim.Adam(self.parameters(), lr=meta_lr)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def accuracy(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        if self.task != "classification":
            return None
        return (output.argmax(dim=1) == target).float().mean()
