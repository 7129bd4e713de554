"""Meta-SGD (Li et al., 2017) through learn2learn's `l2l.algorithms.MetaSGD`."""
from __future__ import annotations

from typing import Annotated, Literal

from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms.base import Task
from meta_cli.algorithms.maml import MAML
from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt


class MetaSGD(MAML):
    """MAML whose inner step is `theta - alpha * grad` with a learned `alpha` of the shape of
    every parameter (initialised to `fast_lr`), meta-trained with the weights."""

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        fast_lr: Annotated[float, Gt(0)] = 0.4,
        adaptation_steps: Annotated[int, Ge(1)] = 1,
        test_adaptation_steps: Annotated[int, Ge(0)] = 1,
        first_order: bool = False,
        backend: Literal["l2l"] = "l2l",
    ) -> None:
        if backend != "l2l":  # validation already refuses it; direct callers too
            raise UserError("algorithm=metasgd has no vmap backend; use algorithm.backend=l2l.")
        super().__init__(backbone, task, outputs, fast_lr, adaptation_steps,
                         test_adaptation_steps, first_order, backend)

    def wrap(self, model: nn.Module, fast_lr: float, first_order: bool) -> nn.Module:
        return l2l.algorithms.MetaSGD(model, lr=fast_lr, first_order=first_order)
