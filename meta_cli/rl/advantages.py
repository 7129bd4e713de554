"""Discounted returns and generalised advantage estimation (Schulman et al., 2016).

All tensors are time-major, (T, n): T steps of n trajectories, with `mask` 1 on the steps a
trajectory took and 0 after it ended. The tasks are finite-horizon: the value after the last
step, and after a terminal step, is 0, so nothing is bootstrapped at the horizon cut.
"""
from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(T, n) R_t = r_t + gamma R_{t+1}, 0 where mask is 0."""
    returns = torch.zeros_like(rewards)
    future = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        future = (rewards[t] + gamma * future) * mask[t]
        returns[t] = future
    return returns


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> torch.Tensor:
    """(T, n) generalised advantages A_t = sum_k (gamma lam)^k delta_{t+k}, where
    delta_t = r_t + gamma V_{t+1} - V_t and V_{t+1} = 0 past the trajectory's end.
    lam = 1 gives R_t - V_t; lam = 0 the one-step TD error."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[0])
    next_advantage = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[t]
        advantages[t] = next_advantage
        next_value = values[t] * mask[t]
    return advantages


def normalize(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(T, n) advantages centred and scaled over the masked steps (rllab's center_adv)."""
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    var = (((advantages - mean) * mask) ** 2).sum() / count
    return (advantages - mean) / (var.sqrt() + eps) * mask
