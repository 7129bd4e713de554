"""The linear feature baseline of Duan et al. (2016), fitted per task as in the MAML paper.

V(s_t) = w . phi(s_t, t) with phi = [o, o^2, t/100, (t/100)^2, (t/100)^3, 1], o the observation
clipped to [-10, 10]; w by ridge least squares on the task's own discounted returns. The time
features let a state-only baseline represent how much horizon is left.
"""
from __future__ import annotations

import torch

#: rllab's ridge coefficient; raised tenfold (up to 5 times) if the solve is not finite.
REG_COEFF = 1e-5


def features(obs: torch.Tensor) -> torch.Tensor:
    """(T, n, d) observations -> (T, n, 2 d + 4) features."""
    steps, n = obs.shape[:2]
    o = obs.clamp(-10, 10)
    t = (torch.arange(steps, dtype=obs.dtype) / 100.0).view(steps, 1, 1).expand(steps, n, 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit(x: torch.Tensor, y: torch.Tensor, reg: float = REG_COEFF) -> torch.Tensor:
    """(F,) w minimising |x w - y|^2 + reg |w|^2 for x (m, F), y (m,), solved in float64 by the
    normal equations (x'x + reg I) w = x'y."""
    x64, y64 = x.double(), y.double()
    gram, moment = x64.T @ x64, x64.T @ y64
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    for _ in range(5):
        try:
            w = torch.linalg.solve(gram + reg * eye, moment)
        except torch.linalg.LinAlgError:  # singular: reg = 0, or too few distinct states
            w = torch.full_like(moment, float("nan"))
        if torch.isfinite(w).all():
            break
        reg = max(reg * 10, REG_COEFF)
    return w.to(x.dtype)


def fit_predict(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                reg: float = REG_COEFF) -> torch.Tensor:
    """(T, n) values of a baseline fitted on the masked steps of (T, n, d) obs and (T, n) returns."""
    phi = features(obs)
    valid = mask.bool()
    w = fit(phi[valid], returns[valid], reg)
    return (phi @ w) * mask
