"""Your own images as a few-shot dataset: one folder per class, split by class.

Layouts under dataset.root:
- root/<class>/<images>, or root/<group>/<class>/<images> (groups like Omniglot's alphabets):
  a group level is detected when the top folders hold folders; classes are then named
  '<group>/<class>'. Images are files with an extension of `image_files.IMAGE_EXTENSIONS` (the
  ones `meta-cli predict` reads too); hidden files and other files are skipped, empty class
  folders too.
- Explicit splits: root/train/, root/val/, root/test/, each in one of those layouts, used when
  root holds any of the three (then it must hold all three); classes are named 'train/<class>'.
- Otherwise the sorted classes are shuffled with random.Random(split_seed), an RNG of its own
  (the split depends on neither the run's seed nor anything that ran before), and cut by
  `fractions` (train, val, test; each non-zero fraction gets at least one class).

Preprocessing: the dataset's `ImageTransform(image_size, channels, mean, std)`: images
with transparency composited onto white (black strokes on transparency read as strokes on
paper), converted to RGB (channels=3) or grayscale (channels=1), resized to image_size x image_size
with LANCZOS (the aspect ratio is not kept), scaled to 0..1, then normalised per channel,
(x - mean) / std, when mean and std are set.

The decoded images are cached under META_CLI_CACHE, keyed by the file list (paths, sizes,
mtimes), image_size and channels: adding, removing or editing an image re-decodes its part.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from meta_cli.data.image_files import decode_image, list_images
from meta_cli.data.image_tensor import Decoded, ImageTensorSource, PartSpec
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.params import Ge

SPLIT_FOLDERS = ("train", "val", "test")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(folder: Path, prefix: str = "") -> dict[str, list[Path]]:
    """Class id ('<prefix><class>' or '<prefix><group>/<class>') -> its image files."""
    tops = _subfolders(folder)
    grouped = any(_subfolders(top) for top in tops)
    classes: dict[str, list[Path]] = {}
    for top in tops:
        if not grouped:
            classes[f"{prefix}{top.name}"] = list_images(top)
            continue
        if list_images(top):
            raise UserError(f"{top} holds images next to class folders; use root/<class>/<images> "
                            f"or root/<group>/<class>/<images>, not both.")
        for sub in _subfolders(top):
            classes[f"{prefix}{top.name}/{sub.name}"] = list_images(sub)
    return {c: files for c, files in classes.items() if files}


def split_sizes(n: int, fractions: list[float]) -> tuple[int, int, int]:
    """The train, val and test classes of a cut of n classes by `fractions`."""
    n_val, n_test = (max(1, round(n * f)) if f > 0 else 0 for f in fractions[1:])
    return n - n_val - n_test, n_val, n_test


def split_by_fractions(classes: list[str], fractions: list[float], seed: int) -> dict[str, list[str]]:
    """Seeded, sorted-then-shuffled cut of `classes` into train / val / test."""
    shuffled = sorted(classes)
    random.Random(seed).shuffle(shuffled)  # own RNG: independent of the global one
    n = len(shuffled)
    n_train, n_val, n_test = split_sizes(n, fractions)
    if n_train < 1:
        raise UserError(f"{n} classes are too few to split by dataset.fractions={list(fractions)}; "
                        f"add classes or use root/train, root/val, root/test folders.")
    return {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
            "test": shuffled[n_train + n_val:]}


def find_pools(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """'train', 'val', 'test' -> their classes when root has split folders, else 'all' -> all."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"image folder {folder} is a file, not a folder; set dataset.root (eval: data_root) "
                        f"to the folder that holds the class folders, <class>/<images> (or "
                        f"<group>/<class>/<images>).")
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; set dataset.root (eval: data_root) to a "
                        f"folder of <class>/<images> (or <group>/<class>/<images>).")
    present = [s for s in SPLIT_FOLDERS if (folder / s).is_dir()]
    if present and len(present) < 3:
        raise UserError(f"{folder} has {'/, '.join(present)}/ but not all of train/, val/, test/; "
                        f"add the missing split folders, or remove these to split by dataset.fractions.")
    pools = {s: find_classes(folder / s, f"{s}/") for s in present} or {"all": find_classes(folder)}
    for pool, classes in pools.items():
        if not classes:
            raise UserError(f"no images found in {folder / pool if present else folder}; expected "
                            f"<class>/<images> or <group>/<class>/<images> folders.")
    return pools


