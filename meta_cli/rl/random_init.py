"""Baseline: adaptation from a random initialisation (no meta-training).

The policy keeps its seeded initial weights; at test time it adapts with the same inner loop
as MAML. Its `meta_step` samples and adapts, and updates nothing, so that a run's metrics.csv
shows the returns a learner without meta-training starts from and reaches.
"""
from __future__ import annotations

import time

import torch

from meta_cli.rl.base import RLAlgorithm
from meta_cli.rl.tasks import RLTask


class RandomInitRL(RLAlgorithm):

    @torch.enable_grad()
    def meta_step(self, tasks: list[RLTask], iteration: int, seed: int) -> dict[str, float]:
        start = time.perf_counter()
        self._rollout_s = 0.0
        rollouts = self.adapt_and_sample(tasks, self.adaptation_steps, self.train_seeds(seed, iteration))
        self.check_returns(rollouts, tasks, iteration)
        nothing = {"loss_before": float("nan"), "loss_after": float("nan"), "kl": 0.0}
        return {**self.step_metrics(rollouts, start), **nothing}
