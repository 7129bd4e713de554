"""What a run writes besides its checkpoints: metrics.csv through `MetricsLog`, the result
CSVs (accuracy.csv, episodes.csv, ...), whole and atomically; the one text-table formatter of
the CLI."""
from __future__ import annotations

import contextlib
import csv
import io
import math
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from meta_cli.atomic import write_atomic

#: metrics.csv's first and last columns, whatever the regime: its own go between
#: (meta_cli.engine.regimes.base.Regime.columns).
METRICS_LEADING, METRICS_TRAILING = ("iteration", "split"), ("tasks_per_s", "elapsed_s")
#: dataset: the one the model was trained on; eval_dataset: the one it was meta-tested on (the
#: same, but for `meta-cli eval dataset=NAME`: e.g. "image_folder:/data/crops"). test_settings:
#: the test-time keys an eval gave (`algorithm.head=logistic ...`; empty: the checkpoint's
#: own), which tell two evals of one checkpoint apart.
ACCURACY_COLUMNS = ["algorithm", "dataset", "eval_dataset", "backbone", "ways", "shots", "query", "split",
                    "episodes", "accuracy", "ci95", "loss", "seed", "checkpoint", "test_settings"]
EPISODE_COLUMNS = ["dataset", "eval_dataset", "ways", "shots", "query", "split", "episode", "accuracy", "loss"]
#: instances.csv (eval.protocol=instances): accuracy at the instance-th presentation of a class
#: in sequences that show each of `ways` classes `presentations` times.
INSTANCE_COLUMNS = ["algorithm", "dataset", "backbone", "ways", "presentations", "instance", "split", "episodes",
                    "accuracy", "ci95", "seed", "checkpoint", "test_settings"]
#: returns.csv (meta-RL): accuracy.csv's identifying columns, then the adaptation steps and the return.
RETURNS_COLUMNS = ["algorithm", "dataset", "backbone", "ways", "shots", "query", "split", "episodes",
                   "steps", "return", "ci95", "seed", "checkpoint", "test_settings"]
#: task_returns.csv (meta-RL; episodes.csv's counterpart): one row per (task, steps).
TASK_RETURNS_COLUMNS = ["split", "task", "steps", "return", "params"]
#: continual.csv (eval.protocol=continual): one row per (classes learned, split_kind: heldout =
#: the classes' held-out images, stream = the stream's own training images) at the rate eval_lr;
#: `split` val rows are the rate selection's (every rate), test rows the chosen rate's; `status`
#: ok, or diverged (a non-finite loss in some stream: no accuracy). Regression (incremental
#: sine): `loss` is the MSE over all functions, `accuracy` empty. learner: eval.learner (model,
#: oracle, scratch).
CONTINUAL_COLUMNS = ["classes", "split_kind", "accuracy", "ci95", "streams", "eval_lr", "split", "status",
                     "learner", "loss", "algorithm", "dataset", "backbone", "seed", "checkpoint"]
#: predictions.csv of `meta-cli predict`.
PREDICTION_COLUMNS = ["path", "predicted_class", "score"]
#: summary.csv's leading columns (then one per override key, then the result's columns).
JOB_COLUMNS = ["job", "status", "error", "overrides", "run_dir"]


def is_metrics_header(line: str) -> bool:
    """Whether `line` (without its newline) is the header of a meta-cli metrics.csv, of any regime."""
    names = line.split(",")
    return (len(names) > len(METRICS_LEADING) + len(METRICS_TRAILING)
            and tuple(names[:len(METRICS_LEADING)]) == METRICS_LEADING
            and tuple(names[-len(METRICS_TRAILING):]) == METRICS_TRAILING)


def cell(value: Any) -> Any:
    """A CSV cell: empty for None/NaN, floats to 6 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class MetricsLog:
    """metrics.csv (and TensorBoard) through the run's logger: a train row every
    `train.log_every` steps, a val row per validation.

    Only rank 0 writes (`writes=True`); the other ranks hold one that writes nothing but counts
    the rows it would have written, so that every rank's state (a checkpoint's row count
    included) is the same. A resumed run cuts the file back to the rows its checkpoint counts.
    """

    def __init__(self, make_logger: Callable[..., Any], columns: list[str], writes: bool = True) -> None:
        self.make_logger, self.columns, self.writes = make_logger, columns, writes
        self.rows = 0  # data rows of metrics.csv that belong to the run so far
        self._logger: Any = None

    @contextlib.contextmanager
    def opened(self, start_iteration: int) -> Iterator["MetricsLog"]:
        """The logger open for the block, metrics.csv cut back to the rows the run counts."""
        if not self.writes:
            yield self
            return
        self._logger = self.make_logger(columns=self.columns, keep_rows=self.rows,
                                        start_iteration=start_iteration)
        try:
            yield self
        finally:
            self._logger.close()
            self._logger = None

    def row(self, iteration: int, split: str, values: dict[str, Any]) -> None:
        self.rows += 1
        if self.writes:
            self._logger.log(iteration, split, values)

    def sync(self) -> None:
        """The rows so far on disk: before a checkpoint that counts them is committed."""
        if self._logger is not None:
            self._logger.sync()


def write_csv(path: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    """A whole CSV file, written atomically; keys outside `columns` are ignored."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(row.get(k)) for k in columns})
    write_atomic(path, text.getvalue().encode())


def write_accuracy(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_csv(path, ACCURACY_COLUMNS, rows)


def write_continual(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_csv(path, CONTINUAL_COLUMNS, rows)


def write_episodes(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One row per meta-test episode (episode = its index from eval.seed)."""
    write_csv(path, EPISODE_COLUMNS, rows)


def display_width(text: str) -> int:
    """The terminal columns `text` takes: East Asian wide and fullwidth characters (`クラス`)
    two each, combining marks and format characters (a zero-width joiner) none, others one."""
    width = 0
    for char in text:
        if unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def text_table(rows: Any, columns: list[str] | None = None) -> str:
    """Rows (dicts, or a DataFrame) as an aligned text table: a header line, then one line per
    row, each column as wide as its widest cell on a terminal (`display_width`); empty cells
    for missing values. The one table formatter of the CLI (train/eval results, report, predict)."""
    if hasattr(rows, "to_dict"):  # a pandas DataFrame
        columns = columns or [str(c) for c in rows.columns]
        rows = rows.astype(object).where(rows.notna(), "").to_dict("records")
    columns = columns or list(rows[0]) if rows else (columns or [])
    cells = [[str(cell(row.get(c))) for c in columns] for row in rows]
    lines = [columns, *cells]
    widths = [max(display_width(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(text + " " * (w - display_width(text)) for text, w in zip(line, widths)).rstrip()
                     for line in lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """accuracy.csv rows for the terminal: accuracy ± ci95 in %, or the loss ± ci95."""
    shown = []
    for row in rows:
        cells = {k: row.get(k) for k in ("algorithm", "dataset", "ways", "shots", "query", "split", "episodes")}
        if row.get("eval_dataset") not in (None, row.get("dataset")):  # meta-tested on another dataset
            cells = {"algorithm": cells.pop("algorithm"), "dataset": cells.pop("dataset"),
                     "eval_dataset": row["eval_dataset"], **cells}
        if row.get("accuracy") is not None and not math.isnan(row["accuracy"]):
            cells["accuracy"], cells["loss"] = f"{100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f} %", row["loss"]
        else:
            cells["accuracy"], cells["loss"] = None, f"{row['loss']:.4f} +- {row['ci95']:.4f}"
        if row.get("test_settings"):
            cells["test_settings"] = row["test_settings"]
        shown.append(cells)
    return text_table(shown)
