"""Finding a dataset's files, or downloading them: the one download path of every dataset.

A download goes through `atomic_file` (a temp file renamed into place only when whole and,
where a checksum is known, verified), so a failed or interrupted one never leaves a partial
file that a later run would take for the real one. Folders made for a download that failed
are removed again: a wrong data root must not fill up with empty dataset folders.
Not learn2learn's `download_file`: that one has no timeout (it can hang offline) and saves an
HTTP error page as the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from meta_cli.atomic import atomic_file
from meta_cli.errors import UserError

TIMEOUT_S = 60  # per connection attempt and read: offline, fail instead of hanging


def one_line(exc: object) -> str:
    """An exception (or its reason) as one line of text: error messages are one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def made_folders(folder: Path) -> Iterator[None]:
    """Create `folder` (and missing parents) for the block; if the block raises, remove the
    ones created here again, as far as they are empty."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def fetch(url: str, destination: Path, checksum: str | None = None) -> None:
    """Download `url` to `destination`, renamed into place only when whole (and its md5 equal
    to `checksum`, when given)."""
    digest = hashlib.md5()
    with made_folders(destination.parent):
        with atomic_file(destination) as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
            if checksum is not None and digest.hexdigest() != checksum:
                raise OSError(f"md5 mismatch for the downloaded {destination.name}")


def fetch_zip(url: str, folder: Path) -> None:
    """Download a zip with `fetch` and unpack it into `folder`."""
    archive = folder / (Path(url).name + ".download")
    with made_folders(folder):
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
                 title: str, what: str) -> list[Path]:
    """The paths of `names` in `folder`; the missing ones are downloaded when allowed (`get`),
    else one UserError naming the files and where they go. `what` describes the files."""
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
            f"{title} files missing in {folder}: {', '.join(missing)} ({reason}). Put {what} in "
            f"{folder}/, or point the data root at a folder that holds {folder.name}/: "
            f"dataset.root= (train), data_root= (eval), or META_CLI_DATA."
        )
    return [folder / n for n in names]
