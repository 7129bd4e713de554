"""Batched, seeded rollouts through a Gymnasium vector env.

Several tasks are sampled at once: a vector env of G * n sub-environments, G tasks with n
trajectories each, every task acting with its own policy (e.g. its adapted clone), one batched
policy pass per time step. A task's rollout depends only on its policy and its own seeds (the
sub-env reset seeds and one torch.Generator for the action noise), not on which tasks share the
vector env, so a meta-batch can be split into chunks or across processes without changing it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import nn

from meta_cli.data.base import SPLIT_CODES
from meta_cli.rl.policy import GaussianMLP
from meta_cli.rl.tasks import RLTask, RLTaskSource


@dataclass
class Rollout:
    """n trajectories of one task, T = horizon steps each (time-major).

    obs: (T, n, observation_dim) float32, the observation each action was taken at.
    actions: (T, n, action_dim) float32, as sampled (before the environment clips them).
    rewards: (T, n) float32, 0 after the trajectory ended.
    mask: (T, n) float32, 1 for the steps of the trajectory (up to and including a terminal
        step), 0 after it.
    dones: (T, n) float32, 1 at a terminal step (the goal reached), else 0; the horizon cut is
        not a terminal step but the end of the finite-horizon task.
    log_probs: (T, n) float32, log pi(a | s) of the behaviour policy.
    advantages: (T, n) float32, set by the algorithm once the task's baseline is fitted.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    dones: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor | None = None

    def mean_return(self) -> float:
        """The mean over trajectories of the undiscounted return."""
        return float(self.rewards.double().sum(0).mean())

    @staticmethod
    def cat(rollouts: Sequence["Rollout"]) -> "Rollout":
        """The trajectories of several rollouts of one task as one (T, sum n) rollout."""
        fields = ("obs", "actions", "rewards", "mask", "dones", "log_probs")
        return Rollout(*(torch.cat([getattr(r, f) for r in rollouts], dim=1) for f in fields))


#: Seed streams: meta-training steps and evaluation never share action noise.
TRAIN_STREAM, EVAL_STREAM = 0, 1


def rollout_seeds(seed: int, stream: int, iteration: int, task: RLTask, step: int,
                  trajectories: int) -> tuple[list[int], int]:
    """(reset seed per sub-env, action-noise seed) of one task's rollout after `step`
    adaptation steps, derived from (seed, stream, iteration, task split, task index, step)."""
    root = np.random.SeedSequence([seed, stream, iteration, SPLIT_CODES[task.split], task.index, step])
    env_seq, noise_seq = root.spawn(2)
    return [int(s) for s in env_seq.generate_state(trajectories)], int(noise_seq.generate_state(1)[0])


def sample(source: RLTaskSource, template: GaussianMLP, policies: Sequence[nn.Module],
           tasks: Sequence[RLTask], seeds: Sequence[tuple[list[int], int]]) -> tuple[list[Rollout], float]:
    """One rollout per task, `source.trajectories` trajectories of `source.horizon` steps:
    task g acts with `policies[g]` and `seeds[g]`. Returns the rollouts and the seconds spent.

    `template` is a policy of the same architecture, whose batched pass reads the weights of
    `policies`. Runs without gradients; tasks are grouped `source.max_envs` sub-envs at a time.
    """
    start = time.perf_counter()
    n = source.trajectories
    per_chunk = len(tasks) if source.max_envs is None else max(1, source.max_envs // n)
    rollouts: list[Rollout] = []
    for lo in range(0, len(tasks), per_chunk):
        hi = min(lo + per_chunk, len(tasks))
        rollouts += _sample_chunk(source.envs((hi - lo) * n), source.horizon, n, template,
                                  policies[lo:hi], tasks[lo:hi], seeds[lo:hi])
    return rollouts, time.perf_counter() - start


def _sample_chunk(envs: VectorEnv, horizon: int, n: int, template: GaussianMLP,
                  policies: Sequence[nn.Module], tasks: Sequence[RLTask],
                  seeds: Sequence[tuple[list[int], int]]) -> list[Rollout]:
    groups = len(tasks)
    envs.set_attr("task", [t.params for t in tasks for _ in range(n)])
    observation, _ = envs.reset(seed=[s for env_seeds, _ in seeds for s in env_seeds])
    action_dim = envs.single_action_space.shape[0]
    # Each task's action noise for the whole horizon, from its own generator.
    noise = torch.stack([
        torch.randn(horizon, n, action_dim, generator=torch.Generator().manual_seed(noise_seed))
        for _, noise_seed in seeds], dim=1)  # (T, G, n, action_dim)
    obs = torch.zeros(horizon, groups, n, envs.single_observation_space.shape[0])
    actions = torch.zeros(horizon, groups, n, action_dim)
    rewards, dones, log_probs = (torch.zeros(horizon, groups, n) for _ in range(3))
    alive = torch.ones(groups, n)
    mask = torch.zeros(horizon, groups, n)
    with torch.no_grad():
        params = template.stack(policies)
        for t in range(horizon):
            obs[t] = torch.as_tensor(observation, dtype=torch.float32).view(groups, n, -1)
            dist = template.functional(params, obs[t])
            actions[t] = dist.mean + dist.stddev * noise[t]
            log_probs[t] = GaussianMLP.log_prob(dist, actions[t])
            observation, reward, terminated, _, _ = envs.step(actions[t].reshape(groups * n, -1).numpy())
            mask[t] = alive
            reward_t = torch.as_tensor(reward, dtype=torch.float32).view(groups, n)
            rewards[t] = torch.where(alive > 0, reward_t, torch.zeros(()))
            ended = torch.as_tensor(terminated, dtype=torch.float32).view(groups, n) * alive
            dones[t] = ended
            alive = alive * (1 - ended)
    return [Rollout(*(x[:, g].contiguous() for x in (obs, actions, rewards, mask, dones, log_probs)))
            for g in range(groups)]
