"""The meta-training loop: meta-batches of episodes, Adam on the meta-parameters,
validation, best/last checkpoints and metrics.csv."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from tqdm import tqdm

from meta_cli import checkpoint
from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.errors import UserError
from meta_cli.evaluation import evaluate
from meta_cli.outputs import MetricsLog
from meta_cli.params import Ge, Gt
from meta_cli.seeding import rng_state


@dataclass
class TrainSettings:
    """`train.*`. One iteration = one Adam step on the mean query loss of a meta-batch."""

    iterations: Annotated[int, Ge(1)] = 1000
    meta_batch_size: Annotated[int, Ge(1)] = 16
    meta_lr: Annotated[float, Gt(0)] = 0.003
    #: Ways of the meta-training episodes; None: dataset.ways. Metric learners such as ProtoNet
    #: train best on harder episodes than they are tested on (Snell et al. used 60 ways).
    ways: Annotated[int, Ge(2)] | None = None
    #: constant, or cosine: meta_lr decays to 0 over `iterations` (per meta-step).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    val_every: Annotated[int, Ge(1)] = 100
    val_episodes: Annotated[int, Ge(1)] = 100
    log_every: Annotated[int, Ge(1)] = 10
    progress: bool = True


class Trainer:
    def __init__(self, algorithm: Algorithm, source: TaskSource, settings: TrainSettings,
                 run_dir: Path, seed: int, saved: dict[str, Any]) -> None:
        self.algorithm, self.source, self.settings = algorithm, source, settings
        self.seed = seed
        self.saved = saved  # config, splits, preprocessing: stored in every checkpoint
        self.checkpoints = run_dir / "checkpoints"
        self.metrics = MetricsLog(run_dir / "metrics.csv")
        self.optimizer = torch.optim.Adam(algorithm.parameters(), lr=settings.meta_lr)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, settings.iterations)
                          if settings.lr_schedule == "cosine" else None)
        self.classification = source.task == "classification"
        self.best: dict[str, Any] = {"iteration": None, "value": None,
                                     "metric": "val_accuracy" if self.classification else "val_loss"}

    def meta_step(self, iteration: int) -> tuple[float, float | None]:
        """One outer step; episodes are numbered so that each (seed, iteration) is fixed."""
        batch = self.settings.meta_batch_size
        ways = self.settings.ways or self.source.ways
        self.optimizer.zero_grad(set_to_none=True)
        losses, accuracies = [], []
        for t in range(batch):
            episode = self.source.episode("train", (iteration - 1) * batch + t, self.seed,
                                          ways, self.source.shots, self.source.query)
            loss, accuracy = self.algorithm.episode_loss(episode, training=True)
            (loss / batch).backward()  # the mean query loss of the meta-batch
            losses.append(loss.detach())
            if accuracy is not None:
                accuracies.append(accuracy.detach())
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        mean_loss = torch.stack(losses).mean().item()
        return mean_loss, (torch.stack(accuracies).mean().item() if accuracies else None)

    def validate(self, iteration: int, elapsed: float) -> None:
        result = evaluate(self.algorithm, self.source, "val", self.settings.val_episodes,
                          self.seed, self.source.ways, self.source.shots, self.source.query)
        value = result.accuracy if self.classification else result.loss
        self.metrics.write(iteration, "val", result.loss,
                           None if math.isnan(result.accuracy) else result.accuracy, None, elapsed)
        better = self.best["value"] is None or (
            value > self.best["value"] if self.classification else value < self.best["value"])
        if better:
            self.best.update(iteration=iteration, value=value)
            self._save("best.pt", iteration)
        self._save("last.pt", iteration)

    def _save(self, name: str, iteration: int) -> None:
        checkpoint.save({
            **self.saved,
            "iteration": iteration,
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_state(),
            "best": dict(self.best),
        }, self.checkpoints / name)

    def fit(self) -> dict[str, Any]:
        """Train for settings.iterations; return the best validation record."""
        s = self.settings
        start = time.perf_counter()
        window_loss, window_acc, window_time, window_n = 0.0, 0.0, 0.0, 0
        # In a log file (SLURM, CI) a bar redrawn twice a second would fill it: every 30 s there.
        bar = tqdm(range(1, s.iterations + 1), disable=not s.progress, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30, desc="meta-train")
        try:
            for iteration in bar:
                t0 = time.perf_counter()
                loss, accuracy = self.meta_step(iteration)
                step_time = time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise UserError(f"train loss is {loss} at iteration {iteration} (split train); "
                                    f"lower train.meta_lr or the algorithm's learning rate.")
                window_loss += loss
                window_acc += accuracy or 0.0
                window_time += step_time
                window_n += 1
                tasks_per_s = s.meta_batch_size / step_time
                postfix = {"loss": f"{loss:.3f}", "tasks/s": f"{tasks_per_s:.1f}"}
                if accuracy is not None:
                    postfix["acc"] = f"{accuracy:.3f}"
                bar.set_postfix(postfix, refresh=False)
                if iteration % s.log_every == 0 or iteration == s.iterations:
                    self.metrics.write(
                        iteration, "train", window_loss / window_n,
                        window_acc / window_n if accuracy is not None else None,
                        window_n * s.meta_batch_size / window_time, time.perf_counter() - start)
                    window_loss, window_acc, window_time, window_n = 0.0, 0.0, 0.0, 0
                if iteration % s.val_every == 0 or iteration == s.iterations:
                    self.validate(iteration, time.perf_counter() - start)
        finally:
            bar.close()
            self.metrics.close()
        return dict(self.best)
