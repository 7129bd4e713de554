"""Meta-testing shared by `train` (on its best checkpoint) and `eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.evaluation import EvalSettings, evaluate
from meta_cli.outputs import format_table, write_accuracy


def test_rows(algorithm: Algorithm, source: TaskSource, evaluation: EvalSettings,
              choices: dict[str, str], seed: int, checkpoint_path: Path) -> list[dict[str, Any]]:
    """accuracy.csv rows; `choices` are the config group options (algorithm, dataset, backbone)."""
    algorithm.eval()
    rows = []
    for ways, shots, query in evaluation.settings(algorithm, source):
        result = evaluate(algorithm, source, evaluation.split, evaluation.episodes,
                          evaluation.seed, ways, shots, query)
        rows.append({
            "algorithm": choices["algorithm"],
            "dataset": choices["dataset"],
            "backbone": choices["backbone"],
            "ways": ways if source.task == "classification" else None,
            "shots": shots, "query": query, "split": evaluation.split,
            "episodes": result.episodes, "accuracy": result.accuracy, "ci95": result.ci95,
            "loss": result.loss, "seed": seed, "checkpoint": str(checkpoint_path),
        })
    return rows


def write_results(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_accuracy(run_dir / "accuracy.csv", rows)
    print(format_table(rows), flush=True)
