"""Omniglot (Lake et al., 2015) with splits by character that never leak.

learn2learn's `get_tasksets("omniglot")` samples train, val and test tasks from all 1,623
classes; here each character belongs to exactly one split:

- variant=minimal (the two official background_small zips): meta-train on small1's five
  alphabets (Balinese, Early_Aramaic, Greek, Korean, Latin: 136 characters), meta-validate on
  small2's Sanskrit + Tagalog (59), meta-test on small2's Japanese_(katakana) (47). small2's
  Greek and Latin repeat small1's alphabets and are not used.
- variant=full (images_background.zip + images_evaluation.zip, 1,623 characters): the sorted
  characters are shuffled with random.Random(FULL_SPLIT_SEED) and cut 1,100 / 100 / 423 (the
  MAML paper's sizes; proportionally, at least one each, for other character counts).

Images are 28x28, strokes 1 on 0 (`omniglot_files.TRANSFORM`). In meta-training each 90-degree
rotation of a character is a class of its own (Santoro et al., 2016; Finn et al., 2017),
chosen per class; `flips` adds mirror images, `augment` a random affine per image. Validation
and test episodes are never varied.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Literal

from meta_cli.data.image_tensor import ImageTensorSource, PartSpec
from meta_cli.data.omniglot_files import TRANSFORM, decode, ensure_zips, index
from meta_cli.data.sampler import Affine
from meta_cli.errors import UserError
from meta_cli.params import Ge

VARIANT_FILES = {
    "minimal": ["images_background_small1.zip", "images_background_small2.zip"],
    "full": ["images_background.zip", "images_evaluation.zip"],
}
MINIMAL_VAL_ALPHABETS = ("Sanskrit", "Tagalog")
MINIMAL_TEST_ALPHABETS = ("Japanese_(katakana)",)
FULL_SPLIT_SEED = 1623
FULL_SIZES = {"total": 1623, "val": 100, "test": 423}


def _alphabet(character: str) -> str:
    return character.split(":", 1)[1].split("/", 1)[0]


def make_splits(variant: str, characters: list[str]) -> dict[str, list[str]]:
    """Character ids ('<zip stem>:<Alphabet>/<character>') of each split."""
    if variant == "minimal":
        small1 = [c for c in characters if c.startswith("images_background_small1:")]
        small2 = [c for c in characters if c.startswith("images_background_small2:")]
        return {
            "train": small1,
            "val": [c for c in small2 if _alphabet(c) in MINIMAL_VAL_ALPHABETS],
            "test": [c for c in small2 if _alphabet(c) in MINIMAL_TEST_ALPHABETS],
        }
    shuffled = sorted(characters)
    random.Random(FULL_SPLIT_SEED).shuffle(shuffled)  # own RNG: independent of the run's seed
    n = len(shuffled)
    if n < 3:
        raise UserError(f"Omniglot full variant needs at least 3 characters to split; found {n}.")
    n_test = max(1, round(n * FULL_SIZES["test"] / FULL_SIZES["total"]))
    n_val = max(1, round(n * FULL_SIZES["val"] / FULL_SIZES["total"]))
    n_train = n - n_val - n_test
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train:n_train + n_val],
        "test": shuffled[n_train + n_val:],
    }


class Omniglot(ImageTensorSource):
    """Both zips of a variant are one part of the shared image cache, (N, 1, 28, 28) uint8;
    opening the dataset lists the zips and decodes nothing until the first episode."""

    def __init__(
        self,
        root: str,
        variant: Literal["minimal", "full"] = "minimal",
        ways: Annotated[int, Ge(2)] = 5,
        shots: Annotated[int, Ge(1)] = 1,
        query: Annotated[int, Ge(1)] = 5,
        rotations: bool = True,
        flips: bool = True,
        augment: bool = True,
        augment_degrees: Annotated[float, Ge(0)] = 10.0,
        augment_scale: Annotated[float, Ge(0)] = 0.1,
        augment_shift: Annotated[float, Ge(0)] = 0.1,
        augment_shear: Annotated[float, Ge(0)] = 0.0,
        download: bool = True,
        splits: dict[str, list[str]] | None = None,
    ) -> None:
        folder = Path(root).expanduser() / "omniglot"
        zips = ensure_zips(folder, VARIANT_FILES[variant], download)
        part = PartSpec(zips, lambda: decode(zips), f"the Omniglot zips in {folder} are not readable",
                        index=lambda: index(zips))
        affine = Affine(augment_degrees, augment_scale, augment_shift, augment_shear)
        super().__init__(name="omniglot", title=f"omniglot {variant}", folder=folder,
                         parts={"images": part}, transform=TRANSFORM, ways=ways, shots=shots,
                         query=query, splits=splits,
                         default_splits=lambda by_part: make_splits(variant, sorted(by_part["images"])),
                         rotations=rotations, flips=flips, augment=affine if augment else None)
        self.variant = variant