def decode(classes: dict[str, list[Path]], transform: ImageTransform) -> Decoded:
    """Class folders -> `transform.pixels` (N, C, size, size) uint8 in the order of `classes`."""
    pixels = [decode_image(f, str(f), transform) for files in classes.values() for f in files]
    return Decoded(torch.stack(pixels), list(classes), [len(files) for files in classes.values()])


class ImageFolder(ImageTensorSource):
    under_data_root = False  # dataset.root is the image folder itself, not a folder holding it

    def __init__(
        self,
        root: str | None,
        ways: Annotated[int, Ge(2)] = 5,
        shots: Annotated[int, Ge(1)] = 1,
        query: Annotated[int, Ge(1)] = 5,
        image_size: Annotated[int, Ge(1)] = 84,
        channels: Literal[1, 3] = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        fractions: list[float] = (0.7, 0.15, 0.15),
        split_seed: Annotated[int, Ge(0)] = 0,
        splits: dict[str, list[str]] | None = None,
    ) -> None:
        if not root:
            raise UserError("set dataset.root to the folder of your images, e.g. "
                            "dataset.root=/data/my_images.")
        transform = ImageTransform.from_config(image_size, channels, mean, std)
        folder = Path(root).expanduser()
        pools = find_pools(folder)
        self.split_rule: dict[str, Any] = {"split": "folders"}
        if "all" in pools:
            _check_fractions(fractions)
            self.split_rule = {"split": "fractions", "fractions": list(fractions),
                               "split_seed": split_seed}
        parts = {p: PartSpec([f for files in classes.values() for f in files],
                             lambda c=classes: decode(c, transform),
                             f"the images in {folder} are not readable")
                 for p, classes in pools.items()}
        super().__init__(name="image-folder", title="image folder", folder=folder, parts=parts,
                         transform=transform, ways=ways, shots=shots, query=query, splits=splits,
                         default_splits=lambda by_part: self._default_splits(by_part, fractions,
                                                                             split_seed))

    @staticmethod
    def _default_splits(by_part: dict[str, list[str]], fractions: list[float],
                        seed: int) -> dict[str, list[str]]:
        if "all" in by_part:
            return split_by_fractions(by_part["all"], fractions, seed)
        return {s: by_part[s] for s in SPLIT_FOLDERS}

    def classes_advice(self, split: str, ways: int) -> str:
        """Where `ways` classes for `split` would come from: more class folders (how many, for
        a cut by fractions), another share, or split folders."""
        if split == "all":
            return f"add class folders to {self.folder}"
        if self.split_rule["split"] == "folders":
            return f"add class folders to {self.folder / split}"
        fractions = self.split_rule["fractions"]
        total, index = sum(len(c) for c in self.splits.values()), SPLIT_FOLDERS.index(split)
        shown = "[" + ", ".join(f"{f:g}" for f in fractions) + "]"
        if fractions[index] == 0:
            return f"give the {split} split a share of dataset.fractions={shown}"
        enough = next((n for n in range(total + 1, 100 * total + 1000) if split_sizes(n, fractions)[index] >= ways), None)
        more = f" (from {enough} classes on, it gets {ways})" if enough else ""
        return (f"{self.folder} has {total} classes and dataset.fractions={shown} gives the {split} split "
                f"{len(self.splits[split])}: add class folders{more}, raise the {split} share of "
                f"dataset.fractions, or split by hand into root/train, root/val, root/test folders")

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["data"].update(self.split_rule)
        return described


def _check_fractions(fractions: list[float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"dataset.fractions must be [train, val, test] fractions >= 0 that sum to 1, "
                        f"train > 0; got {list(fractions)}.")
