"""Omniglot's official zips: find or download them, decode once, cache as one uint8 tensor."""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from meta_cli.atomic import atomic_file
from meta_cli.data.cache import cache_dir
from meta_cli.data.download import ensure_files, fetch, one_line
from meta_cli.data.image_files import open_image
from meta_cli.errors import UserError

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}"
SOURCE_PAGE = "https://github.com/brendenlake/omniglot/tree/master/python"
MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}
IMAGE_SIZE = 28
CACHE_FORMAT = 1


def ensure_zips(folder: Path, names: list[str], download: bool) -> list[Path]:
    """Paths of the zips, downloading (md5-checked) the missing ones when allowed; else one
    clear error."""
    return ensure_files(folder, names, download,
                        lambda missing: [fetch(URL.format(name=n), folder / n, MD5[n]) for n in missing],
                        "Omniglot", f"the official zips (from {SOURCE_PAGE})")


def list_characters(zip_path: Path) -> dict[str, list[str]]:
    """'Alphabet/characterNN' -> its PNG members, from `<stem>/<Alphabet>/<character>/*.png`."""
    characters: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(zip_path) as z:
            for member in z.namelist():
                parts = member.split("/")
                if len(parts) == 4 and parts[3].lower().endswith(".png"):
                    characters.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{zip_path} is not a readable zip ({exc}); replace it with the official file.")
    if not characters:
        raise UserError(f"{zip_path} holds no <Alphabet>/<character>/*.png images: not an Omniglot zip.")
    return {k: sorted(v) for k, v in sorted(characters.items())}


def _read(z: zipfile.ZipFile, member: str, zip_path: Path) -> bytes:
    try:
        return z.read(member)
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:  # e.g. "Bad CRC-32"
        raise UserError(f"cannot read {member} from {zip_path} ({exc}): the zip is damaged; "
                        f"replace it with the official file.")


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """A black-on-white image (Omniglot's PNGs are 105x105) -> (size, size) uint8 grayscale,
    LANCZOS-resized, inverted so that strokes are bright (255 = stroke).

    The one definition of the pixels a model sees: the training data and `meta-cli predict`
    both go through it. Any PIL error propagates; `decode` names the file.
    """
    image = image.convert("L").resize((size, size), Image.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)


def decode(data: bytes, where: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Image file bytes -> `preprocess`ed (size, size) uint8; a bad file is a UserError
    naming `where`."""
    with open_image(data, where) as image:
        try:
            return preprocess(image, size)
        except Exception as exc:  # PIL raises many types for a bad image
            raise UserError(f"cannot decode image {where} ({one_line(exc)}); replace or remove it.") from None


def _cache_dir() -> Path:
    """META_CLI_CACHE or ~/.cache/meta-cli: never beside the zips, which may be shared."""
    return cache_dir("omniglot")


def load_images(zips: list[Path]) -> tuple[torch.Tensor, list[str], list[np.ndarray]]:
    """Decode every character image of `zips` (cached).

    Returns images (N, 28, 28) uint8, character ids '<zip stem>:<Alphabet>/<character>' and,
    per character, the indices of its images.
    """
    stat = [(str(z.resolve()), z.stat().st_size, z.stat().st_mtime_ns) for z in zips]
    key = hashlib.sha256(repr((CACHE_FORMAT, IMAGE_SIZE, stat)).encode()).hexdigest()[:16]
    cache = _cache_dir() / f"omniglot-{IMAGE_SIZE}px-{key}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            offsets = blob["offsets"].tolist()
            groups = [np.arange(a, b) for a, b in zip(offsets[:-1], offsets[1:])]
            return blob["images"], list(blob["characters"]), groups
        except Exception:
            pass  # a stale or damaged cache is rebuilt below
    images, characters, offsets = [], [], [0]
    for zip_path in zips:
        with zipfile.ZipFile(zip_path) as z:
            for character, members in list_characters(zip_path).items():
                characters.append(f"{zip_path.stem}:{character}")
                images.extend(decode(_read(z, m, zip_path), f"{zip_path}:{m}") for m in members)
                offsets.append(len(images))
    tensor = torch.from_numpy(np.stack(images))
    blob = {"images": tensor, "characters": characters, "offsets": torch.tensor(offsets)}
    with atomic_file(cache) as f:  # parallel jobs may race here; each writes a whole file
        torch.save(blob, f)
    groups = [np.arange(a, b) for a, b in zip(offsets[:-1], offsets[1:])]
    return tensor, characters, groups
