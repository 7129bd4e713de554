"""Omniglot's official zips: find or download them (md5-checked), list and decode them."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import torch

from meta_cli.data.download import ensure_files, fetch
from meta_cli.data.image_files import decode_image
from meta_cli.data.image_tensor import Decoded
from meta_cli.data.transform import ImageTransform
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
#: The PNGs are black strokes on white, 105x105: grayscale, LANCZOS to 28x28, inverted so
#: that strokes are 255 (1 as model inputs) on 0.
TRANSFORM = ImageTransform(IMAGE_SIZE, 1, invert=True)


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


def index(zips: list[Path]) -> tuple[list[str], list[int]]:
    """Character ids '<zip stem>:<Alphabet>/<character>' and their image counts, in the order
    `decode` gives them, from the zips' listings alone (nothing is decoded)."""
    listed = [(f"{z.stem}:{c}", len(members)) for z in zips for c, members in list_characters(z).items()]
    return [c for c, _ in listed], [n for _, n in listed]


def _read(z: zipfile.ZipFile, member: str, zip_path: Path) -> bytes:
    try:
        return z.read(member)
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:  # e.g. "Bad CRC-32"
        raise UserError(f"cannot read {member} from {zip_path} ({exc}): the zip is damaged; "
                        f"replace it with the official file.")


def decode(zips: list[Path], transform: ImageTransform = TRANSFORM) -> Decoded:
    """Every character image of `zips`, zip by zip and character by character (sorted) as
    `index` lists them: images (N, 1, 28, 28) uint8 (`transform.pixels`). A bad image is a
    UserError naming '<zip>:<member>'."""
    images, classes, counts = [], [], []
    for zip_path in zips:
        with zipfile.ZipFile(zip_path) as z:
            for character, members in list_characters(zip_path).items():
                classes.append(f"{zip_path.stem}:{character}")
                counts.append(len(members))
                images.extend(decode_image(_read(z, m, zip_path), f"{zip_path}:{m}", transform)
                              for m in members)
    return Decoded(torch.stack(images), classes, counts)
