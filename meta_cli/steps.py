"""One outer step of training, as the Trainer asks for it: `step(iteration) -> StepResult`.

How a step feeds the algorithm depends on what it learns from:

- `EpisodeStep`: a meta-batch of numbered episodes (`(iteration - 1) * meta_batch_size + t`).
  Each process takes its contiguous share of those numbers (all of them in one process),
  runs them task by task through `Algorithm.meta_objective` (backend `l2l`) or at once
  through `Algorithm.meta_batch_loss` (backend `vmap`), and backpropagates its share of the
  mean objective; the gradients are summed across processes; the outer optimizer steps.
- `BatchStep`: a numbered mini-batch of (image, class) pairs, for algorithms that learn from
  batches rather than episodes (`pretrain`), split across processes the same way.
- `RolloutStep`: meta-RL, whose algorithms sample their own trajectories and make their own
  outer update (TRPO's line search), in one process.

Whatever the number of processes, the step draws the same episodes and sums the same
per-task gradients, so the run is the same up to the order of float additions.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.distributed import World
from meta_cli.errors import UserError
from meta_cli.settings import TrainSettings


@dataclass
class StepResult:
    """What one outer step reports: mean loss and accuracy (None for regression and RL) over
    its `items` (tasks or images) and any algorithm-specific metrics (RL's returns)."""

    loss: float
    accuracy: float | None
    items: int
    metrics: dict[str, float] = field(default_factory=dict)


def check_loss(loss: float, iteration: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the train loss is {loss} at iteration {iteration} (split train); this step "
                        f"was not applied and the checkpoints so far are intact: lower train.meta_lr "
                        f"or the algorithm's learning rate.")


def apply_gradient(optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor],
                   clip: float | None, iteration: int) -> None:
    """The outer update, unless the gradient is not finite (clipped to `clip` first, if set)."""
    with_grad = [p for p in parameters if p.grad is not None]
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    if not math.isfinite(norm.item()):
        raise UserError(f"the meta-gradient norm is {norm.item()} at iteration {iteration} (split train); "
                        f"this step was not applied and the checkpoints so far are intact: lower "
                        f"train.meta_lr or set train.clip_grad_norm.")
    optimizer.step()


def autocast(device_type: str, bf16: bool) -> Any:
    """bf16 autocast of the forward passes, or nothing (train.precision)."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()


class EpisodeStep:
    """A meta-batch of episodes; this process's share of it (see the module docstring)."""

    def __init__(self, algorithm: Algorithm, source: TaskSource, settings: TrainSettings, seed: int,
                 optimizer: torch.optim.Optimizer, world: World, bf16: bool) -> None:
        self.algorithm, self.source, self.settings, self.seed = algorithm, source, settings, seed
        self.optimizer, self.world, self.bf16 = optimizer, world, bf16
        self.parameters = list(algorithm.parameters())
        self.device_type = self.parameters[0].device.type

    def __call__(self, iteration: int) -> StepResult:
        s, source = self.settings, self.source
        batch = s.meta_batch_size
        ways, query = s.ways or source.ways, s.query or source.query
        # Drawn before the first forward: sampling between one task's backward and the next
        # task's forward measured ~3 % slower (docs/benchmarks.md).
        episodes = [source.episode("train", (iteration - 1) * batch + t, self.seed, ways, source.shots, query)
                    for t in self.world.share(batch)]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device_type, self.bf16):
            loss_sum, accuracy_sum = self._backward(episodes, batch)
        loss_sum, accuracy_sum = self.world.sum([loss_sum, accuracy_sum])
        check_loss(loss_sum, iteration)
        self.world.all_reduce_grads(self.parameters)
        apply_gradient(self.optimizer, self.parameters, s.clip_grad_norm, iteration)
        # Running statistics (resnet12, wrn28): each process saw its share of the tasks, so
        # their average is the estimate over the whole meta-batch (rank 0's alone would drop
        # the others' tasks); every rank then holds the same model.
        self.world.buffers_mean(list(self.algorithm.buffers()))
        classification = source.task == "classification"
        return StepResult(loss_sum / batch, accuracy_sum / batch if classification else None, batch)

    def _backward(self, episodes: list, batch: int) -> tuple[float, float]:
        """Backpropagates this share's part of the mean objective; returns the sums of its
        tasks' query losses and accuracies."""
        if self.algorithm.backend == "vmap":
            loss, accuracy = self.algorithm.meta_batch_loss(episodes)  # means over the share
            share = len(episodes)
            (loss if share == batch else loss * (share / batch)).backward()
            return loss.item() * share, (accuracy.item() * share if accuracy is not None else 0.0)
        loss_sum = accuracy_sum = 0.0
        for episode in episodes:  # one task's graph at a time, freed after its backward
            objective, loss, accuracy = self.algorithm.meta_objective(episode)
            (objective / batch).backward()
            loss_sum += loss.item()
            accuracy_sum += accuracy.item() if accuracy is not None else 0.0
        return loss_sum, accuracy_sum


class BatchStep:
    """A numbered mini-batch of (image, class) pairs (`TaskSource.batch`), split across processes."""

    def __init__(self, algorithm: Algorithm, source: TaskSource, settings: TrainSettings, seed: int,
                 optimizer: torch.optim.Optimizer, world: World, bf16: bool) -> None:
        self.algorithm, self.source, self.settings, self.seed = algorithm, source, settings, seed
        self.optimizer, self.world, self.bf16 = optimizer, world, bf16
        self.parameters = list(algorithm.parameters())
        self.device_type = self.parameters[0].device.type

    def __call__(self, iteration: int) -> StepResult:
        size = self.settings.batch_size
        images, labels = self.source.batch("train", iteration - 1, self.seed, size)
        share = self.world.share(size)
        images, labels = images[share.start:share.stop], labels[share.start:share.stop]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device_type, self.bf16):
            loss, accuracy = self.algorithm.batch_loss(images, labels)  # means over the share
        (loss if len(share) == size else loss * (len(share) / size)).backward()
        loss_sum, accuracy_sum = self.world.sum([loss.item() * len(share), accuracy.item() * len(share)])
        check_loss(loss_sum, iteration)
        self.world.all_reduce_grads(self.parameters)
        apply_gradient(self.optimizer, self.parameters, self.settings.clip_grad_norm, iteration)
        self.world.buffers_mean(list(self.algorithm.buffers()))
        return StepResult(loss_sum / size, accuracy_sum / size, size)


class RolloutStep:
    """Meta-RL: the algorithm samples a meta-batch of tasks' trajectories and updates itself."""

    def __init__(self, algorithm: Any, source: Any, settings: TrainSettings, seed: int) -> None:
        self.algorithm, self.source, self.settings, self.seed = algorithm, source, settings, seed

    def __call__(self, iteration: int) -> StepResult:
        batch = self.settings.meta_batch_size
        tasks = self.source.tasks("train", range((iteration - 1) * batch, iteration * batch), self.seed)
        metrics = self.algorithm.meta_step(tasks, iteration, self.seed)
        return StepResult(metrics.get("loss_after", math.nan), None, batch, metrics)


StepFactory = Callable[[int], StepResult]
