"""The training loop. Each iteration: one outer step of the regime; a metrics row every
`log_every`; validation every `val_every`; a checkpoint when the Checkpointer says it is due.
SIGTERM/SIGINT stop it after a step, with a checkpoint first.

What varies lives behind three objects, so this file stays one screen:
- `regime`: how a step feeds the algorithm and which metric picks best.pt
  (`meta_cli.engine.regimes`: episodes, mini-batches, rollouts; this process's share of them);
- `checkpointer`: when and where checkpoints are written (`meta_cli.rundir.checkpointer`);
- `log`: metrics.csv and the logger, written by rank 0 only (`meta_cli.rundir.outputs.MetricsLog`).

`state_dict()` / `load_state_dict()` hold everything a checkpoint needs for a resumed run to
continue bit for bit (on CPU): weights, optimizer, schedule, every RNG, the counters.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from torch import nn
from tqdm import tqdm

from meta_cli.runtime.distributed import World
from meta_cli.engine.progress import Rate
from meta_cli.engine.regimes.base import Regime, StepResult
from meta_cli.rundir.checkpointer import Checkpointer
from meta_cli.rundir.outputs import MetricsLog
from meta_cli.rundir.stopping import Stopped, StopRequest
from meta_cli.runtime.seeding import rng_state, set_rng_state
from meta_cli.engine.settings import TrainSettings


class Trainer:
    def __init__(self, model: nn.Module, regime: Regime, checkpointer: Checkpointer, log: MetricsLog,
                 settings: TrainSettings, world: World) -> None:
        self.model, self.regime, self.checkpointer, self.log = model, regime, checkpointer, log
        self.settings, self.world = settings, world
        self.best: dict[str, Any] = {"iteration": None, "value": None, "metric": regime.metric}
        self.iteration, self.elapsed = 0, 0.0  # elapsed: training seconds before this process
        self.window: dict[str, float] = {}  # sums since the last train row
        self.rate = Rate()  # the progress bar's tasks per second, smoothed as tqdm's own rate

    def state_dict(self) -> dict[str, Any]:
        return {"algorithm": self.model.state_dict(), **self.regime.state_dict(),
                "rng": rng_state(), "best": dict(self.best), "iteration": self.iteration,
                "elapsed_s": self.elapsed, "window": dict(self.window), "metrics_rows": self.log.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["algorithm"])
        self.regime.load_state_dict(state)
        set_rng_state(state["rng"])
        self.best, self.iteration, self.elapsed = dict(state["best"]), state["iteration"], state["elapsed_s"]
        self.window, self.log.rows = dict(state["window"]), state["metrics_rows"]

    def fit(self) -> dict[str, Any]:
        """Train from self.iteration to settings.iterations; return the best validation record."""
        s, start = self.settings, time.perf_counter() - self.elapsed
        bar = tqdm(range(self.iteration + 1, s.iterations + 1), initial=self.iteration, total=s.iterations,
                   disable=not (s.progress and self.world.main), dynamic_ncols=True, desc="meta-train",
                   mininterval=0.5 if sys.stderr.isatty() else 30)  # in a log file: every 30 s
        self.checkpointer.opened()
        try:
            with self.log.opened(self.iteration), StopRequest(several=self.world.size > 1) as stop:
                for iteration in bar:
                    t0 = time.perf_counter()
                    result = self.regime.step(iteration)
                    self.iteration = iteration
                    self._record(result, time.perf_counter() - t0, time.perf_counter() - start, bar)
                    last = iteration == s.iterations
                    validated = iteration % s.val_every == 0 or last
                    if validated:
                        self._validate(time.perf_counter() - start)
                    if self.checkpointer.due(iteration, validated, last):
                        self._commit(time.perf_counter() - start)
                    signum = self.world.max(stop.signum or 0)  # every rank stops after the same step
                    if signum:
                        self._commit(time.perf_counter() - start)
                        raise Stopped.by(signum, iteration, self.checkpointer.step_path(iteration))
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, at the last committed checkpoint
            raise Stopped.by(2, *self.checkpointer.last_committed()) from None
        finally:
            bar.close()
        return dict(self.best)

    def _record(self, result: StepResult, seconds: float, elapsed: float, bar: tqdm) -> None:
        values = {"loss": result.loss, "accuracy": result.accuracy, **result.metrics}
        w = self.window
        for key, value in [*values.items(), ("seconds", seconds), ("steps", 1), ("items", result.items)]:
            if value is not None:
                w[key] = w.get(key, 0.0) + value
        shown = {k: f"{v:.3f}" for k, v in values.items() if v is not None and k in ("loss", "accuracy")}
        shown.update({k: f"{v:.1f}" for k, v in values.items() if k.startswith("return")})
        bar.set_postfix({**shown, "per s": f"{self.rate.update(result.items, seconds):.1f}"}, refresh=False)
        if self.iteration % self.settings.log_every == 0 or self.iteration == self.settings.iterations:
            row = {k: w[k] / w["steps"] for k in values if k in w}
            self.log.row(self.iteration, "train", {**row, "tasks_per_s": w["items"] / w["seconds"],
                                                   "elapsed_s": elapsed})
            self.window = {}

    def _validate(self, elapsed: float) -> None:
        value, row = self.regime.validate(self.iteration)
        self.log.row(self.iteration, "val", {**row, "elapsed_s": elapsed})
        if self.best["value"] is None or self.regime.better(value, self.best["value"]):
            self.best.update(iteration=self.iteration, value=value)
            self.elapsed = elapsed
            # best.pt before the step checkpoint that records it: a crash in between resumes
            # from the previous step and writes the same best.pt again.
            self.checkpointer.save_best(self.state_dict())

    def _commit(self, elapsed: float) -> None:
        self.elapsed = elapsed
        self.checkpointer.commit(self.iteration, self.state_dict())
