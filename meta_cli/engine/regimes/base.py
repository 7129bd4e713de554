"""The contract of a learning regime: how an algorithm learns, from the pre-flight to the meta-test.

An algorithm names its regime by dotted path (`Algorithm.regime`, as configs name `_target_`);
the engine (`build`, the Trainer, the apps) calls the regime and never asks which family an
algorithm belongs to. A regime owns:

- `check(spec)`: the pre-flight checks of a training job that depend on how it learns
  (which `train.*` keys apply, what the data must give), without building a model;
- `build(config, source)`: the model, from the config's nodes and the opened data;
- `step(iteration)`: one outer step on this process's share of the work;
- `validate(iteration)`, `metric`, `better`: the number that picks best.pt;
- `meta_test(evaluation, identity, out)`: the final test and the files it writes;
- `columns` of metrics.csv, and `single_process` (why it cannot share a run between
  processes, or None when it can);
- `state_dict()` / `load_state_dict()`: its optimizer and schedule, for checkpoints.
"""
from __future__ import annotations

import abc
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from hydra.utils import get_object
from torch import nn

from meta_cli.runtime.distributed import World
from meta_cli.errors import UserError
from meta_cli.rundir.outputs import METRICS_LEADING, METRICS_TRAILING

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec
    from meta_cli.evaluation.episodes import EvalSettings
    from meta_cli.engine.settings import TrainSettings

#: metrics.csv's first and last columns, whatever the regime: its own go between (kept with
#: every run file's columns, where the pre-flight reads them without torch).
LEADING, TRAILING = METRICS_LEADING, METRICS_TRAILING


@dataclass
class StepResult:
    """What one outer step reports: mean loss and accuracy (None for regression and RL) over
    its `items` (tasks or images) and any regime-specific metrics (RL's returns)."""

    loss: float
    accuracy: float | None
    items: int
    metrics: dict[str, float] = field(default_factory=dict)


def regime_of(algorithm: type | str) -> type["Regime"]:
    """The Regime class an algorithm class (or its `_target_`) learns in."""
    cls = get_object(algorithm) if isinstance(algorithm, str) else algorithm
    path = getattr(cls, "regime", None)
    if not isinstance(path, str):
        raise UserError(f"{cls.__name__} names no learning regime (class attribute `regime`, the "
                        f"dotted path of a meta_cli.engine.regimes class).")
    return get_object(path)


class Regime(abc.ABC):
    """A way of learning. Built once per job around the model and its opened data source."""

    name: ClassVar[str]
    #: metrics.csv columns of this regime, between `LEADING` and `TRAILING`.
    columns: ClassVar[tuple[str, ...]] = ("loss", "accuracy")
    #: Why a run of this regime cannot be shared between processes; None: it can.
    single_process: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, source: Any, world: World = World(),
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.source, self.world, self.device = model, source, world, device
        self.settings: TrainSettings | None = None
        self.seed = 0

    # -- the pre-flight and the build ----------------------------------------------------
    @classmethod
    def metrics_columns(cls) -> list[str]:
        return [*LEADING, *cls.columns, *TRAILING]

    @classmethod
    @abc.abstractmethod
    def check(cls, spec: "TrainSpec") -> None:
        """Raise UserError for a training job this regime cannot run; builds no model."""

    @classmethod
    @abc.abstractmethod
    def check_eval(cls, algorithm: dict[str, Any], source: Any, evaluation: "EvalSettings",
                   outputs: int) -> None:
        """Raise UserError for meta-test settings this regime cannot honour with a model of
        this `algorithm` node and `outputs` outputs, on `source` (train's and eval's)."""

    @classmethod
    @abc.abstractmethod
    def build(cls, config: dict[str, Any], source: Any, classes: int | None = None) -> nn.Module:
        """The model of a checked config on the opened `source` (`classes`: of the training
        split, for a model sized by them; eval and predict pass the checkpoint's)."""

    @classmethod
    def check_world(cls, train: "TrainSettings", size: int) -> None:
        """Refusals that depend on the number of processes sharing the run: made in the
        pre-flight (had the ranks found them, Hydra would have made a run dir already), and by
        each rank of a launch the pre-flight did not size (SLURM)."""
        if size == 1:
            return
        if cls.single_process:
            raise UserError(f"{cls.single_process}; set distributed.processes=1, not {size}.")
        if train.meta_batch_size < size:
            raise UserError(f"train.meta_batch_size={train.meta_batch_size} has fewer tasks than the {size} "
                            f"processes that share each meta-batch; use fewer processes "
                            f"(distributed.processes) or a larger train.meta_batch_size.")

    @classmethod
    def prepare_process(cls) -> None:
        """Process settings the regime's numbers depend on (meta-RL: one intra-op thread)."""

    # -- training ------------------------------------------------------------------------
    def start(self, settings: "TrainSettings", seed: int, bf16: bool, threads: int | None = 1) -> None:
        """Make what training needs besides the model: the outer optimizer, the schedule.
        `threads`: the intra-op threads validation runs at (eval.threads)."""
        self.settings, self.seed, self.bf16, self.threads = settings, seed, bf16, threads

    @abc.abstractmethod
    def step(self, iteration: int) -> StepResult:
        """One outer step (1-based `iteration`), applied to the model on every process."""

    def reschedule(self, iterations: int | None, done: int = 0) -> None:
        """Lay the lr schedule over `iterations` steps, `done` of them taken (a time budget's
        decision); None: no schedule, the first lr, while the budget is probed."""

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and schedule's state (the weights are the Trainer's to keep)."""
        return {"optimizer": None, "scheduler": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""

    #: The validation metric's name in the best record, e.g. "val_accuracy".
    metric: str = "val_accuracy"

    def better(self, value: float, best: float) -> bool:
        return value > best

    @abc.abstractmethod
    def validate(self, iteration: int) -> tuple[float, dict[str, float | None]]:
        """The metric that picks best.pt, and the values of metrics.csv's val row."""

    # -- meta-testing --------------------------------------------------------------------
    @abc.abstractmethod
    def meta_test_size(self, evaluation: "EvalSettings") -> int:
        """The episodes (or tasks) the meta-test runs: a time budget keeps their time back."""

    @abc.abstractmethod
    def meta_test(self, evaluation: "EvalSettings", identity: dict[str, Any], out: Path) -> float:
        """Meta-test the model, write the result files into `out` (rank 0) and print the table;
        returns the headline number. `identity`: algorithm, dataset, backbone, seed, checkpoint."""


