"""Whole-file writes that a crash cannot leave half-done: the one way meta-cli writes a file
that someone reads (checkpoints, CSVs, caches, downloads)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temp file in the same folder, fsynced and
    renamed over `path` when the block ends, removed if it raises. A crash leaves the previous
    file or the new one, never half of one; readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """`data` as the whole of `path`, through `atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)
