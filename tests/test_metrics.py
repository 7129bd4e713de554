import math

import pytest

from meta_cli.evaluation.metrics import mean_ci95


def test_mean_ci95_by_hand():
    # values 0.6, 0.8, 1.0: mean 0.8, sample std 0.2, ci95 = 1.96 * 0.2 / sqrt(3)
    mean, ci = mean_ci95([0.6, 0.8, 1.0])
    assert mean == pytest.approx(0.8)
    assert ci == pytest.approx(1.96 * 0.2 / math.sqrt(3))


def test_single_and_empty():
    assert mean_ci95([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_ci95([]))
