"""Sinusoid regression, the MAML paper's toy problem (Finn et al., 2017, section 5.1).

A task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi]; inputs x ~ U[-5, 5].
Tasks are drawn fresh from (seed, split, index), so nothing is downloaded.
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch

from meta_cli.data.base import DATASET_KEYS, Episode, Split, TaskSource, episode_rng
from meta_cli.errors import UserError
from meta_cli.params import Ge


class Sinusoid(TaskSource):
    task = "regression"
    input_shape = (1,)

    def __init__(
        self,
        shots: Annotated[int, Ge(1)] = 10,
        query: Annotated[int, Ge(1)] = 10,
        amplitude: list[float] = (0.1, 5.0),
        phase: list[float] = (0.0, np.pi),
        x_range: list[float] = (-5.0, 5.0),
        splits: Any = None,
    ) -> None:
        for name, pair in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise UserError(f"dataset.{name} must be [low, high] with low <= high; got {list(pair)}.")
        self.ways = 1
        self.shots, self.query = shots, query
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.device = torch.device("cpu")

    def check(self, split: Split, ways: int, shots: int, query: int,
              keys: dict[str, str] = DATASET_KEYS, use: str = "", hint: str = "") -> None:
        if ways != 1:
            raise UserError(f"{keys['ways']} does not apply to sinusoid regression; leave it unset.")

    def to(self, device: torch.device) -> "Sinusoid":
        self.device = torch.device(device)
        return self

    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        rng = episode_rng(seed, split, index)
        amplitude = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        x = rng.uniform(*self.x_range, size=(shots + query, 1))
        y = amplitude * np.sin(x - phase)
        x_t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        y_t = torch.as_tensor(y, dtype=torch.float32, device=self.device)
        return Episode(x_t[:shots], y_t[:shots], x_t[shots:], y_t[shots:], seed=int(rng.integers(2**62)))

    def describe(self) -> dict[str, Any]:
        return {
            "splits": {},
            "data": {"amplitude": list(self.amplitude), "phase": list(self.phase),
                     "x_range": list(self.x_range)},
        }
