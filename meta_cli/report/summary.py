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
            record.update(json.loads(status.read_text()))
        except ValueError:
            record.update(status="unknown", error=f"unreadable {status}")
    elif (run / ".hydra" / "overrides.yaml").is_file():
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        record["overrides"] = setting_overrides(overrides)
    return record


def _job_name(run: Path, root: Path) -> str:
    return str(run.relative_to(root)) if run != root else run.name


#: Meta-RL's result columns beyond accuracy.csv's (returns.csv: a row per adaptation steps).
RETURN_COLUMNS = ["steps", "return"]


def summary(path: Path) -> "pd.DataFrame":
    """One row per result row of each ok job (accuracy.csv, or a meta-RL run's returns.csv);
    one row per job that has none."""
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
        if record["status"] == "ok" and results is not None:
            for result in pd.read_csv(results).to_dict("records"):
                rows.append({**base, **result})
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
