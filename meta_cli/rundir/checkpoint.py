"""Checkpoints: committed by a manifest, verified by sha256, read only with weights_only=True.

A checkpoint `X.pt` is written to a temp file in the same folder, fsynced and renamed; then its
manifest `X.json` (iteration, size, sha256) is written the same way. The manifest is the
commit marker: a checkpoint without one, or whose bytes do not match it, is never resumed from.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from meta_cli.rundir import stopping
from meta_cli.atomic import write_atomic
from meta_cli.errors import UserError, warn

FORMAT = "meta-cli-checkpoint/1"
STEP_NAME = re.compile(r"^step-(\d+)\.pt$")


def step_name(iteration: int) -> str:
    return f"step-{iteration:07d}.pt"


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _write_error(path: Path, exc: OSError) -> UserError:
    """The one line for a checkpoint that could not be written, with the command that goes on
    from here: `resume=` where a step checkpoint was committed, else the run's own command
    again (resume= needs a committed checkpoint)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or raise the quota)"
    elif exc.errno == errno.EFBIG:
        fix = "the file system or `ulimit -f` refuses a file this large: lift the limit"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the run dir writable"
    else:
        fix = "fix the file system"
    from meta_cli.rundir.checkpointer import next_step

    state, then = next_step(path.parent.parent)  # <run>/checkpoints/<name>
    return UserError(f"could not write checkpoint {path}: {exc.strerror or exc} "
                     f"(errno {exc.errno}); {state}: {fix}, then {then}")


def save(payload: dict[str, Any], path: Path) -> None:
    """Write `path` and then its manifest; any OSError is one UserError, nothing half-written.

    SIGINT/SIGTERM arriving meanwhile are held until both are written (`stopping.deferred`):
    a second Ctrl-C must not leave a checkpoint without its manifest.
    """
    import torch  # here: the CLI lists and names checkpoints before torch is loaded

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    manifest = {"format": FORMAT, "file": path.name, "iteration": payload.get("iteration"),
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        with stopping.deferred():
            path.parent.mkdir(parents=True, exist_ok=True)
            # An older manifest must not vouch for the file while it is being replaced.
            manifest_path(path).unlink(missing_ok=True)
            write_atomic(path, data)
            write_atomic(manifest_path(path), json.dumps(manifest, indent=1).encode())
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def verify(p: Path, require_manifest: bool) -> bool:
    """Check size and sha256 against the manifest before a single byte is unpickled;
    False when there is no manifest to check against (and none is required)."""
    m = manifest_path(p)
    if not m.exists():
        if require_manifest:
            raise UserError(f"checkpoint {p} has no manifest {m.name}: it was never committed "
                            f"(the run stopped while writing it).")
        return False
    try:
        manifest = json.loads(m.read_text())
        expected_size, expected_sha = int(manifest["bytes"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"manifest {m} of checkpoint {p} is unreadable ({_first_line(exc)}).")
    size = p.stat().st_size
    if size != expected_size:
        what = "truncated" if size < expected_size else "longer than written"
        raise UserError(f"checkpoint {p} is {what}: {size} bytes, its manifest says "
                        f"{expected_size}. Use another checkpoint.")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest != expected_sha:
        raise UserError(f"checkpoint {p} is corrupt: its sha256 {digest[:12]}... differs from "
                        f"the manifest's {expected_sha[:12]}... (changed after it was written). "
                        f"Use another checkpoint.")
    return True


def load(path: str | Path, require_manifest: bool = False) -> dict[str, Any]:
    """Load a meta-cli checkpoint safely; any problem is one UserError naming the file."""
    import torch

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; pass checkpoint=<run dir>/checkpoints/best.pt.")
    if p.is_dir():
        inside = next((c for c in (p / "best.pt", p / "checkpoints" / "best.pt", p / "last.pt",
                                   p / "checkpoints" / "last.pt") if c.is_file()), None)
        hint = (f"did you mean checkpoint={inside}?" if inside else
                "pass a .pt file, e.g. <run dir>/checkpoints/best.pt.")
        raise UserError(f"checkpoint {p} is a directory; {hint}")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes): an interrupted copy? Use another checkpoint.")
    verified = verify(p, require_manifest)
    try:
        # weights_only passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off,
        # and nothing falls back to unpickling arbitrary code.
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"checkpoint {p} was refused: it holds objects other than tensors and "
                        f"plain data ({_first_line(exc)}).")
    except Exception as exc:  # the unpickler fails in many ways on a file that is not ours
        raise UserError(f"checkpoint {p} is not a readable PyTorch file (truncated or not a "
                        f"checkpoint: {type(exc).__name__}: {_first_line(exc)}).")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{p} is not a meta-cli checkpoint (no '{FORMAT}' marker).")
    if not verified:
        warn(f"{p} has no manifest {manifest_path(p).name} beside it; its integrity could not "
             f"be checked (it loaded as tensors and plain data only).")
    return payload


def steps(folder: Path) -> list[tuple[int, Path]]:
    """Step checkpoints in `folder`, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := STEP_NAME.match(p.name))]
    return sorted(found, reverse=True)


def latest_committed(folder: Path) -> tuple[int, Path] | None:
    """The newest step checkpoint with a manifest (not verified: for messages)."""
    return next(((i, p) for i, p in steps(folder) if manifest_path(p).exists()), None)


def latest_valid(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest committed step checkpoint that passes every check; warns for each newer one
    skipped on the way to it (when there is none, the caller says why in its error)."""
    skipped = []
    for _, p in steps(folder):
        try:
            found = p, load(p, require_manifest=True)
        except UserError as exc:
            skipped.append(str(exc))
            continue
        for reason in skipped:  # the load error's own advice ("use another") is what happens here
            reason = reason.removesuffix(" Use another checkpoint.").rstrip(".")
            warn(f"{reason}; falling back to {p.name}, the newest checkpoint that passes its checks.")
        return found
    return None


LAST = "last.pt"


def link_last(path: Path) -> None:
    """Make checkpoints/last.pt the newest committed step checkpoint `path` (as Lightning's
    last.ckpt): a hard link (a copy where links are not supported) renamed into place, then
    its manifest. Like `save`: the old manifest goes first, so last.pt is never vouched for by
    another file's manifest, and signals wait for the commit."""
    last = path.parent / LAST
    manifest = json.loads(manifest_path(path).read_text())
    try:
        with stopping.deferred():
            manifest_path(last).unlink(missing_ok=True)
            temp = path.parent / f".{LAST}.{os.getpid()}.part"
            temp.unlink(missing_ok=True)
            try:
                os.link(path, temp)
            except OSError:
                shutil.copyfile(path, temp)
            os.replace(temp, last)
            write_atomic(manifest_path(last), json.dumps({**manifest, "file": LAST}, indent=1).encode())
    except OSError as exc:
        raise _write_error(last, exc) from exc


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` step checkpoints. The manifest goes first, so a checkpoint
    pruned halfway is uncommitted rather than unverified."""
    for _, p in steps(folder)[keep:]:
        manifest_path(p).unlink(missing_ok=True)
        p.unlink(missing_ok=True)


def remove_partials(folder: Path) -> None:
    """Temp files of writes a crash interrupted."""
    for p in folder.glob(".*.part"):
        p.unlink(missing_ok=True)
