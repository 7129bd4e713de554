"""Where the learning curve goes: `logger=csv` (metrics.csv, always) or `logger=tensorboard`
(metrics.csv and TensorBoard scalars)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Annotated, Any

from meta_cli.atomic import write_atomic
from meta_cli.errors import UserError
from meta_cli.rundir.outputs import cell, is_metrics_header
from meta_cli.params import Gt


class CsvLogger:
    """metrics.csv: a train row every `train.log_every` iterations and a val row per validation,
    flushed per row so a crash loses nothing written.

    `rows` counts the data rows; a checkpoint stores it, and a resumed run first cuts the file
    back to that count (`keep_rows`), so rows written after the checkpoint are neither lost nor
    duplicated. `columns` come from the run's kind (classification and regression: loss,
    accuracy; meta-RL: returns) between iteration/split and tasks_per_s/elapsed_s.
    """

    injected = ("run_dir", "columns", "keep_rows", "start_iteration")

    def __init__(self, run_dir: Path, columns: list[str], keep_rows: int = 0, start_iteration: int = 0) -> None:
        self.path = run_dir / "metrics.csv"
        self.columns = columns
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if lines and not is_metrics_header(lines[0].rstrip("\r\n")):
            # The pre-flight refuses such a run dir (meta_cli.rundir.files); this guards a job
            # started without it: never cut or append to a file meta-cli did not write.
            raise UserError(f"{self.path} is not a meta-cli metrics.csv (its header is "
                            f"'{lines[0].strip()[:60]}'); it is left as it is: train into another run dir.")
        if not keep_rows:  # a fresh start: no rows to keep, and the header is this run's own
            lines = []
        data = lines[1:]
        if self.path.exists() and (not lines or len(data) != keep_rows):
            write_atomic(self.path, "".join(lines[:1] + data[:keep_rows]).encode())
            data = data[:keep_rows]
        self.rows = len(data)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if not lines:
            self._writer.writerow(columns)
            self._file.flush()

    def log(self, iteration: int, split: str, values: dict[str, Any]) -> None:
        """One row; `values` holds the columns other than iteration and split (missing: empty)."""
        row = {"iteration": iteration, "split": split, **values}
        try:
            self._writer.writerow([cell(row.get(c)) for c in self.columns])
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
        from meta_cli.rundir.checkpointer import next_step

        state, then = next_step(self.path.parent)
        return UserError(f"could not write {self.path}: {exc.strerror or exc} (errno {exc.errno}); "
                         f"{state}: fix the disk, then {then}")

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger(CsvLogger):
    """metrics.csv, and scalars `<split>/<name>` in <run dir>/tensorboard/.

    A resumed run purges the events after its checkpoint, as metrics.csv is cut back, so no
    step appears twice: `tensorboard --logdir outputs/`.
    """

    def __init__(self, run_dir: Path, columns: list[str], keep_rows: int = 0, start_iteration: int = 0,
                 flush_secs: Annotated[int, Gt(0)] = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard package: "
                            "pip install 'meta-cli[tensorboard]' (scripts/setup.sh installs it).") from None
        super().__init__(run_dir, columns, keep_rows, start_iteration)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=flush_secs,
                                    purge_step=start_iteration + 1 if start_iteration else None)

    def log(self, iteration: int, split: str, values: dict[str, Any]) -> None:
        super().log(iteration, split, values)
        for name, value in values.items():
            if isinstance(value, (int, float)) and name != "elapsed_s":
                self.writer.add_scalar(f"{split}/{name}", value, iteration)

    def close(self) -> None:
        super().close()
        self.writer.close()
