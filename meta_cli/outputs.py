"""The run dir's CSV files: metrics.csv (learning curve) and accuracy.csv (meta-test)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

from meta_cli.atomic import write_atomic
from meta_cli.errors import UserError

METRICS_COLUMNS = ["iteration", "split", "loss", "accuracy", "tasks_per_s", "elapsed_s"]
ACCURACY_COLUMNS = ["algorithm", "dataset", "backbone", "ways", "shots", "query", "split",
                    "episodes", "accuracy", "ci95", "loss", "seed", "checkpoint"]


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class MetricsLog:
    """Appends rows to metrics.csv, flushed per row so a crash loses nothing written.

    `rows` counts the data rows; a checkpoint stores it, and a resumed run first cuts the file
    back to that count, so rows written after the checkpoint are neither lost nor duplicated.
    """

    def __init__(self, path: Path, keep_rows: int | None = None) -> None:
        self.path = path
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        data = lines[1:]
        if keep_rows is not None and len(data) != keep_rows:
            write_atomic(path, "".join(lines[:1] + data[:keep_rows]).encode())
            data = data[:keep_rows]
        self.rows = len(data)
        self._file = open(path, "a", newline="")
        self._writer = csv.writer(self._file)
        if not lines:
            self._writer.writerow(METRICS_COLUMNS)
            self._file.flush()

    def write(self, iteration: int, split: str, loss: float, accuracy: float | None,
              tasks_per_s: float | None, elapsed_s: float) -> None:
        try:
            self._writer.writerow([_cell(v) for v in (iteration, split, loss, accuracy, tasks_per_s, elapsed_s)])
            self._file.flush()
        except OSError as exc:
            raise self._error(exc) from exc
        self.rows += 1

    def sync(self) -> None:
        """Make the rows so far durable before a checkpoint that counts them is committed."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> UserError:
        return UserError(f"could not write {self.path}: {exc.strerror or exc} (errno {exc.errno}); "
                         f"the last checkpoint is intact: fix the disk and resume the run.")

    def close(self) -> None:
        self._file.close()


EPISODE_COLUMNS = ["ways", "shots", "query", "split", "episode", "accuracy", "loss"]


def write_csv(path: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    """A whole CSV file, written atomically; keys outside `columns` are ignored."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    write_atomic(path, text.getvalue().encode())


def write_accuracy(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_csv(path, ACCURACY_COLUMNS, rows)


def write_episodes(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One row per meta-test episode (episode = its index from eval.seed)."""
    write_csv(path, EPISODE_COLUMNS, rows)


def format_table(rows: list[dict[str, Any]]) -> str:
    """accuracy.csv rows as an aligned text table for the terminal."""
    shown = ["algorithm", "dataset", "ways", "shots", "query", "split", "episodes", "accuracy", "loss"]
    lines = []
    for row in rows:
        cells = {k: _cell(row.get(k)) for k in shown}
        if row.get("accuracy") is not None and not math.isnan(row["accuracy"]):
            cells["accuracy"] = f"{100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f} %"
        else:
            cells["loss"] = f"{row['loss']:.4f} +- {row['ci95']:.4f}"
        lines.append(cells)
    widths = {k: max(len(k), *(len(str(c[k])) for c in lines)) for k in shown}
    out = ["  ".join(k.ljust(widths[k]) for k in shown)]
    out += ["  ".join(str(c[k]).ljust(widths[k]) for k in shown) for c in lines]
    return "\n".join(out)
