"""Learning from rollouts (meta-RL): the algorithm samples a meta-batch of tasks' trajectories
and makes its own outer update (TRPO's line search, PPO's epochs); validation and the
meta-test are returns after adaptation (returns.csv)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from meta_cli.engine.instantiate import instantiate
from meta_cli.engine.regimes.base import Regime, StepResult
from meta_cli.errors import UserError
from meta_cli.evaluation.episodes import EvalSettings
from meta_cli.rundir.outputs import text_table, write_csv
from meta_cli.runlog import show

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec


class Rollouts(Regime):
    """Step i samples tasks `(i - 1) * meta_batch_size ...` of the train split and hands them
    to `RLAlgorithm.meta_step`; all randomness comes from (seed, iteration, task), so a step
    is a pure function of the weights and resuming replays nothing."""

    name = "rollouts"
    columns = ("loss", "return_pre", "return_post", "kl", "policy_std", "rollout_s")
    single_process = ("meta-RL runs in one process (its outer step is TRPO's line search over the "
                      "whole meta-batch)")
    metric = "val_return"

    @classmethod
    def check(cls, spec: "TrainSpec") -> None:
        spec.algorithm.check_task(spec.source.task)
        for key in ("ways", "query", "batch_size"):
            if getattr(spec.train, key) is not None:
                raise UserError(f"train.{key} does not apply to meta-RL; leave it null.")
        if spec.config["device"]["kind"] == "cuda":
            raise UserError("meta-RL runs on the CPU (its environments step in NumPy and its policies are "
                            "small): use device=cpu or device=auto.")
        cls.check_eval(spec.config["algorithm"], spec.source, spec.evaluation, 1)

    @classmethod
    def check_eval(cls, algorithm: dict[str, Any], source: Any, evaluation: EvalSettings,
                   outputs: int) -> None:
        """Meta-RL meta-tests `eval.tasks` tasks (its seed and split); no other eval.* key
        shapes them, and each is refused by name."""
        for key in evaluation.changed():
            if key not in ("tasks", "seed", "split"):
                instead = ("; set eval.tasks (the number of test tasks) instead" if key == "episodes"
                           else " (its trajectories per step are dataset.trajectories)" if key == "shots" else "")
                raise UserError(f"eval.{key} does not apply to meta-RL, which meta-tests eval.tasks tasks "
                                f"(returns.csv, on one thread); leave eval.{key} unset{instead}.")

    @classmethod
    def build(cls, config: dict[str, Any], source: Any, classes: int | None = None) -> nn.Module:
        return instantiate(config["algorithm"], source=source)

    @classmethod
    def prepare_process(cls) -> None:
        # The policies' small matrix products gain nothing from threads, and a run repeats bit
        # for bit only at the thread count it started with.
        torch.set_num_threads(1)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.model.outer_state_dict(), "scheduler": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_outer_state_dict(state["optimizer"])

    def step(self, iteration: int) -> StepResult:
        batch = self.settings.meta_batch_size
        tasks = self.source.tasks("train", range((iteration - 1) * batch, iteration * batch), self.seed)
        metrics = self.model.meta_step(tasks, iteration, self.seed)
        return StepResult(metrics.get("loss_after", math.nan), None, batch, metrics)

    def validate(self, iteration: int) -> tuple[float, dict[str, float | None]]:
        from meta_cli.evaluation.returns import adaptation_returns

        steps = self.model.adaptation_steps
        before, after = adaptation_returns(self.model, self.source, "val", self.settings.val_episodes,
                                           self.seed, (0, steps))
        return after.mean, {"return_pre": before.mean, "return_post": after.mean}

    def meta_test_size(self, evaluation: EvalSettings) -> int:
        return evaluation.tasks

    def meta_test(self, evaluation: EvalSettings, identity: dict[str, Any], out: Path) -> float:
        from meta_cli.evaluation import returns as rl

        results = rl.adaptation_returns(self.model, self.source, evaluation.split, evaluation.tasks,
                                        evaluation.seed)
        rows = rl.returns_rows(results, {**identity, "split": evaluation.split,
                                         "shots": self.source.trajectories})
        if self.world.main:
            write_csv(out / "returns.csv", list(rl.RETURNS_COLUMNS), rows)
            write_csv(out / "task_returns.csv", list(rl.TASK_COLUMNS),
                      rl.task_rows(results, self.source, evaluation.split, evaluation.seed))
            show(text_table([{**r, "return": f"{r['return']:.2f} +- {r['ci95']:.2f}"} for r in rows],
                            ["algorithm", "dataset", "split", "episodes", "steps", "return",
                             *(["test_settings"] if identity.get("test_settings") else [])]))
        return next(r.mean for r in results if r.steps == self.model.adaptation_steps)
