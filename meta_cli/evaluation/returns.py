"""Meta-testing for RL: the mean return over seeded test tasks after 0, 1, 2, 3 adaptation steps.

Each task's return is the mean undiscounted return of its `dataset.trajectories` trajectories;
the interval is over tasks, 1.96 * std / sqrt(tasks) (meta_cli.evaluation.metrics.mean_ci95), as
accuracy.csv's is over episodes. Same weights, tasks and seed -> the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from meta_cli.data.base import Split
from meta_cli.evaluation.metrics import mean_ci95
# returns.csv's and task_returns.csv's columns are kept with every other file's (meta_cli.rundir.outputs).
from meta_cli.rundir.outputs import RETURNS_COLUMNS
from meta_cli.rundir.outputs import TASK_RETURNS_COLUMNS as TASK_COLUMNS
from meta_cli.rl.base import RLAlgorithm
from meta_cli.rl.tasks import RLTaskSource


@dataclass
class StepReturns:
    steps: int            # adaptation steps taken before the rollouts
    tasks: int
    mean: float           # mean over tasks of the task's mean return
    ci95: float
    task_returns: list[float] = field(default_factory=list)  # in task order


def adaptation_returns(algorithm: RLAlgorithm, source: RLTaskSource, split: Split, tasks: int,
                       seed: int, steps: Sequence[int] = (0, 1, 2, 3)) -> list[StepReturns]:
    """Tasks 0 .. tasks-1 of `split` drawn from `seed`, each adapted `max(steps)` times."""
    task_list = source.tasks(split, range(tasks), seed)
    per_step = algorithm.evaluate(task_list, tuple(steps), seed)
    return [StepReturns(k, tasks, *mean_ci95(per_step[k]), per_step[k]) for k in steps]


def returns_rows(results: Sequence[StepReturns], identity: dict[str, Any]) -> list[dict[str, Any]]:
    """returns.csv rows. `identity` holds algorithm, dataset, backbone, split, seed, checkpoint;
    ways and query are empty for RL, shots is the trajectories per adaptation step and
    episodes the number of test tasks."""
    return [{**{c: identity.get(c, "") for c in RETURNS_COLUMNS},
             "episodes": r.tasks, "steps": r.steps, "return": r.mean, "ci95": r.ci95} for r in results]


def task_rows(results: Sequence[StepReturns], source: RLTaskSource, split: Split, seed: int
              ) -> list[dict[str, Any]]:
    """Per-task rows, with each task's parameters (e.g. its goal), for recomputing intervals."""
    tasks = source.tasks(split, range(results[0].tasks), seed) if results else []
    return [{"split": split, "task": t.index, "steps": r.steps, "return": value,
             "params": " ".join(f"{k}={v:.6g}" for k, v in t.params.items())}
            for r in results for t, value in zip(tasks, r.task_returns)]
