"""Reading and fetching the image datasets' files: learn2learn's pickles, PNGs, zips.

Every failure a user can fix is a one-line UserError naming the file: a missing file, an HTML
page saved in place of a pickle (a failed Google Drive download), a truncated pickle, an
unreadable or truncated image.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from meta_cli.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TIMEOUT_S = 60  # per connection attempt and read: offline, fail instead of hanging


def one_line(exc: object) -> str:
    """An exception (or its reason) as one line of text: error messages are one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check_not_html(path: Path, expected: str) -> None:
    """UserError when `path` is empty or an HTML page: a failed (Google Drive) download saved
    as the file; unpickling it would fail with "invalid load key '<'"."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise UserError(f"{path} is empty; delete it and put {expected} there.")
    if head.lstrip()[:1] == b"<":
        raise UserError(f"{path} is an HTML page, not {expected} (a failed download, e.g. Google "
                        f"Drive's quota page); delete it and put the real file there.")


def read_pickle(path: Path, expected: str, encoding: str = "ASCII") -> Any:
    """Unpickle `path` (a dataset file in learn2learn's format); any failure is a UserError.

    Only open dataset files you trust: unpickling can run code, as with learn2learn itself.
    """
    check_not_html(path, expected)
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding=encoding)
    except Exception as exc:  # UnpicklingError, EOFError (truncated), MemoryError, ...
        raise UserError(f"cannot unpickle {path} ({one_line(exc)}): not {expected} or damaged; "
                        f"replace it.")


def decode_image(source: bytes | Path, where: str, size: int, channels: int) -> np.ndarray:
    """An encoded image -> (size, size, channels) uint8, LANCZOS-resized when not that size.

    A missing, unreadable or truncated file is a UserError naming `where`.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return to_pixels(image, size, channels)  # loads: truncation fails here
    except Exception as exc:  # PIL raises many types for a bad file
        raise UserError(f"cannot decode image {where} ({one_line(exc)}); replace or remove it.")


def to_pixels(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image -> (size, size, channels) uint8, LANCZOS-resized when not that size: the
    pixels of the image datasets' files and of images given to `meta-cli predict`."""
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)


def stack_hwc(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, C) uint8 arrays -> one (N, C, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (by extension; hidden files skipped), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def fetch(url: str, destination: Path) -> None:
    """Download `url` (learn2learn 0.2.0's source for the file) to `destination`, renamed into
    place only when whole. Not learn2learn's `download_file`: that one has no timeout (it can
    hang offline) and saves an HTTP error page as the file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_zip(url: str, folder: Path) -> None:
    """Download a zip with `fetch` and unpack it into `folder`."""
    archive = folder / (Path(url).name + ".download")
    fetch(url, archive)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder)
    finally:
        archive.unlink(missing_ok=True)


def data_folder(root: str, sub: str, names: list[str]) -> Path:
    """`<root>/<sub>`, where meta-cli keeps (and downloads) a dataset's files, unless they are
    all directly in `<root>` and not in the subfolder: where learn2learn puts mini-ImageNet's
    and FC100's files, so a folder learn2learn filled is read as it is."""
    base = Path(root).expanduser()
    folder = base / sub
    in_folder = any((folder / n).is_file() for n in names)
    return base if not in_folder and all((base / n).is_file() for n in names) else folder


def ensure_files(folder: Path, names: list[str], download: bool, get: Callable[[list[str]], None],
                 title: str, what: str) -> None:
    """Check that `folder` holds `names`; download the missing ones when allowed (`get`), else
    one UserError naming the files and where they go. `what` describes the expected files."""
    missing = [n for n in names if not (folder / n).is_file()]
    reason = "dataset.download=false"
    if missing and download:
        reason = "the download did not give them"
        try:
            get(missing)
        except Exception as exc:  # URLError, timeouts, a bad zip, a read-only root, ...
            reason = f"download failed: {one_line(getattr(exc, 'reason', exc))}"
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"{title} files missing in {folder}: {', '.join(missing)} ({reason}). Put {what} "
            f"in {folder}/, or point dataset.root (or META_CLI_DATA) at a folder that holds "
            f"{folder.name}/."
        )
