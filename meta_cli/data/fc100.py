"""FC100 (Oreshkin et al., 2018): CIFAR-100 split by superclass, 60 / 20 / 20 classes.

Files: learn2learn 0.2.0's (MetaOptNet's) pickles, in <root>/fc100/ (or
directly in <root>, where learn2learn keeps them):
FC100_{train,val,test}.pickle, each a Python 2 pickle (read with latin1, as learn2learn does)
of a dict with data (N, 32, 32, 3) uint8 and labels (N,) CIFAR-100 class indices. Each file
is one split, as `l2l.vision.datasets.FC100(mode=...)` reads it; classes are named
'<split>/<label>'.

Preprocessing: 32x32 RGB as stored, scaled to 0..1 as learn2learn's ToTensor, then normalised
per channel with MetaOptNet's CIFAR-100 mean/std (Lee et al., 2019), by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from meta_cli.data.cifarfs import MEAN, STD
from meta_cli.data.download import data_folder, ensure_files, fetch_zip
from meta_cli.data.image_files import read_pickle
from meta_cli.data.image_tensor import Decoded, ImageTensorSource, PartSpec
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.params import Ge

TITLE = "FC100"
IMAGE_SIZE = 32
FILES = {p: f"FC100_{p}.pickle" for p in ("train", "val", "test")}
URL = "https://zenodo.org/record/7978538/files/fc100.zip"  # learn2learn 0.2.0's first source
EXPECTED = "an FC100 pickle (learn2learn's FC100_*.pickle)"


def decode(path: Path, part: str) -> Decoded:
    """One pickle -> its images (N, 3, 32, 32) uint8 grouped by label."""
    archive = read_pickle(path, EXPECTED, encoding="latin1")
    images, labels = archive["data"], np.asarray(archive["labels"], dtype=np.int64)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.shape == (len(labels), IMAGE_SIZE, IMAGE_SIZE, 3)):
        got = getattr(images, "shape", type(images).__name__)
        raise UserError(f"{path}: data must be ({len(labels)}, 32, 32, 3) uint8, one image per label; "
                        f"got {got}; replace the file.")
    order = np.argsort(labels, kind="stable")
    classes, counts = np.unique(labels, return_counts=True)
    pixels = torch.from_numpy(images[order]).permute(0, 3, 1, 2).contiguous()
    return Decoded(pixels, [f"{part}/{c}" for c in classes.tolist()], counts.tolist())


class FC100(ImageTensorSource):
    def __init__(
        self,
        root: str,
        ways: Annotated[int, Ge(2)] = 5,
        shots: Annotated[int, Ge(1)] = 1,
        query: Annotated[int, Ge(1)] = 15,
        mean: list[float] | None = MEAN,
        std: list[float] | None = STD,
        download: bool = True,
        splits: dict[str, list[str]] | None = None,
    ) -> None:
        transform = ImageTransform.from_config(IMAGE_SIZE, 3, mean, std)
        folder = data_folder(root, "fc100", list(FILES.values()))
        ensure_files(folder, list(FILES.values()), download, lambda _: fetch_zip(URL, folder),
                     TITLE, "learn2learn's FC100_{train,val,test}.pickle (fc100.zip unpacked)")
        parts = {p: PartSpec([folder / n], lambda p=p, n=n: decode(folder / n, p),
                             f"{folder / n} is not {EXPECTED}")
                 for p, n in FILES.items()}
        super().__init__(name="fc100", title=TITLE, folder=folder, parts=parts, transform=transform,
                         ways=ways, shots=shots, query=query, splits=splits)
