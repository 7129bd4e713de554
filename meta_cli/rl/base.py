"""What the meta-RL algorithms share: the policy, the inner loop, sampling, evaluation.

The contract with the engine (the RL counterpart of `meta_cli.algorithms.base.Algorithm`):

- constructor `(source, **hyperparameters)`: `source` (an `RLTaskSource`, from the dataset
  group) is injected; every other parameter is a config key with an `Annotated` range.
- `state_dict()` holds every tensor needed to resume (the policy with its log-std);
  `outer_state_dict()` / `load_outer_state_dict()` the outer optimiser's (PPO's Adam; empty
  for TRPO).
- `meta_step(tasks, iteration, seed) -> dict[str, float]`: one complete outer update on a
  meta-batch of tasks. All randomness comes from (seed, iteration, task split and index,
  adaptation step), so a step is a pure function of (weights, outer state, seed, iteration,
  tasks): resuming replays nothing. It raises UserError before any weight changes when a return
  or the surrogate is not finite.
- `evaluate(tasks, steps, seed) -> {steps: [mean return of each task]}`: returns after 0, 1, ...
  adaptation steps, a pure function of (weights, tasks, seed).

"Pure" holds for a fixed torch thread count: with 2 intra-op threads instead of 1 the batched
matrix products round differently (a navigation2d meta-step's weights then differ by ~1e-3), so
resuming and re-evaluating bit for bit need the thread count of the original run.
"""
from __future__ import annotations

import math
import time
from typing import Annotated, Callable, Sequence

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt
from meta_cli.rl import advantages as adv
from meta_cli.rl import baseline
from meta_cli.rl.policy import Activation, GaussianMLP
from meta_cli.rl.rollout import (
    EVAL_STREAM,
    TRAIN_STREAM,
    Rollout,
    rollout_seeds,
    sample,
)
from meta_cli.rl.tasks import RLTask, RLTaskSource

SeedFn = Callable[[RLTask, int], tuple[list[int], int]]
#: What every algorithm's meta_step reports (others may follow, e.g. TRPO's step_fraction):
#: mean return before and after adaptation over the meta-batch, the outer loss before and
#: after the update (nan where there is none), the KL of the update, the policy's mean std,
#: and the seconds spent sampling within the step's seconds.
CORE_METRICS = ("return_pre", "return_post", "loss_before", "loss_after", "kl", "policy_std",
                "rollout_s", "step_s")