def check_loss(loss: float, iteration: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the train loss is {loss} at iteration {iteration} (split train); this step "
                        f"was not applied and the checkpoints so far are intact: lower train.meta_lr "
                        f"or the algorithm's learning rate.")


def apply_gradient(optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor],
                   clip: float | None, iteration: int) -> None:
    """The outer update, unless the gradient is not finite (clipped to `clip` first, if set)."""
    with_grad = [p for p in parameters if p.grad is not None]
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    if not math.isfinite(norm.item()):
        raise UserError(f"the meta-gradient norm is {norm.item()} at iteration {iteration} (split train); "
                        f"this step was not applied and the checkpoints so far are intact: lower "
                        f"train.meta_lr or set train.clip_grad_norm.")
    optimizer.step()


def autocast(device_type: str, bf16: bool) -> Any:
    """bf16 autocast of the forward passes, or nothing (train.precision)."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()


class GradientUpdate:
    """The update every gradient-based regime ends its step with: this process's share is
    backpropagated (`backward`, its forward passes under `autocast()`), the summed metrics checked, the gradients
    summed across processes, the outer optimizer stepped (unless the gradient is not finite),
    running statistics averaged, the schedule stepped."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 world: World, clip: float | None, bf16: bool) -> None:
        self.model, self.optimizer, self.scheduler, self.world = model, optimizer, scheduler, world
        self.clip, self.bf16 = clip, bf16
        self.parameters = list(model.parameters())
        self.device_type = self.parameters[0].device.type

    def __call__(self, iteration: int, backward: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        """`backward()` returns this share's sums of loss and accuracy; returns them summed over
        every process."""
        self.optimizer.zero_grad(set_to_none=True)
        sums = backward()
        loss_sum, accuracy_sum = self.world.sum(list(sums))
        check_loss(loss_sum, iteration)
        self.world.all_reduce_grads(self.parameters)
        apply_gradient(self.optimizer, self.parameters, self.clip, iteration)
        # Running statistics (resnet12, wrn28): each process saw its share, so their average is
        # the estimate over the whole meta-batch (rank 0's alone would drop the others'); every
        # rank then holds the same model.
        self.world.buffers_mean(list(self.model.buffers()))
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_sum, accuracy_sum

    def reschedule(self, kind: str, iterations: int | None, done: int) -> None:
        """The schedule `kind` over `iterations` steps, `done` of them taken (None: none)."""
        self.scheduler = None if iterations is None else schedule(self.optimizer, kind, iterations)
        for _ in range(done if self.scheduler is not None else 0):
            self.scheduler.step()

    def autocast(self) -> Any:
        """The precision of this run's forward passes (train.precision)."""
        return autocast(self.device_type, self.bf16)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def schedule(optimizer: Any, kind: str, iterations: int) -> Any:
    """The meta-lr schedule, stepped once per meta-step, reaching 0 at `iterations`."""
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, iterations)
