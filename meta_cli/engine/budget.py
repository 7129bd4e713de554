"""`train.time_budget`: a run sized to a wall-clock budget instead of a step count.

The presets count their budgets in steps measured on one CPU; on a slower one the same steps
take several times longer. With `train.time_budget=10m` the run measures itself over its first
steps (the probe: about 3 % of the budget, at least 3 steps, no checkpoint), validates once and
times that and a checkpoint write, and then fixes its `Plan`: how many iterations fit (never
more than `train.iterations`), with the validations and checkpoints its config intends spread
over them (as far as they fit) and the metrics rows in proportion. The lr schedule is laid over
the decided iterations. The final meta-test's time, estimated from the measured validation, is
kept out of the training time.

The decision is stored in every checkpoint after it (`Trainer.state_dict()["plan"]`): a
resumed run follows it whatever its own timing, so it continues bit for bit.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from meta_cli.errors import UserError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])")


def parse_duration(value: Any, key: str = "train.time_budget") -> float:
    """Seconds of a duration: a number (seconds) or parts with units s, m, h ('90s', '10m',
    '1.5h', '1h30m'). UserError for anything else, or a duration that is not positive."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = _PART.findall(text)
        if not parts or _PART.sub("", text).strip():
            raise UserError(f"{key}={value} is not a duration; give one such as 90s, 10m, 1.5h or 1h30m "
                            f"(or a number of seconds).")
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{key}={value} must be a positive duration, e.g. 10m.")
    return seconds


@dataclass
class Plan:
    """The schedule a run follows: its iterations, and every how many of them it validates,
    commits a step checkpoint and writes a metrics row (besides the last iteration)."""

    iterations: int
    val_every: int
    checkpoint_every: int
    log_every: int

    @classmethod
    def of(cls, settings: Any) -> "Plan":
        """The plan `train.*` states (a run without a time budget)."""
        return cls(settings.iterations, settings.val_every, settings.checkpoint_every, settings.log_every)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TimeBudget:
    """Decides a run's Plan from its measured speed.

    `test_per_validation`: the final meta-test's episodes (or tasks) per validation episode,
    to estimate its time from the measured validation.
    """

    #: The share of the budget spent measuring (at least PROBE_MIN_S, at most PROBE_MAX_S), and
    #: the share kept back for what is not measured (checkpoint writes, slower steps later).
    PROBE_SHARE, PROBE_MIN_S, PROBE_MAX_S, PROBE_STEPS, MARGIN = 0.03, 1.0, 60.0, 3, 0.05

    def __init__(self, seconds: float, settings: Any, test_per_validation: float) -> None:
        self.seconds, self.settings, self.test_per_validation = seconds, settings, test_per_validation
        self.ends: list[float] = []  # the run's elapsed seconds at the end of each probed step

    def probed(self, iteration: int, elapsed: float) -> bool:
        """Record that a step ended at `elapsed` seconds into the run; whether the probe has
        measured enough (steps of this process: a run resumed before its decision probes anew)."""
        self.ends.append(elapsed)
        probe = min(self.PROBE_MAX_S, max(self.PROBE_MIN_S, self.PROBE_SHARE * self.seconds))
        return len(self.ends) >= self.PROBE_STEPS and elapsed >= probe

    def step_time(self) -> float:
        """Seconds per iteration of the loop (step, metrics rows, bookkeeping), measured after
        the first step, which pays for warm-up."""
        if len(self.ends) < 2:
            return self.ends[0] if self.ends else 0.0
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

    def decide(self, done: int, elapsed: float, validation_s: float, checkpoint_s: float = 0.0) -> Plan:
        """The plan for a run that has taken `done` steps in `elapsed` seconds, whose one
        validation took `validation_s` and one checkpoint write `checkpoint_s`.

        The validations and checkpoints the config intends (`iterations / val_every`,
        `iterations / checkpoint_every`) are kept, as far as they take at most half and a tenth
        of the time left; the steps fill the rest, up to `train.iterations`."""
        s = self.settings
        test_s = validation_s * self.test_per_validation
        left = max(0.0, (self.seconds - elapsed - test_s) * (1 - self.MARGIN))

        def count(intended: int, each_s: float, share: float) -> int:
            return min(intended, max(1, int(left * share / each_s))) if each_s > 0 else intended

        validations = count(max(1, s.iterations // s.val_every), validation_s + checkpoint_s, 0.5)
        checkpoints = count(max(1, s.iterations // s.checkpoint_every), checkpoint_s, 0.1)
        spent = validations * (validation_s + checkpoint_s) + checkpoints * checkpoint_s
        steps = int(max(0.0, left - spent) / max(self.step_time(), 1e-9))
        iterations = max(done, min(s.iterations, done + steps))
        if iterations == s.iterations and (validations, checkpoints) == (
                max(1, s.iterations // s.val_every), max(1, s.iterations // s.checkpoint_every)):
            return Plan.of(s)  # everything fits: the run its config states
        return Plan(iterations, max(1, math.ceil(iterations / validations)),
                    max(1, math.ceil(iterations / checkpoints)),
                    max(1, round(s.log_every * iterations / s.iterations)))
