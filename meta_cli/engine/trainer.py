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

The iterations and cadences come from a `Plan`: `train.*`'s, or with `train.time_budget` the
one `meta_cli.engine.budget.TimeBudget` decides after probing the first steps (stored in
checkpoints).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

from torch import nn
from tqdm import tqdm

from meta_cli.runtime.distributed import World
from meta_cli.engine.budget import Plan, TimeBudget
from meta_cli.engine.progress import Rate
from meta_cli.engine.regimes.base import Regime, StepResult
from meta_cli.rundir.checkpointer import Checkpointer
from meta_cli.rundir.outputs import MetricsLog
from meta_cli.rundir.stopping import Stopped, StopRequest
from meta_cli.runtime.seeding import rng_state, set_rng_state
from meta_cli.engine.settings import TrainSettings


log = logging.getLogger("meta_cli.train")


class Trainer:
    def __init__(self, model: nn.Module, regime: Regime, checkpointer: Checkpointer, log: MetricsLog,
                 settings: TrainSettings, world: World) -> None:
        self.model, self.regime, self.checkpointer, self.log = model, regime, checkpointer, log
        self.settings, self.world = settings, world
        self.best: dict[str, Any] = {"iteration": None, "value": None, "metric": regime.metric}
        self.iteration, self.elapsed = 0, 0.0  # elapsed: training seconds before this process
        self.window: dict[str, float] = {}  # sums since the last train row
        self.rate = Rate()  # the progress bar's tasks per second, smoothed as tqdm's own rate
        #: What the run follows; None while a time budget is still being probed.
        self.plan: Plan | None = Plan.of(settings)
        self.budget: TimeBudget | None = None

    def use_budget(self, budget: TimeBudget) -> None:
        """Size the run to a time budget: probe the first steps at the schedule's first lr,
        then decide the plan (before `load_state_dict`, which restores a decided one)."""
        self.budget, self.plan = budget, None
        self.regime.reschedule(None)

    def state_dict(self) -> dict[str, Any]:
        return {"algorithm": self.model.state_dict(), **self.regime.state_dict(),
                "rng": rng_state(), "best": dict(self.best), "iteration": self.iteration,
                "elapsed_s": self.elapsed, "window": dict(self.window), "metrics_rows": self.log.rows,
                # a time budget's decision (None: train.*'s plan, or not decided yet)
                "plan": self.plan.as_dict() if self.budget is not None and self.plan is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["algorithm"])
        if self.budget is not None and state.get("plan") is not None:  # its decision, whatever this run's timing
            self.plan = Plan(**state["plan"])
            self.regime.reschedule(self.plan.iterations, 0)  # the schedule's shape; its state follows
        self.regime.load_state_dict(state)
        set_rng_state(state["rng"])
        self.best, self.iteration, self.elapsed = dict(state["best"]), state["iteration"], state["elapsed_s"]
        self.window, self.log.rows = dict(state["window"]), state["metrics_rows"]

    @property
    def _plan(self) -> Plan:
        """The plan, or while probing a time budget `train.*`'s (its iterations: the most)."""
        return self.plan if self.plan is not None else Plan.of(self.settings)

    def fit(self) -> dict[str, Any]:
        """Train from self.iteration to the plan's iterations; return the best validation record."""
        s, start = self.settings, time.perf_counter() - self.elapsed
        bar = tqdm(total=self._plan.iterations, initial=self.iteration,
                   disable=not (s.progress and self.world.main), dynamic_ncols=True, desc="meta-train",
                   mininterval=0.5 if sys.stderr.isatty() else 30)  # in a log file: every 30 s
        self.checkpointer.opened()
        try:
            with self.log.opened(self.iteration), StopRequest(several=self.world.size > 1) as stop:
                while self.iteration < self._plan.iterations:
                    iteration = self.iteration + 1
                    t0 = time.perf_counter()
                    result = self.regime.step(iteration)
                    self.iteration = iteration
                    self._record(result, time.perf_counter() - t0, time.perf_counter() - start, bar)
                    bar.update(1)
                    if self.plan is None:  # probing: no checkpoint holds a run without its plan
                        probed = self.budget.probed(iteration, time.perf_counter() - start)
                        if self.world.max(int(probed or iteration == s.iterations)):  # all ranks at once
                            self._validate(time.perf_counter() - start, decide=True)
                            self._commit(time.perf_counter() - start)
                            bar.total = self.plan.iterations
                            bar.refresh()
                    else:
                        last = iteration == self.plan.iterations
                        validated = iteration % self.plan.val_every == 0 or last
                        if validated:
                            self._validate(time.perf_counter() - start)
                        if self.checkpointer.due(iteration, validated, last, self.plan.checkpoint_every):
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
        if self.iteration % self._plan.log_every == 0 or self.iteration == self._plan.iterations:
            self._train_row(elapsed)

    def _train_row(self, elapsed: float) -> None:
        """The metrics row of the steps since the last one."""
        w = self.window
        row = {k: v / w["steps"] for k, v in w.items() if k not in ("seconds", "steps", "items")}
        self.log.row(self.iteration, "train", {**row, "tasks_per_s": w["items"] / w["seconds"],
                                               "elapsed_s": elapsed})
        self.window = {}

    def _validate(self, elapsed: float, decide: bool = False) -> None:
        """Validate, and keep best.pt; `decide`: the end of a time budget's probe, whose plan is
        decided from this validation's and a checkpoint write's time before best.pt records it."""
        t0 = time.perf_counter()
        value, row = self.regime.validate(self.iteration)
        if decide:  # a checkpoint write timed too (best.pt, written again below with the plan)
            t1 = time.perf_counter()
            self.checkpointer.save_best(self.state_dict())
            t2 = time.perf_counter()
            self._decide(elapsed + t2 - t0, t1 - t0, t2 - t1)
        self.log.row(self.iteration, "val", {**row, "elapsed_s": elapsed})
        if self.best["value"] is None or self.regime.better(value, self.best["value"]):
            self.best.update(iteration=self.iteration, value=value)
            self.elapsed = elapsed
            # best.pt before the step checkpoint that records it: a crash in between resumes
            # from the previous step and writes the same best.pt again.
            self.checkpointer.save_best(self.state_dict())

    def _decide(self, elapsed: float, validation_s: float, checkpoint_s: float) -> None:
        """Rank 0's plan for every rank (their timings differ), the lr schedule laid over its
        iterations from the start, as if it had run from step 1 (the probed steps ran at the
        schedule's first lr)."""
        plan = self.budget.decide(self.iteration, elapsed, validation_s, checkpoint_s)
        self.plan = Plan(**self.world.broadcast(plan.as_dict()))
        if self.plan.iterations == self.iteration and self.window:  # the run ends here: its last row
            self._train_row(elapsed)
        self.regime.reschedule(self.plan.iterations, self.iteration)
        log.info("time budget %s: %d iterations fit (measured %.3f s an iteration, %.2f s a validation, "
                 "%.2f s a checkpoint); validation every %d, checkpoint every %d, metrics row every %d",
                 self.settings.time_budget, self.plan.iterations, self.budget.step_time(), validation_s,
                 checkpoint_s, self.plan.val_every, self.plan.checkpoint_every, self.plan.log_every)

    def _commit(self, elapsed: float) -> None:
        self.elapsed = elapsed
        self.checkpointer.commit(self.iteration, self.state_dict())
