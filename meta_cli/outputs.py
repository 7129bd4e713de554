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


def text_table(rows: Any, columns: list[str] | None = None) -> str:
    """Rows (dicts, or a DataFrame) as an aligned text table: a header line, then one line per
    row, each column as wide as its widest cell; empty cells for missing values. The one
    table formatter of the CLI (train/eval results, report, predict)."""
    if hasattr(rows, "to_dict"):  # a pandas DataFrame
        columns = columns or [str(c) for c in rows.columns]
        rows = rows.astype(object).where(rows.notna(), "").to_dict("records")
    columns = columns or list(rows[0]) if rows else (columns or [])
    cells = [[str(_cell(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """accuracy.csv rows for the terminal: accuracy ± ci95 in %, or the loss ± ci95."""
    shown = []
    for row in rows:
        cells = {k: row.get(k) for k in ("algorithm", "dataset", "ways", "shots", "query", "split", "episodes")}
        if row.get("accuracy") is not None and not math.isnan(row["accuracy"]):
            cells["accuracy"], cells["loss"] = f"{100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f} %", row["loss"]
        else:
            cells["accuracy"], cells["loss"] = None, f"{row['loss']:.4f} +- {row['ci95']:.4f}"
        shown.append(cells)
    return text_table(shown)