class RLAlgorithm(nn.Module):
    """A Gaussian MLP policy wrapped by learn2learn's MAML, adapted by vanilla policy gradient."""

    injected = ("source",)
    tasks: tuple[str, ...] = ("rl",)
    #: How it learns (see meta_cli.engine.regimes): it samples its own rollouts.
    regime = "meta_cli.engine.regimes.rollouts.Rollouts"

    def __init__(
        self,
        source: RLTaskSource,
        fast_lr: Annotated[float, Gt(0)] = 0.1,
        adaptation_steps: Annotated[int, Ge(1)] = 1,
        hidden: list[Annotated[int, Ge(1)]] = (100, 100),
        activation: Activation = "tanh",
        init_std: Annotated[float, Gt(0)] = 1.0,
        normalize_advantages: bool = True,
    ) -> None:
        super().__init__()
        self.check_task(source.task)
        self.source = source
        policy = GaussianMLP(source.observation_dim, source.action_dim, tuple(hidden), activation, init_std)
        # The policy lives inside the learner only, so state_dict() holds it once.
        self.maml = l2l.algorithms.MAML(policy, lr=fast_lr)
        self.fast_lr = fast_lr
        self.adaptation_steps = adaptation_steps
        self.normalize_advantages = normalize_advantages
        self._rollout_s = 0.0  # seconds spent sampling since the last meta_step / evaluate began

    @classmethod
    def check_task(cls, task: str) -> None:
        if task not in cls.tasks:
            raise UserError(
                f"algorithm {cls.__name__} is reinforcement learning and needs an environment "
                f"(dataset=navigation2d, halfcheetah_dir or halfcheetah_vel); this dataset is "
                f"{task}. Pick another algorithm or dataset."
            )

    @property
    def policy(self) -> GaussianMLP:
        return self.maml.module

    # -- outer optimiser state, kept apart from the weights -------------------------------
    def outer_state_dict(self) -> dict:
        return {}

    def load_outer_state_dict(self, state: dict) -> None:
        pass

    # -- the inner loop -------------------------------------------------------------------
    def set_advantages(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """Fit each task's linear baseline on its returns, then GAE (normalised per task if
        configured). The recursions over time run once for all tasks, side by side."""
        s = self.source
        rewards = torch.cat([r.rewards for r in rollouts], dim=1)
        mask = torch.cat([r.mask for r in rollouts], dim=1)
        returns = adv.discounted_returns(rewards, mask, s.gamma).split([r.rewards.shape[1] for r in rollouts], 1)
        values = torch.cat([baseline.fit_predict(r.obs, ret, r.mask) for r, ret in zip(rollouts, returns)], dim=1)
        advantages = adv.gae(rewards, values, mask, s.gamma, s.gae_lambda)
        for rollout, a in zip(rollouts, advantages.split([r.rewards.shape[1] for r in rollouts], 1)):
            rollout.advantages = adv.normalize(a, rollout.mask) if self.normalize_advantages else a
        return list(rollouts)

    @staticmethod
    def pg_loss(learner: nn.Module, rollout: Rollout) -> torch.Tensor:
        """The vanilla policy-gradient loss -mean_t log pi(a_t | s_t) A_t over the masked steps."""
        log_probs = GaussianMLP.log_prob(learner(rollout.obs), rollout.actions)
        return -(log_probs * rollout.advantages * rollout.mask).sum() / rollout.mask.sum()

    def adapt(self, learner: l2l.algorithms.MAML, rollout: Rollout, second_order: bool) -> None:
        """One inner VPG step of `learner` (a clone) on a rollout sampled with it."""
        learner.adapt(self.pg_loss(learner, rollout), first_order=not second_order)

    def adapted(self, train: Sequence[Rollout], second_order: bool) -> l2l.algorithms.MAML:
        """A clone of the policy after one inner step on each of `train`, in order."""
        learner = self.maml.clone()
        for rollout in train:
            self.adapt(learner, rollout, second_order)
        return learner

    # -- sampling -------------------------------------------------------------------------
    def sample(self, policies: Sequence[nn.Module], tasks: Sequence[RLTask], step: int,
               seed_fn: SeedFn) -> list[Rollout]:
        rollouts, seconds = sample(self.source, self.policy, policies, tasks,
                                   [seed_fn(task, step) for task in tasks])
        self._rollout_s += seconds
        return self.set_advantages(rollouts)

    def adapt_and_sample(self, tasks: Sequence[RLTask], steps: int, seed_fn: SeedFn) -> list[list[Rollout]]:
        """rollouts[k][i]: task i's rollout after k = 0 .. steps first-order inner steps, each
        step taken on the rollout before it."""
        with torch.enable_grad():  # the inner loop needs gradients even under no_grad
            learners = [self.maml.clone() for _ in tasks]
            rollouts = [self.sample(learners, tasks, 0, seed_fn)]
            for k in range(1, steps + 1):
                for learner, rollout in zip(learners, rollouts[-1]):
                    self.adapt(learner, rollout, second_order=False)
                rollouts.append(self.sample(learners, tasks, k, seed_fn))
        return rollouts

    def train_seeds(self, seed: int, iteration: int) -> SeedFn:
        n = self.source.trajectories
        return lambda task, step: rollout_seeds(seed, TRAIN_STREAM, iteration, task, step, n)

    @staticmethod
    def check_returns(rollouts: list[list[Rollout]], tasks: Sequence[RLTask], iteration: int) -> None:
        for step, step_rollouts in enumerate(rollouts):
            for task, rollout in zip(tasks, step_rollouts):
                value = rollout.mean_return()
                if not math.isfinite(value):
                    raise UserError(
                        f"iteration {iteration}: the return of {task.split} task {task.index} after "
                        f"{step} adaptation step(s) is {value}: the policy diverged. Nothing was "
                        f"updated; resume from the last checkpoint with a smaller algorithm.fast_lr "
                        f"or algorithm.max_kl."
                    )

    # -- the engine's hooks ---------------------------------------------------------------
    def meta_step(self, tasks: list[RLTask], iteration: int, seed: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, tasks: Sequence[RLTask], steps: Sequence[int] = (0, 1, 2, 3),
                 seed: int = 0) -> dict[int, list[float]]:
        """{k: mean return of each task (in order) after k inner steps of `fast_lr`} for k in
        `steps`; each task's rollouts are drawn from (seed, task split, task index, k)."""
        n = self.source.trajectories
        self._rollout_s = 0.0
        rollouts = self.adapt_and_sample(
            tasks, max(steps), lambda task, step: rollout_seeds(seed, EVAL_STREAM, 0, task, step, n))
        return {k: [r.mean_return() for r in rollouts[k]] for k in steps}

    def step_metrics(self, rollouts: list[list[Rollout]], start: float) -> dict[str, float]:
        """Metrics every meta_step reports: returns before / after adaptation, policy std, timing."""
        def mean(values: list[float]) -> float:
            return sum(values) / len(values)
        return {
            "return_pre": mean([r.mean_return() for r in rollouts[0]]),
            "return_post": mean([r.mean_return() for r in rollouts[-1]]),
            "policy_std": float(self.policy.log_std.detach().exp().mean()),
            "rollout_s": self._rollout_s,
            "step_s": time.perf_counter() - start,
        }
