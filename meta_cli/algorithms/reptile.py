"""Reptile (Nichol et al., 2018): move the initialisation towards task-adapted weights."""
from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
from torch import nn

from meta_cli.algorithms.base import Algorithm, Task
from meta_cli.data.base import Episode
from meta_cli.params import Ge, Gt


class Reptile(Algorithm):
    """Inner loop: `inner_steps` SGD (or Adam) steps from the meta-weights theta on all of a task's
    labelled images (support and query together, Reptile's "train shots"), giving phi.
    Outer step: theta <- theta + meta_step_size * mean over tasks of (phi - theta).

    The outer step is plain SGD of learning rate `meta_step_size` on the gradient
    (theta - phi), so train.meta_lr does not apply; train.lr_schedule=cosine or linear (as
    Nichol et al.) anneals the meta step size towards 0. At test time the same inner loop
    adapts on the support set only (`test_inner_steps` steps).
    """

    fixed_ways = True

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        inner_lr: Annotated[float, Gt(0)] = 0.05,
        inner_steps: Annotated[int, Ge(1)] = 5,
        test_inner_steps: Annotated[int, Ge(0)] = 10,
        meta_step_size: Annotated[float, Gt(0)] = 1.0,
        inner_optimizer: Literal["sgd", "adam"] = "sgd",
        inner_batch: Annotated[int, Ge(0)] = 10,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, outputs))
        self.inner_lr, self.inner_steps, self.test_inner_steps = inner_lr, inner_steps, test_inner_steps
        self.meta_step_size = meta_step_size
        self.inner_optimizer = inner_optimizer
        self.inner_batch = inner_batch

    def meta_optimizer(self, meta_lr: float, body_lr_scale: float = 1.0) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.meta_step_size)

    def adapted(self, inputs: torch.Tensor, labels: torch.Tensor, steps: int,
                generator: torch.Generator | None = None) -> nn.Module:
        """A copy of the model after `steps` steps on (inputs, labels); the meta-weights are
        untouched."""
        return self.inner_loop(inputs, labels, steps, generator)[0]

    def inner_loop(self, inputs: torch.Tensor, labels: torch.Tensor, steps: int,
                   generator: torch.Generator | None = None) -> tuple[nn.Module, torch.Tensor | None, torch.Tensor | None]:
        """The adapted copy, and the last step's output and labels (its minibatch, before that
        step's update; None after 0 steps). Adam has beta1 = 0, as in Nichol et al., and a fresh
        state per task. Their code keeps Adam's second moment across tasks and into test time
        (openai/supervised-reptile#28); that variant measured no better here (docs/results.md)."""
        learner = copy.deepcopy(self.model)
        optimizer = (torch.optim.SGD(learner.parameters(), lr=self.inner_lr) if self.inner_optimizer == "sgd"
                     else torch.optim.Adam(learner.parameters(), lr=self.inner_lr, betas=(0.0, 0.999)))
        output = target = None
        with torch.enable_grad():
            for batch in self.minibatches(len(inputs), steps, inputs.device, generator):
                optimizer.zero_grad(set_to_none=True)
                output, target = learner(inputs[batch]), labels[batch]
                self.loss(output, target).backward()
                optimizer.step()
                # Under train.precision=bf16, autocast caches the bf16 copy of each leaf weight
                # until its region ends: without this every step would reuse the first step's
                # weights and the inner loop would not learn.
                torch.clear_autocast_cache()
        return learner, (None if output is None else output.detach()), target

    def minibatches(self, n: int, steps: int, device: torch.device,
                    generator: torch.Generator | None = None) -> list[torch.Tensor | slice]:
        """Which of the task's n images each inner step uses. Nichol et al. (section 6) find
        that Reptile learns from the inner steps seeing *different* minibatches (the gradient
        inner products between them): consecutive chunks of `inner_batch` from a shuffled
        order, reshuffled when used up. inner_batch 0, or >= n: every step sees all n."""
        if self.inner_batch == 0 or self.inner_batch >= n:
            return [slice(None)] * steps
        passes = -(-steps * self.inner_batch // n)
        order = torch.cat([torch.randperm(n, device=device, generator=generator) for _ in range(passes)])
        return [order[i * self.inner_batch:(i + 1) * self.inner_batch] for i in range(steps)]

    def meta_objective(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Objective 1/2 * ||theta - phi||^2, whose gradient is (theta - phi). The reported loss
        and accuracy are the last inner step's, on its minibatch before its update: a fit
        measure that costs nothing (another forward pass on the query images cost ~9 % of
        the step)."""
        inputs = torch.cat([episode.support, episode.query])
        labels = torch.cat([episode.support_labels, episode.query_labels])
        learner, output, target = self.inner_loop(inputs, labels, self.inner_steps, episode.generator())
        objective = sum(0.5 * (theta - phi.detach()).pow(2).sum()
                        for theta, phi in zip(self.model.parameters(), learner.parameters()))
        return objective, self.loss(output, target), self.accuracy(output, target)

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        learner = self.adapted(episode.support, episode.support_labels,
                               self.inner_steps if training else self.test_inner_steps, episode.generator())
        return learner(episode.query)
