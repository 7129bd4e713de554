"""mini-ImageNet (Vinyals et al., 2016) with Ravi & Larochelle's (2017) class splits.

Files: learn2learn 0.2.0's pickles, in <root>/mini-imagenet/ (or
directly in <root>, where learn2learn keeps them):
mini-imagenet-cache-{train,validation,test}.pkl, each a dict with image_data (N, 84, 84, 3)
uint8 and class_dict {wnid: [indices into image_data]}; 64 / 16 / 20 classes of 600 images.
Each file is one split, as `l2l.vision.datasets.MiniImagenet(mode=...)` reads it; classes
are named by their wnid.

Preprocessing: 84x84 RGB as stored, scaled to 0..1 (learn2learn's MiniImagenet yields 0..255
floats when no transform is set), then normalised per channel with MetaOptNet's mean/std
(Lee et al., 2019; learn2learn's `data_augmentation="lee2019"`), by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from meta_cli.data.download import data_folder, ensure_files, fetch
from meta_cli.data.image_files import read_pickle
from meta_cli.data.image_tensor import Decoded, ImageTensorSource, PartSpec
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.params import Ge

TITLE = "mini-ImageNet"
IMAGE_SIZE = 84
FILES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
         "test": "mini-imagenet-cache-test.pkl"}
URL = "https://zenodo.org/record/7978538/files/{name}"  # learn2learn 0.2.0's first source
# MetaOptNet's mini-ImageNet train-set statistics (120.39586422, 115.59361427, 104.54012653;
# 70.68188272, 68.27635443, 72.54505529) / 255, rounded as in conf/dataset/*.yaml.
MEAN = (0.472141, 0.453308, 0.409961)
STD = (0.277184, 0.26775, 0.28449)
EXPECTED = "a mini-ImageNet pickle (learn2learn's mini-imagenet-cache-*.pkl)"


def decode(path: Path) -> Decoded:
    """One cache pickle -> its images (N, 3, 84, 84) uint8, grouped by wnid (sorted)."""
    data = read_pickle(path, EXPECTED)
    images, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)):
        raise UserError(f"{path}: image_data must be (N, 84, 84, 3) uint8; got "
                        f"{getattr(images, 'shape', type(images).__name__)}; replace the file.")
    classes = sorted(class_dict)
    order = np.concatenate([np.asarray(class_dict[c], dtype=np.int64) for c in classes])
    pixels = torch.from_numpy(images[order]).permute(0, 3, 1, 2).contiguous()
    return Decoded(pixels, [str(c) for c in classes], [len(class_dict[c]) for c in classes])


class MiniImagenet(ImageTensorSource):
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
        folder = data_folder(root, "mini-imagenet", list(FILES.values()))
        ensure_files(folder, list(FILES.values()), download,
                     lambda missing: [fetch(URL.format(name=n), folder / n) for n in missing],
                     TITLE, "learn2learn's mini-imagenet-cache-{train,validation,test}.pkl")
        parts = {split: PartSpec([folder / name], lambda p=folder / name: decode(p),
                                 f"{folder / name} is not {EXPECTED}")
                 for split, name in FILES.items()}
        super().__init__(name="mini-imagenet", title=TITLE, folder=folder, parts=parts,
                         transform=transform, ways=ways, shots=shots, query=query, splits=splits)
