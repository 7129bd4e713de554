"""Baseline: one policy trained on all tasks together, adapted only at test time.

Each iteration samples the same tasks as MAML and as many trajectories per task as MAML uses
to learn from ((adaptation_steps + 1) * n, all with the current policy), fits each task's
baseline and takes one TRPO (or PPO) step on the pooled surrogate, with no inner loop. At
test time it adapts with MAML's inner loop (fast_lr, vanilla policy gradient).

return_post in its metrics is a diagnostic: one inner step on the task's first n trajectories,
then n more trajectories; they are not trained on.
"""
from __future__ import annotations

import time

import torch
from torch.distributions import Normal

from meta_cli.rl import ppo, trpo
from meta_cli.rl.meta_batch import Stacked
from meta_cli.rl.outer import TRPOOuter
from meta_cli.rl.policy import GaussianMLP
from meta_cli.rl.rollout import Rollout
from meta_cli.rl.tasks import RLTask


class PretrainRL(TRPOOuter):
    """TRPOOuter's keys: no inner loop to train through (no first_order, no backend)."""

    def pooled(self, batch: Stacked, old: list[Normal | None], rows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(TRPO surrogate, PPO clipped surrogate, KL) of the policy itself, averaged over the
        tasks, on all steps or on `rows` of them. `old[0]`: the policy the step started from."""
        if old[0] is None:
            with torch.no_grad():
                old[0] = self.policy(batch.obs)
        reference = old[0]
        if rows is not None:
            batch = batch.select(rows)
            reference = Normal(reference.loc[:, rows], reference.scale[:, rows], validate_args=False)
        dist = self.policy(batch.obs)  # the tasks share the weights: one pass over (G, m, d)
        log_probs = GaussianMLP.log_prob(dist, batch.actions)
        old_log_probs = GaussianMLP.log_prob(reference, batch.actions)
        surrogate = -batch.mean(torch.exp(log_probs - old_log_probs) * batch.advantages).mean()
        clipped = -batch.mean(ppo.clipped_objective(log_probs, old_log_probs, batch.advantages,
                                                    self.ppo_clip)).mean()
        kl = batch.mean(GaussianMLP.kl(reference, dist)).mean()
        return surrogate, clipped, kl

    @torch.enable_grad()
    def meta_step(self, tasks: list[RLTask], iteration: int, seed: int) -> dict[str, float]:
        start = time.perf_counter()
        self._rollout_s = 0.0
        seed_fn = self.train_seeds(seed, iteration)
        policies = [self.policy] * len(tasks)
        batches = [self.sample(policies, tasks, k, seed_fn) for k in range(self.adaptation_steps + 1)]
        # The diagnostic: adapt on the first batch, sample once more (seeds after the training ones).
        learners = [self.adapted([rollout], second_order=False) for rollout in batches[0]]
        post = self.sample(learners, tasks, self.adaptation_steps + 1, seed_fn)
        self.check_returns([*batches, post], tasks, iteration)
        metrics = self.step_metrics([batches[0], post], start)
        pooled = Stacked.of(self.set_advantages([Rollout.cat(per_task) for per_task in zip(*batches)]))
        old: list[Normal | None] = [None]
        params = list(self.parameters())
        if self.outer == "trpo":
            surrogate, _, _ = self.pooled(pooled, old)

            def fisher():
                kl = self.pooled(pooled, old, pooled.rows(self.fisher_subsample))[2]
                return trpo.hessian_vector_product(kl, params)

            def evaluate() -> tuple[float, float]:
                with torch.no_grad():
                    loss, _, kl_value = self.pooled(pooled, old)
                return float(loss), float(kl_value)

            stats = trpo.trpo_step(params, surrogate, fisher, evaluate, self.max_kl, self.cg_iterations,
                                   self.cg_damping, self.ls_steps, self.ls_backtrack)
        else:
            stats = ppo.ppo_steps(params, self.optimizer, lambda: self.pooled(pooled, old)[1], self.ppo_epochs)
            with torch.no_grad():
                _, loss_after, kl = self.pooled(pooled, old)
            stats.update(loss_after=float(loss_after), kl=float(kl))
        metrics.update(stats)
        metrics["step_s"] = time.perf_counter() - start
        return metrics
