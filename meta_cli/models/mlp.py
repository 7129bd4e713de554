"""Fully connected backbone; with its 1-output head this is the MAML paper's 1-40-40-1."""
from __future__ import annotations

import math
from typing import Any, Annotated

import torch
from torch import nn

from meta_cli.models.base import Backbone
from meta_cli.params import Ge


class MLP(Backbone):
    """(N, *input_shape) -> (N, hidden[-1]) with ReLU after every layer."""

    def __init__(self, input_shape: tuple[int, ...],
                 hidden: list[Annotated[int, Ge(1)]] = (40, 40)) -> None:
        super().__init__(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def batch_independent(cls, **config: Any) -> bool:
        return True  # no batch norm
