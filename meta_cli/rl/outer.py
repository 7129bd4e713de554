"""The outer step that meta-RL algorithms share: TRPO (a natural-gradient step under a KL bound,
with a line search) or PPO (epochs of Adam on the clipped surrogate), and its settings."""
from __future__ import annotations

from typing import Annotated, Any, Literal

import torch

from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt
from meta_cli.rl.base import RLAlgorithm
from meta_cli.rl.tasks import RLTaskSource


class TRPOOuter(RLAlgorithm):
    """An RLAlgorithm whose outer update is a TRPO or a PPO step: the keys below, then
    RLAlgorithm's (the policy and its inner loop)."""

    def __init__(
        self,
        source: RLTaskSource,
        outer: Literal["trpo", "ppo"] = "trpo",
        max_kl: Annotated[float, Gt(0)] = 0.01,
        cg_iterations: Annotated[int, Ge(1)] = 10,
        cg_damping: Annotated[float, Ge(0)] = 1e-5,
        fisher_subsample: Annotated[int, Ge(1)] = 1,
        ls_steps: Annotated[int, Ge(1)] = 15,
        ls_backtrack: Annotated[float, Gt(0)] = 0.8,
        ppo_clip: Annotated[float, Gt(0)] = 0.2,
        ppo_epochs: Annotated[int, Ge(1)] = 5,
        ppo_lr: Annotated[float, Gt(0)] = 1e-3,
        **policy: Any,
    ) -> None:
        super().__init__(source, **policy)
        if ls_backtrack >= 1:
            raise UserError(f"algorithm.ls_backtrack must be below 1 (a fraction); got {ls_backtrack}.")
        self.outer, self.fisher_subsample = outer, fisher_subsample
        self.max_kl, self.cg_iterations, self.cg_damping = max_kl, cg_iterations, cg_damping
        self.ls_steps, self.ls_backtrack = ls_steps, ls_backtrack
        self.ppo_clip, self.ppo_epochs = ppo_clip, ppo_epochs
        self.optimizer = torch.optim.Adam(self.parameters(), lr=ppo_lr) if outer == "ppo" else None

    def outer_state_dict(self) -> dict:
        return self.optimizer.state_dict() if self.optimizer is not None else {}

    def load_outer_state_dict(self, state: dict) -> None:
        if self.optimizer is not None and state:
            self.optimizer.load_state_dict(state)
