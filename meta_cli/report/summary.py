"""summary.csv: every job of a sweep (or one run), its overrides, status and accuracy rows.

Written by the CLI once a multirun returns — also when a job failed, where Hydra skips its
`on_multirun_end` callbacks — and by `meta-cli report`, which also reads interrupted sweeps.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from meta_cli.atomic import write_atomic
from meta_cli.errors import warn
from meta_cli.rundir.checkpointer import setting_overrides
from meta_cli.rundir.outputs import ACCURACY_COLUMNS, JOB_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

#: Sweep dirs started in this process (filled by SweepCallback), for the CLI to summarise.
SWEEP_DIRS: list[Path] = []


class SweepCallback(Callback):
    """Remembers the sweep dir; writes summary.csv when Hydra does call on_multirun_end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP_DIRS.append(Path(str(config.hydra.sweep.dir)).absolute())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from meta_cli.runtime.distributed import env_rank

        if env_rank() == 0:  # rank 0 alone writes
            write_summary(Path(str(config.hydra.sweep.dir)).absolute())


def job_dirs(path: Path) -> list[Path]:
    """The run dirs at or under `path` (those Hydra made: with .hydra/ or status.json)."""
    if (path / ".hydra").is_dir() or (path / "status.json").is_file():
        return [path]
    found = {p.parent for p in path.rglob(".hydra")} | {p.parent for p in path.rglob("status.json")}
    key = lambda p: [int(part) if part.isdigit() else part for part in p.relative_to(path).parts]  # noqa: E731
    return sorted(found, key=key)


def job_record(run: Path) -> dict[str, Any]:
    """status.json, or what can be told without one (a job killed before it started)."""
    record: dict[str, Any] = {"status": "not started", "error": None, "overrides": []}
    status = run / "status.json"
    if status.is_file():
        try:
            stored = json.loads(status.read_text())
            if not isinstance(stored, dict) or "status" not in stored:
                raise ValueError("not a status record")
            record.update(stored)
        except (OSError, ValueError) as exc:
            unreadable_warning(status, _reason(exc), counted=True)
            record.update(status=UNREADABLE, error=f"unreadable status.json: {_reason(exc)}")
    elif (run / ".hydra" / "overrides.yaml").is_file():
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        record["overrides"] = setting_overrides(overrides)
    return record


def _job_name(run: Path, root: Path) -> str:
    return str(run.relative_to(root)) if run != root else run.name


#: Meta-RL's result columns beyond accuracy.csv's (returns.csv: a row per adaptation steps).
RETURN_COLUMNS = ["steps", "return"]
#: A job whose status.json, metrics.csv or result file cannot be read: counted apart, not averaged.
UNREADABLE = "unreadable"
#: What the report needs of each file: its columns, and those of them that hold numbers.
NEEDS = {
    "accuracy.csv": (["ways", "shots", "split", "accuracy", "ci95", "loss"], ["ways", "shots", "accuracy", "ci95", "loss"]),
    "returns.csv": (["shots", "split", "steps", "return", "ci95"], ["shots", "steps", "return", "ci95"]),
    "metrics.csv": (["iteration", "split"], ["iteration", "loss", "accuracy", "return_pre", "return_post"]),
}


class Unreadable(Exception):
    """A job's file that is empty, not CSV, or lacks what the report reads from it."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


def read_job_file(path: Path) -> "pd.DataFrame":
    """accuracy.csv, returns.csv or metrics.csv of a job (NEEDS says what each must hold);
    Unreadable, with the reason, instead of pandas' errors."""
    import pandas as pd

    columns, numeric = NEEDS[path.name]
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise Unreadable("the file is empty") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise Unreadable(f"not a CSV file: {_reason(exc)}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise Unreadable(f"no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}")
    if path.name != "metrics.csv" and frame.empty:
        raise Unreadable("no rows")
    for column in (c for c in numeric if c in frame.columns):
        values = pd.to_numeric(frame[column], errors="coerce")
        if (values.isna() & frame[column].notna()).any():
            raise Unreadable(f"its {column} column holds values that are not numbers")
        frame[column] = values
    return frame


def unreadable_warning(path: Path, reason: str, counted: bool) -> None:
    warn(f"{path} is unreadable ({reason}); " + ("its job is counted as unreadable" if counted
                                                   else "its learning curve is left out") + ", the rest is reported.")


def summary(path: Path) -> "pd.DataFrame":
    """One row per result row of each ok job (accuracy.csv, or a meta-RL run's returns.csv);
    one row per job that has none. An ok job whose metrics.csv or result file cannot be read
    is `unreadable` (with a warning naming the file); a damaged metrics.csv of a job in
    another state only loses its curve."""
    import pandas as pd  # here: Hydra imports this module for its callback at every job start

    path = path.absolute()
    rows: list[dict[str, Any]] = []
    for run in job_dirs(path):
        record = job_record(run)
        overrides = [o for o in record.get("overrides") or [] if not o.startswith("hydra.")]
        base = {"job": _job_name(run, path), "status": record["status"], "error": record["error"],
                "overrides": " ".join(overrides), "run_dir": str(run)}
        # Each override as its own column, for pivoting; accuracy.csv's own columns win.
        for o in overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if key not in ACCURACY_COLUMNS + RETURN_COLUMNS:
                base[key] = value
        results = next((run / name for name in ("accuracy.csv", "returns.csv") if (run / name).is_file()), None)
        found: list[dict[str, Any]] = []
        for file in [f for f in (run / "metrics.csv", results) if f is not None and f.is_file()]:
            try:
                frame = read_job_file(file)
            except Unreadable as exc:
                counted = record["status"] == "ok"
                unreadable_warning(file, str(exc), counted)
                if counted:
                    base.update(status=UNREADABLE, error=f"unreadable {file.name}: {exc}")
                continue
            if file is results:
                found = frame.to_dict("records")
        # eval.protocol=continual: continual.csv is its result (plotted by report/continual.py).
        if base["status"] == "ok" and results is None and not (run / "continual.csv").is_file():
            warn(f"job {base['job']} ({run}) is ok but has no accuracy.csv or returns.csv; it is counted "
                 f"as unreadable, the rest is reported.")
            base.update(status=UNREADABLE, error="no accuracy.csv or returns.csv")
        if base["status"] == "ok" and found:
            rows += [{**base, **result} for result in found]
        else:
            rows.append(base)
    frame = pd.DataFrame(rows)
    results = ACCURACY_COLUMNS + (RETURN_COLUMNS if "return" in frame.columns else [])
    extra = [c for c in frame.columns if c not in JOB_COLUMNS + results]
    # Nullable dtypes: a failed job's empty cells must not turn shots or episodes into floats.
    return frame.reindex(columns=JOB_COLUMNS + extra + results).convert_dtypes()


def write_summary(path: Path, out: Path | None = None, frame: "pd.DataFrame | None" = None) -> Path:
    """summary.csv of the runs under `path`, written into `out` (default `path`)."""
    frame = summary(path) if frame is None else frame
    text = io.StringIO()
    frame.to_csv(text, index=False)
    target = (out or path) / "summary.csv"
    write_atomic(target, text.getvalue().encode())
    return target
