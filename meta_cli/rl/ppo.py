"""The clipped surrogate of proximal policy optimisation (Schulman et al., 2017), as ProMP's
outer step (Rothfuss et al., 2019): a few Adam steps on the post-adaptation surrogate."""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from meta_cli.errors import UserError
from meta_cli.rl.trpo import check_finite, flat


def clipped_objective(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                      advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """Elementwise min(r A, clip(r, 1 - clip, 1 + clip) A), r = pi(a | s) / pi_old(a | s)."""
    ratio = torch.exp(log_probs - old_log_probs)
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                      advantages: torch.Tensor, mask: torch.Tensor, clip: float) -> torch.Tensor:
    """Scalar loss: minus the masked mean of `clipped_objective` over (T, n) tensors."""
    objective = clipped_objective(log_probs, old_log_probs, advantages, clip)
    return -(objective * mask).sum() / mask.sum()


def ppo_steps(params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
              objective: Callable[[], torch.Tensor], epochs: int) -> dict[str, float]:
    """`epochs` Adam steps on `objective()` (recomputed each time); returns the loss before
    them (the caller evaluates the loss after, with the KL). If a loss or gradient is
    not finite, the parameters and Adam's state go back to where they were and UserError is
    raised: a diverged step leaves no trace."""
    saved_params = [p.detach().clone() for p in params]
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        gradient = flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        try:
            check_finite(loss, gradient, "PPO", "algorithm.ppo_lr")
        except UserError:
            with torch.no_grad():
                for p, saved in zip(params, saved_params):
                    p.copy_(saved)
            optimizer.load_state_dict(saved_optimizer)
            raise
        optimizer.step()
        losses.append(float(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    return {"loss_before": losses[0]}
