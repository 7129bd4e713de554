"""One trainer per run dir: an `fcntl` lock on `<run dir>/.lock`, held while a process trains there.

Two processes training into one run dir (a `resume=` started while the run still trains)
would both append to metrics.csv and overwrite each other's checkpoints. The lock is an
advisory `flock` on a file in the run dir: the kernel releases it when the holder exits, also
by SIGKILL or a crash, so a dead run never leaves a stale lock behind. The file itself records
who holds it (PID, host, start time) for the message of the process that is refused.

`eval`, `report` and `predict` only read a run dir and never take the lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from meta_cli.errors import UserError

NAME = ".lock"

#: Locks this process holds, by resolved run dir: the CLI takes the lock before Hydra writes
#: into a resumed run dir, and the job then finds it already held by its own process.
_held: dict[Path, int] = {}


def holder(run_dir: Path) -> str:
    """Who holds the lock of `run_dir`, as recorded in the lock file ('unknown' if unreadable)."""
    try:
        info = json.loads((run_dir / NAME).read_text())
        return f"PID {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no record of which)"


def acquire(run_dir: Path) -> None:
    """Hold the lock of `run_dir` until `release` or the end of this process.

    Raises UserError naming the holder when another live process holds it, before anything
    in the run dir is touched (the lock file aside, which only ever holds the holder's record).
    """
    key = run_dir.resolve()
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"run dir {run_dir} is in use: {holder(run_dir)} is training in it. Wait for "
                        f"it to end (or stop it with Ctrl-C / kill), then resume; eval, report and "
                        f"predict may run beside it.") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = fd


def release(run_dir: Path) -> None:
    """Give the lock up (a sweep's next job may train elsewhere in this same process)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def held(run_dir: Path) -> bool:
    """Whether some live process holds the lock of `run_dir` (this one included)."""
    if run_dir.resolve() in _held:
        return True
    try:
        fd = os.open(run_dir / NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
