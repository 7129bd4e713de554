"""Episode accuracy with a 95% confidence interval: a functional core and a stateful twin."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n).

    std is the sample standard deviation (ddof=1); one value has no spread, so ci95 = 0.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(1.96 * x.std(ddof=1) / math.sqrt(x.size))


class EpisodeMean:
    """Accumulates one value per episode (accuracy or loss); `compute()` -> (mean, ci95)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, value: float) -> None:
        self.values.append(float(value))

    def compute(self) -> tuple[float, float]:
        return mean_ci95(self.values)

    def reset(self) -> None:
        self.values.clear()
