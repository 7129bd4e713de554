"""The files meta-cli writes into a run dir and a sweep dir, and the check that a folder it is
about to write into holds nothing else.

A run given an existing folder (`hydra.run.dir=X`, `hydra.sweep.dir=X`, `resume=`) truncates
metrics.csv to the rows its checkpoint counts, appends to it and to the log, and replaces
accuracy.csv, status.json and the rest whole. Done in a folder meta-cli did not make, that would
destroy the user's files of the same names. So before Hydra writes anything, the pre-flight
refuses a folder that holds a file no meta-cli command writes, or a file of one of our names
whose content is not ours (a CSV with another header, a status.json that is no status): a
meta-cli run dir (a resumed run, a requeued SLURM job, a sweep run again) passes, a user's
folder does not. A run being resumed is meta-cli's already; there only files of our names with
other content are refused. This module is the one list of those files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from meta_cli.errors import UserError
from meta_cli.rundir.outputs import (
    ACCURACY_COLUMNS,
    EPISODE_COLUMNS,
    INSTANCE_COLUMNS,
    JOB_COLUMNS,
    PREDICTION_COLUMNS,
    RETURNS_COLUMNS,
    TASK_RETURNS_COLUMNS,
    is_metrics_header,
)

#: What `report` writes into the folder it reports on (a run dir or a sweep dir).
REPORT_FILES = {"summary.csv", "learning_curves.png", "test_results.png"}

#: Files a job of `train`, `eval` or `predict` writes at the top of its run dir.
RUN_FILES = {
    "train.log", "eval.log", "predict.log",  # Hydra's job log: <command>.log
    "status.json", ".lock", "splits.json", "error.log",
    "metrics.csv", "accuracy.csv", "episodes.csv",  # classification and regression
    "returns.csv", "task_returns.csv",  # meta-RL, in place of accuracy.csv and episodes.csv
    "instances.csv",  # eval.protocol=instances, in place of accuracy.csv and episodes.csv
    "predictions.csv",
    *REPORT_FILES,
}

#: Folders of a run dir, each with a pattern its entries' names match.
RUN_FOLDERS = {
    ".hydra": re.compile(r"^(config|hydra|overrides)\.yaml$"),
    # step-NNNNNNN.pt, best.pt, last.pt, their manifests; `.name.XXXX.part` temp files of a
    # write a crash interrupted (removed when a run starts)
    "checkpoints": re.compile(r"^((step-\d+|best|last)\.(pt|json)|\..+\.part)$"),
    "tensorboard": re.compile(r"^events\.out\.tfevents\..+$"),
}

#: Files and folders of a sweep dir besides its jobs' run dirs (one folder per job).
SWEEP_FILES = {"multirun.yaml", "optimization_results.yaml", *REPORT_FILES}
SWEEP_FOLDERS = {".submitit"}  # submitit's logs and pickles (hydra/launcher=submitit_*)

#: The header line of each CSV of ours (metrics.csv: `is_metrics_header`, whatever the
#: regime's columns; summary.csv: its first columns).
CSV_HEADERS = {
    "accuracy.csv": (ACCURACY_COLUMNS,),
    "episodes.csv": (EPISODE_COLUMNS,),
    "returns.csv": (RETURNS_COLUMNS,),
    "task_returns.csv": (TASK_RETURNS_COLUMNS,),
    "instances.csv": (INSTANCE_COLUMNS,),
    "predictions.csv": (PREDICTION_COLUMNS,),
}
SUMMARY_PREFIX = ",".join(JOB_COLUMNS)

#: A write in progress or interrupted (meta_cli.atomic): `.<name>.<random>.part`.
PARTIAL = re.compile(r"^\..+\.part$")


def _first_line(path: Path) -> str | None:
    """The first line of `path` (None: an empty file, which holds nothing to lose)."""
    with open(path, "rb") as f:
        line = f.readline(4096)
    return line.decode("utf-8", "replace").rstrip("\r\n") if line else None


def _not_ours(path: Path) -> str | None:
    """Why a file with one of our names holds someone else's content, or None."""
    name = path.name
    if path.is_symlink() or not path.is_file():  # a run would write through a link, or fail
        return f"{name} (not a plain file)"
    try:
        if name in CSV_HEADERS or name in ("summary.csv", "metrics.csv"):
            header = _first_line(path)
            if header is None:
                return None
            ours = (header.startswith(SUMMARY_PREFIX) if name == "summary.csv"
                    else is_metrics_header(header) if name == "metrics.csv"
                    else any(header == ",".join(columns) for columns in CSV_HEADERS[name]))
            return None if ours else f"{name} (header '{header[:60]}')"
        if name in ("status.json", "splits.json") and path.stat().st_size:
            data = json.loads(path.read_bytes())  # UTF-8 whatever the locale
            if not isinstance(data, dict) or (name == "status.json" and "status" not in data):
                return f"{name} (not a meta-cli {name.split('.')[0]} record)"
    except (OSError, ValueError) as exc:
        return f"{name} (unreadable: {getattr(exc, 'strerror', None) or exc})"
    return None


def _problems(folder: Path, files: set[str], folders: dict[str, re.Pattern[str] | None],
              prefix: str = "", strict: bool = True) -> list[str]:
    """Entries of `folder` whose content is not ours although their name is, and (`strict`)
    those a meta-cli command would not write; a folder of `folders` with a pattern is checked
    entry by entry, one without is not looked into."""
    found = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name in folders and entry.is_dir() and not entry.is_symlink():
            pattern = folders[name]
            if strict and pattern is not None:
                found += [f"{prefix}{name}/{e.name}" for e in sorted(entry.iterdir()) if not pattern.match(e.name)]
        elif name in files:
            reason = _not_ours(entry)
            if reason:
                found.append(prefix + reason)
        elif strict and (not PARTIAL.match(name) or entry.is_dir()):
            found.append(f"{prefix}{name}{'/' if entry.is_dir() else ''}")
    return found


def run_dir_problems(folder: Path, prefix: str = "", strict: bool = True) -> list[str]:
    """What in an existing run dir a run must not write over (or, `strict`, beside)."""
    return _problems(folder, RUN_FILES, RUN_FOLDERS, prefix, strict)


def sweep_dir_problems(folder: Path) -> list[str]:
    """The same for a sweep dir: its own files, and each job's folder as a run dir."""
    found = _problems(folder, SWEEP_FILES, dict.fromkeys(SWEEP_FOLDERS))
    jobs = [e for e in sorted(folder.iterdir()) if e.is_dir() and not e.is_symlink() and e.name not in SWEEP_FOLDERS]
    found = [f for f in found if f.rstrip("/") not in {j.name for j in jobs}]
    for job in jobs:
        found += run_dir_problems(job, prefix=f"{job.name}/")
    return found


def check_folder(folder: Path, multirun: bool, key: str, resuming: bool = False) -> None:
    """UserError naming what in `folder` (a run dir, or a sweep dir with `multirun`) is not
    meta-cli's; nothing when it does not exist yet or holds only a run's own files."""
    if not folder.is_dir():
        return
    # A resumed run dir is meta-cli's already: a file someone put beside the run's is left
    # alone (a SLURM log, notes); one of our names with other content is still refused.
    found = sweep_dir_problems(folder) if multirun else run_dir_problems(folder, strict=not resuming)
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        advice = (f"move them out of {folder} to resume it" if resuming
                  else f"pick a new or empty folder for {key}PATH, or move them out")
        raise UserError(f"{folder} holds files that are not a meta-cli {'sweep' if multirun else 'run'}'s: "
                        f"{shown}. meta-cli never writes over or beside files it did not create: {advice}.")
