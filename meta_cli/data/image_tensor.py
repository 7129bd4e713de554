"""Image datasets held as one uint8 tensor per part of their files, sampled by class.

The base of every image dataset: Omniglot, mini-/tiered-ImageNet, CIFAR-FS, FC100 and
`image_folder`. A dataset names its parts (one per split file: "train", "val", "test"; or
one for all its files) with the files each is read from and a decoder. Each part is decoded
once into the pixels of the dataset's `ImageTransform`, (N, C, H, W) uint8 sorted by class,
and cached under META_CLI_CACHE (default ~/.cache/meta-cli), keyed by the files' paths,
sizes and mtimes and the transform's pixel settings: data folders are often shared or
read-only, so nothing is written beside them. At a split's first episode its part moves to
the training device as uint8, and `ClassSampler` indexes it; the images of each episode
become model inputs (`ImageTransform.to_input`: 0..1, mean/std) as they are drawn.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from meta_cli.atomic import atomic_file, write_atomic
from meta_cli.data.base import Episode, Split, TaskSource, episode_rng
from meta_cli.data.cache import cache_dir
from meta_cli.data.download import one_line
from meta_cli.data.sampler import Affine, ClassBatches, ClassSampler
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError

CACHE_FORMAT = 3  # 2: keyed by ImageTransform.pixel_key; 3: transparency composited (transform.flatten)
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass
class Decoded:
    """One part: images (N, C, H, W) uint8, the first counts[0] of class classes[0], ..."""

    images: torch.Tensor
    classes: list[str]
    counts: list[int]


@dataclass
class PartSpec:
    """Where a part comes from: the files that key its cache and the decoder that reads them.

    `decode` raises UserError for bad data it recognises; any other exception is reported
    as `what` (e.g. "/data/x.pkl is not a mini-ImageNet pickle") being malformed. `index`,
    when given, lists the part's classes and image counts (as `decode` will order them)
    without decoding: opening the dataset (the pre-flight) then decodes nothing.
    """

    sources: list[Path]
    decode: Callable[[], Decoded]
    what: str
    index: Callable[[], tuple[list[str], list[int]]] | None = None


def _size_and_mtime(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


class PartCache:
    """The decoded images of one part, on disk as <key>.pt (the tensor) + <key>.json (index)."""

    def __init__(self, name: str, part: str, spec: PartSpec, settings: dict[str, Any]) -> None:
        """`settings`: what the decoded pixels depend on besides the files (they key the cache)."""
        self.spec = spec
        stat = [(str(p.absolute()), *_size_and_mtime(p)) for p in spec.sources]
        key = hashlib.sha256(repr((CACHE_FORMAT, part, sorted(settings.items()), stat)).encode())
        stem = cache_dir(name) / f"{part}-{key.hexdigest()[:16]}"
        self.tensor_path, self.index_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        self._images: torch.Tensor | None = None  # kept when built in this process
        self._index: tuple[list[str], list[int]] | None = None

    def index(self) -> tuple[list[str], list[int]]:
        """Class ids and their image counts: from the cache, else from the spec's `index`,
        else by decoding (once)."""
        if self._index is None:
            try:
                index = json.loads(self.index_path.read_text())
                if self.tensor_path.is_file():
                    self._index = list(index["classes"]), list(index["counts"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # absent or damaged: rebuilt below
        if self._index is None and self.spec.index is not None:
            self._index = self.spec.index()
        if self._index is None:
            self._build()
        return self._index

    def images(self) -> torch.Tensor:
        """(N, C, H, W) uint8, memory-mapped from the cache (no second copy in RAM)."""
        if self._images is None:
            try:
                self._images = torch.load(self.tensor_path, weights_only=True, mmap=True)["images"]
            except Exception:  # a stale or damaged cache is rebuilt
                self._images = self._build().images
        return self._images

    def _build(self) -> Decoded:
        try:
            decoded = self.spec.decode()
        except UserError:
            raise
        except Exception as exc:  # malformed contents: KeyError, IndexError, TypeError, ...
            raise UserError(f"{self.spec.what}: {type(exc).__name__}: {one_line(exc)}; replace it.")
        try:
            with atomic_file(self.tensor_path) as f:  # parallel jobs may race; each writes a whole file
                torch.save({"images": decoded.images}, f)
            index = {"classes": decoded.classes, "counts": decoded.counts}
            write_atomic(self.index_path, json.dumps(index).encode())
        except OSError as exc:
            raise UserError(f"cannot write the image cache {self.tensor_path} ({one_line(exc)}); "
                            f"free space or set META_CLI_CACHE to another folder.")
        listed = self._index
        self._images, self._index = decoded.images, (list(decoded.classes), list(decoded.counts))
        if listed is not None and listed != self._index:  # the spec's index and decode disagree
            raise RuntimeError(f"{self.spec.what}: its listing and its decoded images differ")
        return decoded


class ImageTensorSource(ClassBatches, TaskSource):
    """A classification TaskSource over cached parts; subclasses pass what they read.

    A subclass calls `super().__init__` with its parts (part name -> PartSpec), its
    transform, and default_splits: class ids of each part -> class ids of each split
    (default: part "train" is the train split, and so on). A split may draw on several parts
    (a saved split that moved classes), at the cost of one concatenation.

    Meta-training episodes (the train split only) can be varied: with `rotations` each
    90-degree turn of a class is a class of its own, with `flips` also its mirror image, and
    `augment` gives each image its own random affine transform (see `ClassSampler`).
    """

    task = "classification"

    def __init__(self, *, name: str, title: str, folder: Path, parts: dict[str, PartSpec],
                 transform: ImageTransform, ways: int, shots: int, query: int,
                 splits: dict[str, list[str]] | None = None,
                 default_splits: Callable[[dict[str, list[str]]], dict[str, list[str]]] | None = None,
                 rotations: bool = False, flips: bool = False, augment: Affine | None = None) -> None:
        """`name`: the cache folder; `title`: the dataset in messages (e.g. "mini-ImageNet");
        `folder`: where its files are (named in messages)."""
        self.title, self.folder, self.transform = title, folder, transform
        self.input_shape = transform.shape
        self.ways, self.shots, self.query = ways, shots, query
        self.rotations, self.flips, self.augment = rotations, flips, augment
        self.variants = (4 if rotations else 1) * (2 if flips else 1)  # per base class, in training
        self.caches = {p: PartCache(name, p, spec, transform.pixel_key()) for p, spec in parts.items()}
        by_part, counts, self.part_of = {}, {}, {}
        for part, cache in self.caches.items():
            classes, sizes = cache.index()
            by_part[part] = classes
            for c, n in zip(classes, sizes):
                if c in self.part_of:
                    raise UserError(f"class {c} of {self.title} is in both its {self.part_of[c]} "
                                    f"and {part} files; each class may be in one only.")
                self.part_of[c], counts[c] = part, n
        self.splits = splits or (default_splits or _by_part)(by_part)
        unknown = [c for s in self.splits.values() for c in s if c not in self.part_of]
        if unknown:
            raise UserError(f"the saved split names {len(unknown)} classes not in the {self.title} "
                            f"data at {self.folder} (e.g. {unknown[0]}): this checkpoint was "
                            f"trained on other files.")
        self._class_sizes = {s: {c: counts[c] for c in cs} for s, cs in self.splits.items()}
        self._class_sizes["all"] = {c: n for sizes in self._class_sizes.values() for c, n in sizes.items()}
        self._images_per_class = {s: min(sizes.values(), default=0) for s, sizes in self._class_sizes.items()}
        self.device = torch.device("cpu")
        self._pixels: dict[str, torch.Tensor] = {}
        self._samplers: dict[str, ClassSampler] = {}

    def classes_of(self, split: Split) -> list[str]:
        """The class ids of `split` ("all": those of every split, in split order)."""
        if split == "all":
            return [c for s in SPLITS for c in self.splits.get(s, [])]
        return list(self.splits.get(split, []))

    def num_classes(self, split: Split) -> int:
        return len(self.classes_of(split)) * (self.variants if split == "train" else 1)

    def images_per_class(self, split: Split) -> int:
        return self._images_per_class.get(split, 0)

    def class_sizes(self, split: Split) -> dict[str, int]:
        return dict(self._class_sizes.get(split, {}))

    def to(self, device: torch.device) -> "ImageTensorSource":
        self.device = torch.device(device)
        self._pixels.clear()
        self._samplers.clear()
        return self

    def _part_pixels(self, part: str) -> torch.Tensor:
        """Part `part` on the device, (N, C, H, W) uint8 as cached."""
        if part not in self._pixels:
            self._pixels[part] = self.caches[part].images().to(self.device)
        return self._pixels[part]

    def _sampler(self, split: Split) -> ClassSampler:
        if split not in self._samplers:
            classes = self.classes_of(split)
            parts = [p for p in self.caches if any(self.part_of[c] == p for c in classes)]
            tensors, groups, offset = [], {}, 0
            for part in parts:
                tensors.append(self._part_pixels(part))
                ids, counts = self.caches[part].index()
                starts = offset + np.cumsum([0, *counts])
                groups.update((c, np.arange(a, b)) for c, a, b in zip(ids, starts[:-1], starts[1:]))
                offset += len(tensors[-1])
            images = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
            training = split == "train"
            self._samplers[split] = ClassSampler(
                images, [groups[c] for c in classes], rotations=self.rotations and training,
                flips=self.flips and training, augment=self.augment if training else None,
                convert=self.transform.to_input)
        return self._samplers[split]

    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        return self._sampler(split).sample(episode_rng(seed, split, index), ways, shots, query)

    # Cached embeddings (eval.cache): an episode as rows of the split's stored images.
    def cache_blocker(self, split: Split) -> str | None:
        """Why episodes of `split` are not made of its stored images (None: they are)."""
        if split == "train" and (self.rotations or self.flips or self.augment is not None):
            return (f"the train split of {self.title} is turned, mirrored or augmented (dataset.rotations, "
                    f"flips, augment)")
        return None

    def split_rows(self, split: Split) -> np.ndarray:
        """The rows (of `episode_rows`) of every image of `split`."""
        return self._sampler(split).rows()

    def episode_rows(self, split: Split, index: int, seed: int, ways: int, shots: int,
                     query: int) -> tuple[np.ndarray, np.ndarray, int]:
        """`episode(...)`'s images as rows: support, query and the episode's seed."""
        return self._sampler(split).sample_rows(episode_rng(seed, split, index), ways, shots, query)

    def inputs(self, split: Split, rows: np.ndarray) -> torch.Tensor:
        """The model inputs of those rows of `split`'s images."""
        return self._sampler(split).inputs(rows)

    def describe(self) -> dict[str, Any]:
        """Splits, the transform (what `meta-cli predict` replays) and how meta-training
        episodes are varied."""
        return {
            "splits": self.splits,
            "transform": self.transform.to_dict(),
            "data": {"train_rotations": self.rotations, "train_flips": self.flips,
                     "train_affine": None if self.augment is None else asdict(self.augment)},
        }


def _by_part(by_part: dict[str, list[str]]) -> dict[str, list[str]]:
    return {s: list(by_part[s]) for s in SPLITS}
