"""Meta-testing shared by `train` (on its best checkpoint) and `eval`: accuracy.csv and
episodes.csv, or for meta-RL returns.csv and task_returns.csv."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.distributed import World
from meta_cli.evaluation import EvalSettings, evaluate
from meta_cli.outputs import (
    format_table,
    text_table,
    write_accuracy,
    write_csv,
    write_episodes,
)
from meta_cli.runlog import show


def test_rows(algorithm: Algorithm, source: TaskSource, evaluation: EvalSettings,
              choices: dict[str, str], seed: int, checkpoint_path: Path,
              world: World = World(), test_settings: str = "") -> list[dict[str, Any]]:
    """accuracy.csv rows; `choices` are the config group options (algorithm, dataset, backbone),
    `test_settings` the test-time keys an eval gave. With several processes each meta-tests
    its share of the episodes (`evaluate`)."""
    algorithm.eval()
    rows: list[dict[str, Any]] = []
    for ways, shots, query in evaluation.settings(source):
        result = evaluate(algorithm, source, evaluation.split, evaluation.episodes,
                          evaluation.seed, ways, shots, query, world, evaluation.threads)
        rows.append({
            "algorithm": choices["algorithm"],
            "dataset": choices["dataset"],
            "backbone": choices["backbone"],
            "ways": ways if source.task == "classification" else None,
            "shots": shots, "query": query, "split": evaluation.split,
            "episodes": result.episodes, "accuracy": result.accuracy, "ci95": result.ci95,
            "loss": result.loss, "seed": seed, "checkpoint": str(checkpoint_path),
            "test_settings": test_settings, "_episodes": result,
        })
    return rows


def write_results(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """accuracy.csv, episodes.csv (every episode of every row), and the table on stdout."""
    write_episodes(run_dir / "episodes.csv", [
        {"ways": r["ways"], "shots": r["shots"], "query": r["query"], "split": r["split"],
         "episode": i, "loss": loss,
         "accuracy": r["_episodes"].episode_accuracies[i] if r["_episodes"].episode_accuracies else None}
        for r in rows for i, loss in enumerate(r["_episodes"].episode_losses)])
    write_accuracy(run_dir / "accuracy.csv", rows)
    show(format_table(rows))


def meta_test(algorithm: Any, source: Any, evaluation: EvalSettings, choices: dict[str, str], seed: int,
              checkpoint_path: Path, world: World, out: Path, test_settings: str = "") -> float:
    """Meta-test the loaded `algorithm`, write its files into `out` (rank 0) and print the
    table; returns the headline number (accuracy, test MSE, or the return after the
    algorithm's adaptation steps). `test_settings`: the test-time keys an eval gave."""
    if source.task == "rl":
        from meta_cli.rl import evaluation as rl

        results = rl.adaptation_returns(algorithm, source, evaluation.split, evaluation.tasks, evaluation.seed)
        identity = {**choices, "split": evaluation.split, "seed": seed, "checkpoint": str(checkpoint_path),
                    "shots": source.trajectories, "test_settings": test_settings}
        rows = rl.returns_rows(results, identity)
        if world.main:
            write_csv(out / "returns.csv", list(rl.RETURNS_COLUMNS), rows)
            write_csv(out / "task_returns.csv", list(rl.TASK_COLUMNS),
                      rl.task_rows(results, source, evaluation.split, evaluation.seed))
            show(text_table([{**r, "return": f"{r['return']:.2f} +- {r['ci95']:.2f}"} for r in rows],
                            ["algorithm", "dataset", "split", "episodes", "steps", "return",
                             *(["test_settings"] if test_settings else [])]))
        return next(r.mean for r in results if r.steps == algorithm.adaptation_steps)
    rows = test_rows(algorithm, source, evaluation, choices, seed, checkpoint_path, world, test_settings)
    if world.main:
        write_results(out, rows)
    return rows[0]["accuracy"] if source.task == "classification" else rows[0]["loss"]
