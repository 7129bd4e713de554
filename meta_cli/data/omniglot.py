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

Images are 28x28, strokes 1 on 0. In meta-training each 90-degree rotation of a character is
a class of its own (Santoro et al., 2016; Finn et al., 2017), chosen per class.
"""
from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from meta_cli.data.base import Episode, Split, TaskSource, episode_rng
from meta_cli.data.cache import cache_dir
from meta_cli.data.omniglot_files import (
    IMAGE_SIZE,
    ensure_zips,
    list_characters,
    load_images,
)
from meta_cli.data.sampler import Affine, ClassBatches, ClassSampler
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


class Omniglot(ClassBatches, TaskSource):
    task = "classification"
    input_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(
        self,
        root: str,
        variant: Literal["minimal", "full"] = "minimal",
        ways: Annotated[int, Ge(2)] = 5,
        shots: Annotated[int, Ge(1)] = 1,
        query: Annotated[int, Ge(1)] = 5,
        rotations: bool = True,
        flips: bool = False,
        augment: bool = False,
        augment_degrees: Annotated[float, Ge(0)] = 10.0,
        augment_scale: Annotated[float, Ge(0)] = 0.1,
        augment_shift: Annotated[float, Ge(0)] = 0.1,
        augment_shear: Annotated[float, Ge(0)] = 0.0,
        download: bool = True,
        splits: dict[str, list[str]] | None = None,
    ) -> None:
        self.folder = Path(root).expanduser() / "omniglot"
        self.variant, self.ways, self.shots, self.query = variant, ways, shots, query
        self.rotations, self.flips, self.augment = rotations, flips, augment
        self.affine = Affine(augment_degrees, augment_scale, augment_shift, augment_shear)
        self.zips = ensure_zips(self.folder, VARIANT_FILES[variant], download)
        cache_dir("omniglot")  # an unwritable cache is refused here, in the pre-flight
        counts: dict[str, int] = {}
        for z in self.zips:
            for character, members in list_characters(z).items():
                counts[f"{z.stem}:{character}"] = len(members)
        self.splits = splits or make_splits(variant, sorted(counts))
        unknown = [c for split in self.splits.values() for c in split if c not in counts]
        if unknown:
            raise UserError(
                f"the saved split names {len(unknown)} characters not in {self.folder} "
                f"(e.g. {unknown[0]}): this checkpoint was trained on other Omniglot files."
            )
        self._images_per_class = {s: min(counts[c] for c in chars) for s, chars in self.splits.items()}
        self.title = f"omniglot {variant}"
        self.device = torch.device("cpu")
        self._samplers: dict[str, ClassSampler] = {}

    def num_classes(self, split: Split) -> int:
        if split != "train":
            return len(self.splits[split])
        return len(self.splits[split]) * (4 if self.rotations else 1) * (2 if self.flips else 1)

    def images_per_class(self, split: Split) -> int:
        return self._images_per_class[split]

    def to(self, device: torch.device) -> "Omniglot":
        self.device = torch.device(device)
        self._samplers.clear()
        return self

    def _sampler(self, split: Split) -> ClassSampler:
        if not self._samplers:
            images, characters, groups = load_images(self.zips)
            pixels = images.to(self.device).float().div_(255).unsqueeze(1)  # (N, 1, 28, 28)
            by_name = dict(zip(characters, groups))
            for s, chars in self.splits.items():
                training = s == "train"
                self._samplers[s] = ClassSampler(pixels, [by_name[c] for c in chars],
                                                 rotations=self.rotations and training,
                                                 flips=self.flips and training,
                                                 augment=self.affine if self.augment and training else None)
        return self._samplers[split]

    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        return self._sampler(split).sample(episode_rng(seed, split, index), ways, shots, query)

    def describe(self) -> dict[str, Any]:
        return {
            "splits": self.splits,
            "preprocessing": {
                "image_size": IMAGE_SIZE, "channels": 1, "resize": "lanczos",
                "invert": True, "scale": "0..1, strokes = 1",
                "train_rotations": self.rotations, "train_flips": self.flips,
                "train_augment": self.augment,
                "train_affine": asdict(self.affine) if self.augment else None,
            },
        }
