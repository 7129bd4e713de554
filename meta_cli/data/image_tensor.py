"""Image datasets held as one uint8 tensor per part of their files, sampled by class.

Shared by mini-/tiered-ImageNet, CIFAR-FS, FC100 and `image_folder`. A dataset names its
parts (usually one per split file: "train", "val", "test") with the files each is read
from and a decoder. Each part is decoded once into images (N, C, H, W) uint8, sorted by
class, and cached under META_CLI_CACHE (default ~/.cache/meta-cli), keyed by the files'
paths, sizes and mtimes and the preprocessing: data folders are often shared or read-only,
so nothing is written beside them (as Omniglot's cache). At a split's first episode its
part moves to the training device as uint8, and `ClassSampler` indexes it; the images of
each episode are scaled to 0..1 and normalised per channel as they are drawn.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from meta_cli.atomic import atomic_file, write_atomic
from meta_cli.data.base import Episode, Split, TaskSource, episode_rng
from meta_cli.data.cache import cache_dir
from meta_cli.data.download import one_line
from meta_cli.data.sampler import ClassBatches, ClassSampler
from meta_cli.errors import UserError

CACHE_FORMAT = 1
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
    as `what` (e.g. "/data/x.pkl is not a mini-ImageNet pickle") being malformed.
    """

    sources: list[Path]
    decode: Callable[[], Decoded]
    what: str


def _size_and_mtime(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


class PartCache:
    """The decoded images of one part, on disk as <key>.pt (the tensor) + <key>.json (index)."""

    def __init__(self, name: str, part: str, spec: PartSpec, settings: dict[str, Any]) -> None:
        self.spec = spec
        stat = [(str(p.absolute()), *_size_and_mtime(p)) for p in spec.sources]
        key = hashlib.sha256(repr((CACHE_FORMAT, part, sorted(settings.items()), stat)).encode())
        stem = cache_dir(name) / f"{part}-{key.hexdigest()[:16]}"
        self.tensor_path, self.index_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        self._images: torch.Tensor | None = None  # kept when built in this process
        self._index: tuple[list[str], list[int]] | None = None

    def index(self) -> tuple[list[str], list[int]]:
        """Class ids and their image counts, from the cache (decoding once when absent)."""
        if self._index is None:
            try:
                index = json.loads(self.index_path.read_text())
                if self.tensor_path.is_file():
                    self._index = list(index["classes"]), list(index["counts"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # absent or damaged: rebuilt below
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
        self._images, self._index = decoded.images, (decoded.classes, decoded.counts)
        return decoded


class ImageTensorSource(ClassBatches, TaskSource):
    """A classification TaskSource over cached parts; subclasses pass what they read.

    A subclass sets `folder` (named in messages) and calls `_setup` with parts: part name ->
    PartSpec, and default_splits: class ids of each part -> class ids of each split (default:
    part "train" is the train split, and so on). A split may draw on several parts (a saved
    split that moved classes), at the cost of one concatenation.
    """

    task = "classification"
    title: str  # the dataset's name in messages, e.g. "mini-ImageNet"
    folder: Path  # where its files are

    def _setup(self, name: str, parts: dict[str, PartSpec], settings: dict[str, Any], ways: int,
               shots: int, query: int, mean: list[float] | None, std: list[float] | None,
               splits: dict[str, list[str]] | None,
               default_splits: Callable[[dict[str, list[str]]], dict[str, list[str]]] | None = None,
               ) -> None:
        self.ways, self.shots, self.query = ways, shots, query
        self.settings = settings  # preprocessing before normalisation: it keys the cache
        channels = settings["channels"]
        self.mean, self.std = _normalisation(mean, std, channels)
        self.caches = {p: PartCache(name, p, spec, settings) for p, spec in parts.items()}
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
        self._images_per_class = {s: min((counts[c] for c in cs), default=0)
                                  for s, cs in self.splits.items()}
        self.device = torch.device("cpu")
        self._pixels: dict[str, torch.Tensor] = {}
        self._samplers: dict[str, ClassSampler] = {}

    def num_classes(self, split: Split) -> int:
        return len(self.splits.get(split, []))

    def images_per_class(self, split: Split) -> int:
        return self._images_per_class.get(split, 0)

    def to(self, device: torch.device) -> "ImageTensorSource":
        self.device = torch.device(device)
        self._pixels.clear()
        self._samplers.clear()
        return self

    def _part_pixels(self, part: str) -> torch.Tensor:
        """Part `part` on the device, (N, C, H, W) uint8 as decoded."""
        if part not in self._pixels:
            self._pixels[part] = self.caches[part].images().to(self.device)
        return self._pixels[part]

    def _to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        return to_model_input(pixels, self.mean, self.std)

    def _sampler(self, split: Split) -> ClassSampler:
        if split not in self._samplers:
            classes = self.splits[split]
            parts = [p for p in self.caches if any(self.part_of[c] == p for c in classes)]
            tensors, groups, offset = [], {}, 0
            for part in parts:
                tensors.append(self._part_pixels(part))
                ids, counts = self.caches[part].index()
                starts = offset + np.cumsum([0, *counts])
                groups.update((c, np.arange(a, b)) for c, a, b in zip(ids, starts[:-1], starts[1:]))
                offset += len(tensors[-1])
            images = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
            self._samplers[split] = ClassSampler(images, [groups[c] for c in classes], convert=self._to_float)
        return self._samplers[split]

    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        return self._sampler(split).sample(episode_rng(seed, split, index), ways, shots, query)

    def describe(self) -> dict[str, Any]:
        return {
            "splits": self.splits,
            "preprocessing": {**self.settings, "scale": "0..1",
                              "mean": None if self.mean is None else list(self.mean),
                              "std": None if self.std is None else list(self.std)},
        }


def to_model_input(pixels: torch.Tensor, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> torch.Tensor:
    """(N, C, H, W) uint8 as decoded -> float 0..1, then (x - mean) / std per channel: the
    one definition of a model input, for episodes and for `meta-cli predict`."""
    x = pixels.float().div_(255)
    if mean is not None:
        shape = (1, -1, 1, 1)
        x.sub_(torch.tensor(mean, device=x.device).view(shape))
        x.div_(torch.tensor(std, device=x.device).view(shape))
    return x


def _by_part(by_part: dict[str, list[str]]) -> dict[str, list[str]]:
    return {s: list(by_part[s]) for s in SPLITS}


def _normalisation(mean: list[float] | None, std: list[float] | None,
                   channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Per-channel mean and std (one value is used for every channel), or (None, None)."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise UserError("set both dataset.mean and dataset.std, or both to null (no normalisation).")
    values = []
    for key, given in (("mean", mean), ("std", std)):
        if len(given) not in (1, channels):
            raise UserError(f"dataset.{key} must have 1 or {channels} values (one per channel); "
                            f"got {list(given)}.")
        values.append(tuple(float(v) for v in given) * (channels if len(given) == 1 else 1))
    if min(values[1]) <= 0:
        raise UserError(f"dataset.std values must be > 0; got {list(std)}.")
    return values[0], values[1]
