"""Reading the image datasets' files: learn2learn's pickles, image files.

Every failure a user can fix is a one-line UserError naming the file: a missing file, an HTML
page saved in place of a pickle (a failed Google Drive download), a truncated pickle, an
unreadable or truncated image.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from meta_cli.data.download import one_line
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError, warn

#: The image files meta-cli reads, by extension (lower case): image_folder's class folders and
#: `meta-cli predict`'s support and query folders alike.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tif",
                    ".tiff", ".webp")


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


def open_image(source: bytes | Path, where: str) -> Image.Image:
    """An encoded image, loaded; a missing, empty, unreadable or truncated file is a UserError
    naming `where`, and PIL's warning about a huge image one warning line naming it too."""
    try:
        empty = not source if isinstance(source, bytes) else Path(source).stat().st_size == 0
    except OSError:
        empty = False  # a missing or unreadable file: Image.open says which below
    if empty:
        raise UserError(f"image {where} is empty (0 bytes: an interrupted copy or download?); "
                        f"replace or remove it.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()  # truncation fails here
        except UnidentifiedImageError:
            raise UserError(f"cannot decode image {where}: not an image file PIL can read "
                            f"(the extension may not match the contents); replace or remove it.") from None
        except Exception as exc:  # PIL raises many types for a bad file
            raise UserError(f"cannot decode image {where} ({one_line(exc)}); replace or remove it.") from None
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            warn(f"image {where} is very large ({image.size[0]}x{image.size[1]} pixels, over PIL's "
                 f"limit of {Image.MAX_IMAGE_PIXELS}): decoding it takes much memory.")
    return image


def decode_image(source: bytes | Path, where: str, transform: ImageTransform) -> torch.Tensor:
    """An encoded image -> `transform.pixels`, (C, size, size) uint8: the cached pixels of the
    datasets that decode image files, and `meta-cli predict`'s. A missing, unreadable or
    truncated file is a UserError naming `where`."""
    with open_image(source, where) as image:
        try:
            return transform.pixels(image)
        except Exception as exc:  # PIL raises many types for an image it cannot convert
            raise UserError(f"cannot decode image {where} ({one_line(exc)}); replace or remove it.") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (by extension; hidden files skipped), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


