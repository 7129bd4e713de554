"""The progress bar's rate: tasks per second smoothed as tqdm smooths its own it/s.

A step's own rate swings with what the step happens to do (a longer episode, a slower
kernel, another process on the core); tqdm shows an exponential moving average instead, of
the items and of the seconds separately, with the start-up bias corrected. `Rate` does the
same for the tasks (or images, or rollouts) a step processes.
"""
from __future__ import annotations

#: tqdm's default `smoothing`: the weight of the newest step.
SMOOTHING = 0.3


class _Average:
    """An exponential moving average, bias-corrected as tqdm's EMA: the first value is itself."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing, self.value, self.calls = smoothing, 0.0, 0

    def add(self, x: float) -> float:
        self.value = self.smoothing * x + (1 - self.smoothing) * self.value
        self.calls += 1
        return self.value / (1 - (1 - self.smoothing) ** self.calls)


class Rate:
    """Items per second over recent steps, each step weighted by SMOOTHING against the past."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.items, self.seconds = _Average(smoothing), _Average(smoothing)

    def update(self, items: float, seconds: float) -> float:
        """Add one step of `items` in `seconds`; returns the smoothed rate."""
        items, seconds = self.items.add(items), self.seconds.add(seconds)
        return items / seconds if seconds > 0 else 0.0
