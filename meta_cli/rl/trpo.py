"""Trust region policy optimisation's update (Schulman et al., 2015), model-agnostic.

Given a loss L(theta) and the mean KL between the old and the new policy, one step solves
F s = grad L by conjugate gradient (F: the KL's Hessian at theta_old, the Fisher matrix, used
only through Hessian-vector products), scales s to the trust region's edge
(1/2 step' F step = max_kl), and backtracks along it until the loss improves and the exact KL
is within max_kl; if no fraction qualifies, theta is left as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from meta_cli.errors import UserError


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def assign(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Write a flat vector into the parameters, in place."""
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(vector[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iterations: int, residual_tol: float = 1e-10) -> torch.Tensor:
    """x with A x = b for a symmetric positive-definite A given as `matvec(v) = A v`; exact
    (in exact arithmetic) after as many iterations as b has entries."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    rr = residual @ residual
    for _ in range(iterations):
        if rr <= residual_tol:
            break
        a_direction = matvec(direction)
        alpha = rr / (direction @ a_direction)
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        rr_new = residual @ residual
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return x


@dataclass
class LineSearchResult:
    accepted: bool
    fraction: float  # of the full step taken; 0 when none was accepted
    tries: int
    loss: float  # at the parameters left in place
    kl: float


def line_search(params: Sequence[torch.Tensor], full_step: torch.Tensor,
                evaluate: Callable[[], tuple[float, float]], loss_before: float, max_kl: float,
                steps: int, backtrack: float) -> LineSearchResult:
    """Try theta_old + backtrack^i * full_step for i = 0 .. steps-1; keep the first whose loss
    is below `loss_before` and whose KL (from `evaluate()` -> (loss, kl) at the parameters in
    place) is at most `max_kl`. A NaN loss or KL never qualifies. Otherwise restore theta_old."""
    old = flat([p.detach() for p in params]).clone()
    for i in range(steps):
        fraction = backtrack ** i
        assign(params, old + fraction * full_step)
        loss, kl = evaluate()
        if loss < loss_before and kl <= max_kl:
            return LineSearchResult(True, fraction, i + 1, loss, kl)
    assign(params, old)
    return LineSearchResult(False, 0.0, steps, loss_before, 0.0)


def hessian_vector_product(scalar: torch.Tensor, params: Sequence[torch.Tensor]
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (d^2 scalar / d params^2) v by double backpropagation (flat vectors)."""
    gradient = flat(torch.autograd.grad(scalar, params, create_graph=True))

    def product(v: torch.Tensor) -> torch.Tensor:
        return flat(torch.autograd.grad(gradient @ v, params, retain_graph=True))

    return product


def check_finite(loss: torch.Tensor, gradient: torch.Tensor, outer: str, knob: str) -> None:
    if not (torch.isfinite(loss) and torch.isfinite(gradient).all()):
        raise UserError(f"the {outer} surrogate or its gradient is not finite: the policy diverged. "
                        f"Nothing was updated; resume from the last checkpoint with a smaller "
                        f"{knob} or algorithm.fast_lr.")


def trpo_step(params: Sequence[torch.Tensor], loss: torch.Tensor,
              fisher: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
              evaluate: Callable[[], tuple[float, float]], max_kl: float, cg_iterations: int,
              damping: float, ls_steps: int, ls_backtrack: float) -> dict[str, float]:
    """One TRPO update of `params` in place.

    `loss` is the scalar at the current parameters with its graph; `fisher()` builds the
    product v -> F v with the KL's Hessian F there (called once the gradient is known to be
    finite); `evaluate()` recomputes (loss, kl) as floats at whatever parameters are in place,
    for the line search. Raises UserError before changing anything when the loss or its
    gradient is not finite. Returns diagnostics (see the keys).
    """
    gradient = flat(torch.autograd.grad(loss, params, retain_graph=True))
    check_finite(loss, gradient, "TRPO", "algorithm.max_kl")
    product = fisher()

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        return product(v) + damping * v

    direction = conjugate_gradient(fisher_vector, gradient, cg_iterations)
    curvature = float(direction @ fisher_vector(direction))
    loss_before = float(loss.detach())
    stats = {"grad_norm": float(gradient.norm()), "loss_before": loss_before}
    if not (curvature > 0 and math.isfinite(curvature)):
        return {**stats, "loss_after": loss_before, "kl": 0.0, "step_fraction": 0.0, "ls_tries": 0}
    full_step = -math.sqrt(2 * max_kl / curvature) * direction.detach()
    result = line_search(params, full_step, evaluate, loss_before, max_kl, ls_steps, ls_backtrack)
    return {**stats, "loss_after": result.loss, "kl": result.kl,
            "step_fraction": result.fraction, "ls_tries": result.tries}
