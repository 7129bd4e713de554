"""Checkpoints: written atomically, read only with weights_only=True."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from meta_cli.errors import UserError

FORMAT = "meta-cli-checkpoint/1"


def save(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: a crash leaves
    the previous file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load(path: str | Path) -> dict[str, Any]:
    """Load a meta-cli checkpoint safely; any problem is one UserError naming the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; pass checkpoint=<run dir>/checkpoints/best.pt.")
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a directory; pass the .pt file, e.g. {p}/checkpoints/best.pt.")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes): an interrupted copy? Use another checkpoint.")
    try:
        # weights_only passed explicitly: it never falls back to unpickling arbitrary code.
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"checkpoint {p} was refused: it holds objects other than tensors and "
                        f"plain data ({_first_line(exc)}).")
    except Exception as exc:  # the unpickler fails in many ways on a file that is not ours
        raise UserError(f"checkpoint {p} is not a readable PyTorch file (truncated or not a "
                        f"checkpoint: {_first_line(exc)}).")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{p} is not a meta-cli checkpoint (no '{FORMAT}' marker).")
    return payload
