"""tiered-ImageNet (Ren et al., 2018): 351 / 97 / 160 classes from disjoint ImageNet categories.

Files: learn2learn 0.2.0's layout, in <root>/tiered-imagenet/: {train,val,test}_images_png.pkl
(a list of PNG-encoded 84x84 images) and {train,val,test}_labels.pkl (a dict whose
label_specific holds each image's class index within its file). Each pair is one split, as
`l2l.vision.datasets.TieredImagenet(mode=...)` reads it; classes are named '<split>/<index>'
since the indices restart in each file.

Preprocessing: PNGs decoded to 84x84 RGB (resized with LANCZOS only if not 84x84), scaled to
0..1, normalised per channel with MetaOptNet's mini-ImageNet mean/std (Lee et al., 2019;
learn2learn's `data_augmentation="lee2019"` uses them for tiered-ImageNet too), by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from meta_cli.data.download import ensure_files, fetch
from meta_cli.data.image_files import decode_image, read_pickle
from meta_cli.data.image_tensor import Decoded, ImageTensorSource, PartSpec
from meta_cli.data.mini_imagenet import MEAN, STD
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.params import Ge

TITLE = "tiered-ImageNet"
IMAGE_SIZE = 84
PARTS = ("train", "val", "test")
URL = "https://zenodo.org/record/7978538/files/tiered-imagenet-{name}"  # learn2learn 0.2.0's source


def files(part: str) -> list[str]:
    return [f"{part}_images_png.pkl", f"{part}_labels.pkl"]


def decode(folder: Path, part: str, transform: ImageTransform) -> Decoded:
    """One split's pickles -> images (N, 3, 84, 84) uint8 grouped by class index."""
    images_path, labels_path = (folder / name for name in files(part))
    images = read_pickle(images_path, "a tiered-ImageNet *_images_png.pkl")
    labels = np.asarray(read_pickle(labels_path, "a tiered-ImageNet *_labels.pkl")["label_specific"],
                        dtype=np.int64)
    if len(labels) != len(images):
        raise UserError(f"{labels_path} has {len(labels)} labels but {images_path} holds "
                        f"{len(images)} images; use the two files of one download.")
    # Filled in place, channels first: the train split is 9.5 GB, too big to copy once more.
    pixels = torch.empty((len(labels), *transform.shape), dtype=torch.uint8)
    for row, i in enumerate(np.argsort(labels, kind="stable")):
        pixels[row] = decode_image(bytes(images[i]), f"number {i} of {images_path}", transform)
    classes, counts = np.unique(labels, return_counts=True)
    return Decoded(pixels, [f"{part}/{c}" for c in classes.tolist()], counts.tolist())


class TieredImagenet(ImageTensorSource):
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
        folder = Path(root).expanduser() / "tiered-imagenet"
        ensure_files(folder, [n for p in PARTS for n in files(p)], download,
                     lambda missing: [fetch(URL.format(name=n), folder / n) for n in missing],
                     TITLE, "learn2learn's {train,val,test}_images_png.pkl and "
                     "{train,val,test}_labels.pkl")
        parts = {p: PartSpec([folder / n for n in files(p)], lambda p=p: decode(folder, p, transform),
                             f"{folder}/{p}_*.pkl are not tiered-ImageNet pickles")
                 for p in PARTS}
        super().__init__(name="tiered-imagenet", title=TITLE, folder=folder, parts=parts,
                         transform=transform, ways=ways, shots=shots, query=query, splits=splits)
