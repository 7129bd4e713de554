"""The progress bar's `per s` is smoothed as tqdm smooths its own rate (an exponential moving
average of the tasks and of the seconds of each step), so uneven steps do not make it jump."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

from torch import nn

from meta_cli.engine.progress import Rate
from meta_cli.engine.regimes.base import StepResult
from meta_cli.engine.settings import TrainSettings
from meta_cli.engine.trainer import Trainer
from meta_cli.rundir.outputs import MetricsLog
from meta_cli.runtime.distributed import World


class Bar:
    """What the Trainer calls on its tqdm bar: the `per s` values it is given."""

    def __init__(self) -> None:
        self.shown: list[float] = []

    def set_postfix(self, values: dict[str, str], refresh: bool = True) -> None:
        self.shown.append(float(values["per s"]))


def test_per_s_is_smoothed_like_tqdms_rate():
    settings = TrainSettings(progress=False, iterations=1000, log_every=1000)
    trainer = Trainer(nn.Linear(1, 1), SimpleNamespace(metric="loss"), None,
                      MetricsLog(lambda **kw: None, [], writes=False), settings, World())
    bar = Bar()
    durations = itertools.cycle([0.1, 1.0])  # alternate fast and slow steps: 160 and 16 tasks/s
    for iteration in range(1, 41):
        trainer.iteration = iteration
        trainer._record(StepResult(loss=1.0, accuracy=None, items=16), next(durations), float(iteration), bar)
    assert bar.shown[0] == 160.0  # the first step: its own rate, as tqdm's first
    settled = bar.shown[10:]
    assert max(settled) / min(settled) < 1.6  # raw per-step rates swing 10x
    assert abs(sum(settled) / len(settled) - 16 * 2 / 1.1) < 8  # about the true mean rate, 29 tasks/s


def test_rate_equals_tqdms_own_smoothing():
    """Against tqdm's EMA (tqdm.std.EMA, what tqdm's it/s uses) on uneven steps."""
    import numpy as np
    from tqdm.std import EMA

    rng = np.random.default_rng(0)
    rate, items, seconds = Rate(), EMA(0.3), EMA(0.3)
    for n, dt in zip(rng.integers(1, 64, 50), rng.uniform(0.01, 2.0, 50)):
        expected = items(float(n)) / seconds(float(dt))
        assert abs(rate.update(float(n), float(dt)) - expected) <= 1e-12 * expected
