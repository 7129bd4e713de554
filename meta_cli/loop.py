"""The meta-training loop: meta-batches of episodes, Adam on the meta-parameters,
validation, step and best checkpoints, metrics.csv; resumable bit for bit."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from meta_cli import checkpoint
from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.errors import UserError
from meta_cli.evaluation import evaluate
from meta_cli.loggers import CsvLogger
from meta_cli.outputs import MetricsLog
from meta_cli.params import Ge, Gt
from meta_cli.seeding import rng_state, set_rng_state
from meta_cli.stopping import StopRequest, Stopped
from meta_cli.workers import Helpers, backward_tasks, one_thread, shares
from meta_cli.workers import resolve as resolve_workers


@dataclass
class TrainSettings:
    """`train.*`. One iteration = one Adam step on the mean query loss of a meta-batch
    (the algorithm may choose another outer optimizer: Reptile's is SGD)."""

    iterations: Annotated[int, Ge(1)] = 1000
    meta_batch_size: Annotated[int, Ge(1)] = 16
    meta_lr: Annotated[float, Gt(0)] = 0.003
    #: Ways of the meta-training episodes; None: dataset.ways. Metric learners such as ProtoNet
    #: train best on harder episodes than they are tested on (Snell et al. used 60 ways).
    ways: Annotated[int, Ge(2)] | None = None
    #: Query images per class of the meta-training episodes; None: dataset.query. Reptile adapts
    #: on support and query together, and learns from more images per task than it is tested on
    #: (Nichol et al.'s "train shots").
    query: Annotated[int, Ge(1)] | None = None
    #: constant; cosine: meta_lr decays to 0 over `iterations` (per meta-step) along a half
    #: cosine; linear: along a straight line (Nichol et al.'s annealing of Reptile's step).
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    val_every: Annotated[int, Ge(1)] = 100
    val_episodes: Annotated[int, Ge(1)] = 100
    log_every: Annotated[int, Ge(1)] = 10
    #: A step checkpoint every this many iterations (and at every validation and at the end);
    #: a crash loses at most this much work.
    checkpoint_every: Annotated[int, Ge(1)] = 100
    #: How many step checkpoints to keep (best.pt is kept apart); resume falls back through them.
    keep_checkpoints: Annotated[int, Ge(1)] = 3
    #: Clip the meta-gradient to this total norm; None: no clipping.
    clip_grad_norm: Annotated[float, Gt(0)] | None = None
    #: fp32, or bf16: meta-training forward passes under torch.autocast(bfloat16) (~1.7x
    #: faster convolutions on CPUs with AMX/AVX512-BF16, and on GPUs). Adam, the weights and
    #: validation/meta-testing stay float32. auto: bf16 where the device computes it natively,
    #: else fp32 (emulated bf16 would be slower).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    #: CPU processes that share a meta-batch's tasks (this one and workers - 1 helpers, one
    #: thread each): learn2learn's task loop is bound by per-op overhead, which processes run
    #: side by side and threads do not (meta_cli/workers.py). 1: the loop in this process.
    #: auto: one per core (up to the meta-batch) on CPU with learn2learn's loop, else 1.
    workers: Annotated[int, Ge(1)] | Literal["auto"] = 1
    progress: bool = True


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` has bfloat16 arithmetic in hardware (CUDA compute capability 8+,
    or an x86 CPU with AVX512-BF16/AMX, which oneDNN reports)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def schedule(optimizer: torch.optim.Optimizer, kind: str, iterations: int) -> LRScheduler | None:
    """The meta-lr schedule, stepped once per meta-step, reaching 0 at `iterations`."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    if kind == "linear":
        return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, iterations)
    return None


class Trainer:
    def __init__(self, algorithm: Algorithm, source: TaskSource, settings: TrainSettings,
                 run_dir: Path, seed: int, saved: dict[str, Any],
                 make_logger: Callable[[int], CsvLogger] = lambda start: CsvLogger(Path(), start)) -> None:
        self.algorithm, self.source, self.settings = algorithm, source, settings
        self.seed = seed
        self.run_dir = run_dir
        self.saved = saved  # config, splits, preprocessing: stored in every checkpoint
        self.make_logger = make_logger  # called with the first iteration to come
        self.checkpoints = run_dir / "checkpoints"
        self.optimizer = algorithm.meta_optimizer(settings.meta_lr)
        self.scheduler = schedule(self.optimizer, settings.lr_schedule, settings.iterations)
        self.classification = source.task == "classification"
        self._device_type = next(algorithm.parameters()).device.type
        self._bf16 = settings.precision == "bf16" or (settings.precision == "auto" and native_bf16(self._device_type))
        self.best: dict[str, Any] = {"iteration": None, "value": None,
                                     "metric": "val_accuracy" if self.classification else "val_loss"}
        # Everything below is part of a checkpoint, so that a resumed run continues exactly.
        self.iteration = 0
        self.elapsed = 0.0  # training seconds before this process, for elapsed_s
        self.window = [0.0, 0.0, 0.0, 0]  # loss, accuracy, seconds, steps since the last train row
        self.metrics_rows = 0
        self.workers = resolve_workers(settings.workers, algorithm, settings.meta_batch_size, self._device_type)
        self.helpers: Helpers | None = None  # workers > 1: started with the first step

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, Adam, schedule, every RNG, counters."""
        self.algorithm.load_state_dict(payload["algorithm"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        self.best = dict(payload["best"])
        self.iteration = payload["iteration"]
        self.elapsed = payload["elapsed_s"]
        self.window = list(payload["window"])
        self.metrics_rows = payload["metrics_rows"]

    def meta_step(self, iteration: int) -> tuple[float, float | None]:
        """One outer step; episodes are numbered so that each (seed, iteration) is fixed."""
        batch = self.settings.meta_batch_size
        ways = self.settings.ways or self.source.ways
        # Drawn before the first forward: sampling between one task's backward and the next
        # task's forward measured ~3 % slower (docs/benchmarks.md).
        query = self.settings.query or self.source.query
        indices = [(iteration - 1) * batch + t for t in range(batch)]
        own = indices
        self.optimizer.zero_grad(set_to_none=True)
        if self.workers > 1 and self.helpers is None:
            self.helpers = Helpers(self.algorithm, self.saved, self.workers, self.seed)
        # With helpers, this process keeps to one core for the whole step: a two-thread region
        # (sampling, the Adam step) would wait on a core a helper is using (first-order MAML:
        # 1.15x instead of 1.5x the tasks/s of one process).
        with one_thread(self.helpers is not None):
            if self.helpers is not None:
                own, *theirs = shares(indices, self.workers)
                self.helpers.submit(iteration, theirs, ways, self.source.shots, query, batch, self._bf16)
            episodes = [self.source.episode("train", index, self.seed, ways, self.source.shots, query)
                        for index in own]
            with torch.autocast(self._device_type, dtype=torch.bfloat16, enabled=self._bf16):
                mean_loss, mean_accuracy = self._forward_backward(episodes, iteration, batch)
            self._check_gradient(iteration)
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return mean_loss, mean_accuracy

    def _forward_backward(self, episodes: list, iteration: int, batch: int) -> tuple[float, float | None]:
        """Accumulates the meta-gradient of the mean query loss over the `batch` tasks (`episodes`
        here, the rest in the helpers); returns the mean loss and accuracy."""
        if getattr(self.algorithm, "backend", "l2l") == "vmap":
            # The whole meta-batch in one vectorised pass, one backward.
            loss, accuracy = self.algorithm.meta_batch_loss(list(episodes))
            self._check_loss(loss.item(), iteration)
            loss.backward()
            mean_loss, mean_accuracy = loss.item(), (accuracy.item() if accuracy is not None else None)
        else:
            losses, accuracies = backward_tasks(self.algorithm, episodes, batch)
            if self.helpers is not None:
                their_losses, their_accuracies = self.helpers.collect()
                losses += [torch.tensor(x) for x in their_losses]
                accuracies += [torch.tensor(x) for x in their_accuracies]
            mean_loss = torch.stack(losses).mean().item()
            self._check_loss(mean_loss, iteration)
            mean_accuracy = torch.stack(accuracies).mean().item() if accuracies else None
        return mean_loss, mean_accuracy

    @staticmethod
    def _check_loss(mean_loss: float, iteration: int) -> None:
        if not math.isfinite(mean_loss):
            raise UserError(f"the train loss is {mean_loss} at iteration {iteration} (split train); "
                            f"this step was not applied and the checkpoints so far are intact: "
                            f"lower train.meta_lr or the algorithm's learning rate.")

    def _check_gradient(self, iteration: int) -> None:
        grads = [p.grad for p in self.algorithm.parameters() if p.grad is not None]
        if self.settings.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.algorithm.parameters() if p.grad is not None],
                self.settings.clip_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if not math.isfinite(norm.item()):
            raise UserError(f"the meta-gradient norm is {norm.item()} at iteration {iteration} "
                            f"(split train); this step was not applied and the checkpoints so far "
                            f"are intact: lower train.meta_lr or set train.clip_grad_norm.")

    def validate(self, iteration: int, elapsed: float) -> None:
        # As meta-testing: dropout off, running statistics (resnet12, wrn28) used, not updated.
        self.algorithm.eval()
        try:
            result = evaluate(self.algorithm, self.source, "val", self.settings.val_episodes,
                              self.seed, self.source.ways, self.source.shots, self.source.query)
        finally:
            self.algorithm.train()
        if not math.isfinite(result.loss):
            raise UserError(f"the val loss is {result.loss} at iteration {iteration} (split val); "
                            f"the last good checkpoint is kept: lower train.meta_lr.")
        value = result.accuracy if self.classification else result.loss
        val_accuracy = None if math.isnan(result.accuracy) else result.accuracy
        self.metrics.write(iteration, "val", result.loss, val_accuracy, None, elapsed)
        self.logger.log(iteration, "val", {"loss": result.loss, "accuracy": val_accuracy})
        better = self.best["value"] is None or (
            value > self.best["value"] if self.classification else value < self.best["value"])
        if better:
            self.best.update(iteration=iteration, value=value)
            # best.pt before the step checkpoint that records it: a crash in between
            # resumes from the previous step and writes the same best.pt again.
            self._save("best.pt", elapsed)

    def _save(self, name: str, elapsed: float) -> None:
        self.metrics.sync()
        checkpoint.save({
            **self.saved,
            "iteration": self.iteration,
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_state(),
            "best": dict(self.best),
            "elapsed_s": elapsed,
            "window": list(self.window),
            "metrics_rows": self.metrics.rows,
        }, self.checkpoints / name)

    def _commit_step(self, elapsed: float) -> None:
        self._save(checkpoint.step_name(self.iteration), elapsed)
        checkpoint.prune(self.checkpoints, self.settings.keep_checkpoints)

    def fit(self) -> dict[str, Any]:
        """Train up to settings.iterations from self.iteration; return the best validation record."""
        s = self.settings
        start = time.perf_counter() - self.elapsed
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partials(self.checkpoints)
        self.metrics = MetricsLog(self.run_dir / "metrics.csv", keep_rows=self.metrics_rows)
        self.logger = self.make_logger(self.iteration)
        # In a log file (SLURM, CI) a bar redrawn twice a second would fill it: every 30 s there.
        bar = tqdm(range(self.iteration + 1, s.iterations + 1), disable=not s.progress,
                   dynamic_ncols=True, initial=self.iteration, total=s.iterations,
                   mininterval=0.5 if sys.stderr.isatty() else 30, desc="meta-train")
        try:
            with StopRequest() as stop:
                for iteration in bar:
                    self._iterate(iteration, start, bar)
                    if stop.signum is not None:
                        self._stop(stop, time.perf_counter() - start)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, at the last committed checkpoint
            found = checkpoint.latest_committed(self.checkpoints)
            raise Stopped("SIGINT", found[0] if found else 0, str(found[1]) if found else None, 130) from None
        finally:
            bar.close()
            self.metrics.close()
            self.logger.close()
            if self.helpers is not None:
                self.helpers.close()
                self.helpers = None
        return dict(self.best)

    def _iterate(self, iteration: int, start: float, bar: tqdm) -> None:
        s = self.settings
        t0 = time.perf_counter()
        loss, accuracy = self.meta_step(iteration)
        step_time = time.perf_counter() - t0
        self.iteration = iteration
        w = self.window
        w[0] += loss
        w[1] += accuracy or 0.0
        w[2] += step_time
        w[3] += 1
        postfix = {"loss": f"{loss:.3f}", "tasks/s": f"{s.meta_batch_size / step_time:.1f}"}
        if accuracy is not None:
            postfix["acc"] = f"{accuracy:.3f}"
        bar.set_postfix(postfix, refresh=False)
        last = iteration == s.iterations
        if iteration % s.log_every == 0 or last:
            row = {"loss": w[0] / w[3], "accuracy": w[1] / w[3] if accuracy is not None else None,
                   "tasks_per_s": w[3] * s.meta_batch_size / w[2]}
            self.metrics.write(iteration, "train", row["loss"], row["accuracy"], row["tasks_per_s"],
                               time.perf_counter() - start)
            self.logger.log(iteration, "train", row)
            self.window = [0.0, 0.0, 0.0, 0]
        validating = iteration % s.val_every == 0 or last
        if validating:
            self.validate(iteration, time.perf_counter() - start)
        if validating or iteration % s.checkpoint_every == 0:
            self._commit_step(time.perf_counter() - start)

    def _stop(self, stop: StopRequest, elapsed: float) -> None:
        """After a SIGTERM/SIGINT: commit this step (unless just done) and stop (143/130)."""
        name = checkpoint.step_name(self.iteration)
        if not checkpoint.manifest_path(self.checkpoints / name).exists():
            self._commit_step(elapsed)
        raise Stopped(stop.name, self.iteration, str(self.checkpoints / name), stop.exit_code)
