"""CIFAR-FS (Bertinetto et al., 2019): CIFAR-100 split 64 / 16 / 20 classes of 600 images.

Files: learn2learn 0.2.0's layout (its cifar100.zip, unpacked), in <root>/cifarfs/:
cifar100/data/<class>/*.png and cifar100/splits/bertinetto/{train,val,test}.txt, one class
folder name per line. The split files define the splits, as in `l2l.vision.datasets.CIFARFS`
(which copies them into cifarfs/processed/<split>/; that copy is not needed here).

Preprocessing: 32x32 RGB PNGs (resized with LANCZOS only if not 32x32), scaled to 0..1 as
learn2learn's ToTensor, then normalised per channel with MetaOptNet's CIFAR-100 mean/std
(Lee et al., 2019), by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from meta_cli.data.download import ensure_files, fetch_zip
from meta_cli.data.image_files import decode_image, list_images
from meta_cli.data.image_tensor import Decoded, ImageTensorSource, PartSpec
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.params import Ge

TITLE = "CIFAR-FS"
IMAGE_SIZE = 32
SPLIT_FILES = {p: f"cifar100/splits/bertinetto/{p}.txt" for p in ("train", "val", "test")}
DATA = "cifar100/data"
URL = "https://zenodo.org/record/7978538/files/cifar100.zip"  # learn2learn 0.2.0's first source
# MetaOptNet's CIFAR-100 train-set statistics (129.37731888, 124.10583864, 112.47758569;
# 68.20947949, 65.43124043, 70.45866994) / 255, rounded as in conf/dataset/*.yaml; FC100 too.
MEAN = (0.507362, 0.48669, 0.441089)
STD = (0.267488, 0.256593, 0.276309)


def read_classes(split_file: Path, data: Path) -> dict[str, list[Path]]:
    """The classes a split file lists -> their image files, checked to exist."""
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    missing = [n for n in names if not (data / n).is_dir()]
    if missing:
        raise UserError(f"{split_file} lists {len(missing)} classes without a folder in {data} "
                        f"(e.g. {missing[0]}); unpack the whole cifar100.zip there.")
    return {n: list_images(data / n) for n in names}


def decode(classes: dict[str, list[Path]], transform: ImageTransform) -> Decoded:
    """Class folders -> images (N, 3, 32, 32) uint8 in the order of `classes`."""
    pixels = [decode_image(f, str(f), transform) for files in classes.values() for f in files]
    if not pixels:
        raise UserError(f"no images in the CIFAR-FS class folders {', '.join(classes)}.")
    return Decoded(torch.stack(pixels), list(classes), [len(f) for f in classes.values()])


class CIFARFS(ImageTensorSource):
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
        folder = Path(root).expanduser() / "cifarfs"
        expected = (f"learn2learn's cifar100.zip unpacked ({DATA}/<class>/*.png and "
                    f"cifar100/splits/bertinetto/{{train,val,test}}.txt)")
        ensure_files(folder, list(SPLIT_FILES.values()), download,
                     lambda _: fetch_zip(URL, folder), TITLE, expected)
        parts = {}
        for part, name in SPLIT_FILES.items():
            classes = read_classes(folder / name, folder / DATA)
            sources = [folder / name, *(f for files in classes.values() for f in files)]
            parts[part] = PartSpec(sources, lambda c=classes: decode(c, transform),
                                   f"the CIFAR-FS {part} images in {folder / DATA} are unreadable")
        super().__init__(name="cifarfs", title=TITLE, folder=folder, parts=parts, transform=transform,
                         ways=ways, shots=shots, query=query, splits=splits)
