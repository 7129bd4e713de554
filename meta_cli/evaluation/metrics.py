"""Episode accuracy with a 95% confidence interval."""
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
