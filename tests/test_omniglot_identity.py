"""Omniglot episodes are bit for bit those of meta-cli e8770d9, before Omniglot moved onto the
shared image-dataset base (uint8 cache, conversion per episode): same classes, same images,
same pixels, same augmentation draws for the same (seed, split, index).

Two references:
- DIGESTS: sha256 (first 16 hex digits) of episodes drawn by e8770d9's own code on the
  official minimal zips, computed once with that commit:
      META_CLI_CACHE=/tmp/c python -c '...Omniglot(root, **options).episode(split, index, seed,
      5, 2, 3)...' (the `digest` below over support, support_labels, query, query_labels).
  Only episodes whose pixels are exact (k / 255, turned or mirrored) are pinned this way: an
  augmented episode goes through affine_grid / grid_sample, whose last bits may differ between
  CPUs, so those are not compared against numbers from another machine.
- `_frozen_episode`: e8770d9's sampling logic, copied here and frozen (decode with PIL, the
  whole set as float32 / 255, ClassSampler.sample, random_affine). It runs on this machine, so
  augmented episodes and the full variant (generated zips) are compared exactly too.
"""
from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_omniglot import _official_zip

from meta_cli.data.base import SPLIT_CODES
from meta_cli.data.omniglot import Omniglot

WAYS, SHOTS, QUERY = 5, 2, 3
OPTIONS = {"default": {"flips": False, "augment": False}, "flips": {"rotations": False, "flips": True, "augment": False},
           "augment": {"flips": False, "augment": True, "augment_shear": 0.2}}
DIGESTS = {  # (options, split, seed, index): from meta-cli e8770d9 (see the module docstring)
    ("default", "train", 0, 0): "335c9cc1782dbe90",
    ("default", "train", 0, 11): "d9458e8790c03942",
    ("default", "train", 3, 5): "d114c9d80ec80848",
    ("default", "val", 0, 0): "fd1edf887fb40b5b",
    ("default", "val", 0, 11): "a9dd9b936ab4977e",
    ("default", "val", 3, 5): "412ce96a9463d2c3",
    ("default", "test", 0, 0): "bcafc3e7f152a71b",
    ("default", "test", 0, 11): "d4108457b8d9d57d",
    ("default", "test", 3, 5): "6d1a1d20374ce209",
    ("flips", "train", 0, 0): "8d096126098647ba",
    ("flips", "train", 0, 11): "f54672898dfa0009",
    ("flips", "train", 3, 5): "ef48e350b526923e",
}
CASES = [(split, seed, index) for split in ("train", "val", "test") for seed, index in
         ((0, 0), (0, 11), (3, 5))]


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


def digest(episode) -> str:
    h = hashlib.sha256()
    for t in (episode.support, episode.support_labels, episode.query, episode.query_labels):
        t = t.contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# e8770d9, frozen ---------------------------------------------------------------------------

class _FrozenOmniglot:
    """e8770d9's Omniglot: characters listed zip by zip, images decoded with PIL (grayscale,
    LANCZOS to 28x28, inverted) into one float32 tensor / 255 (decoded here as needed: each
    image alone), splits by variant."""

    def __init__(self, zips: list[Path], variant: str) -> None:
        self.members: list[tuple[Path, str]] = []
        self.groups: dict[str, np.ndarray] = {}
        for z in zips:
            with zipfile.ZipFile(z) as archive:
                names = sorted(n for n in archive.namelist()
                               if len(n.split("/")) == 4 and n.lower().endswith(".png"))
            by_character: dict[str, list[str]] = {}
            for n in names:
                by_character.setdefault("/".join(n.split("/")[1:3]), []).append(n)
            for character in sorted(by_character):
                start = len(self.members)
                self.members += [(z, n) for n in sorted(by_character[character])]
                self.groups[f"{z.stem}:{character}"] = np.arange(start, len(self.members))
        self.splits = self._splits(variant, sorted(self.groups))
        self._decoded: dict[int, torch.Tensor] = {}

    @staticmethod
    def _splits(variant: str, characters: list[str]) -> dict[str, list[str]]:
        if variant == "minimal":
            alphabet = lambda c: c.split(":", 1)[1].split("/", 1)[0]  # noqa: E731
            small2 = [c for c in characters if c.startswith("images_background_small2:")]
            return {"train": [c for c in characters if c.startswith("images_background_small1:")],
                    "val": [c for c in small2 if alphabet(c) in ("Sanskrit", "Tagalog")],
                    "test": [c for c in small2 if alphabet(c) == "Japanese_(katakana)"]}
        shuffled = sorted(characters)
        random.Random(1623).shuffle(shuffled)
        n = len(shuffled)
        n_test, n_val = max(1, round(n * 423 / 1623)), max(1, round(n * 100 / 1623))
        n_train = n - n_val - n_test
        return {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
                "test": shuffled[n_train + n_val:]}

    def images(self, index: np.ndarray) -> torch.Tensor:
        """(n, 1, 28, 28) float32: rows `index` of e8770d9's `pixels` tensor."""
        missing = [i for i in index.tolist() if i not in self._decoded]
        for z in {self.members[i][0] for i in missing}:
            with zipfile.ZipFile(z) as archive:
                for i in missing:
                    if self.members[i][0] == z:
                        image = Image.open(io.BytesIO(archive.read(self.members[i][1])))
                        small = image.convert("L").resize((28, 28), Image.LANCZOS)
                        pixels = torch.from_numpy(255 - np.asarray(small, dtype=np.uint8))
                        self._decoded[i] = pixels.float().div_(255).unsqueeze(0)
        return torch.stack([self._decoded[i] for i in index.tolist()])


def _frozen_affine(batch: torch.Tensor, rng: np.random.Generator, degrees: float, scale: float,
                   shift: float, shear: float) -> torch.Tensor:
    """e8770d9's sampler.random_affine."""
    n = batch.shape[0]
    angle = np.deg2rad(rng.uniform(-degrees, degrees, n))
    zoom = rng.uniform(1 - scale, 1 + scale, n)
    tx, ty = rng.uniform(-shift, shift, (2, n))
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    rotation = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    if shear:
        matrix = np.zeros((n, 2, 2))
        matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
        matrix[:, 0, 1] = rng.uniform(-shear, shear, n)
        rotation = rotation @ matrix
    theta = np.concatenate([rotation, np.stack([tx, ty], 1)[:, :, None]], 2)
    theta_t = torch.as_tensor(theta, dtype=batch.dtype, device=batch.device)
    grid = F.affine_grid(theta_t, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _frozen_episode(data: _FrozenOmniglot, split: str, index: int, seed: int,
                    options: dict) -> tuple[torch.Tensor, ...]:
    """e8770d9's Omniglot.episode: episode_rng, then ClassSampler.sample."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    training = split == "train"
    rotations = options.get("rotations", True) and training
    flips = options.get("flips", False) and training
    variants = (4 if rotations else 1) * (2 if flips else 1)
    groups = [data.groups[c] for c in data.splits[split]]
    per_class = SHOTS + QUERY
    classes = rng.choice(len(groups) * variants, size=WAYS, replace=False)
    picks, chosen = [], []
    for c in classes:
        base, variant = divmod(int(c), variants)
        picks.append(groups[base][rng.permutation(len(groups[base]))[:per_class]])
        chosen.append(variant)
    batch = data.images(np.concatenate(picks)).view(WAYS, per_class, 1, 28, 28)
    if any(chosen):
        turned = []
        for b, v in zip(batch, chosen):
            turns, mirror = (v % 4, v // 4) if rotations else (0, v)
            b = b.flip(-1) if mirror else b
            turned.append(torch.rot90(b, turns, dims=(-2, -1)) if turns else b)
        batch = torch.stack(turned)
    if options.get("augment", False) and training:
        batch = _frozen_affine(batch.flatten(0, 1), rng, 10.0, 0.1, 0.1,
                               options.get("augment_shear", 0.0)).view_as(batch)
    labels = torch.arange(WAYS)
    return (batch[:, :SHOTS].reshape(WAYS * SHOTS, 1, 28, 28), labels.repeat_interleave(SHOTS),
            batch[:, SHOTS:].reshape(WAYS * QUERY, 1, 28, 28), labels.repeat_interleave(QUERY))


# the tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("options", list(OPTIONS))
def test_minimal_episodes_equal_e8770d9(options, data_root):
    data = Omniglot(str(data_root), **OPTIONS[options])
    zips = [data_root / "omniglot" / f"images_background_small{i}.zip" for i in (1, 2)]
    frozen = _FrozenOmniglot(zips, "minimal")
    assert data.splits == frozen.splits
    for split, seed, index in CASES:
        episode = data.episode(split, index, seed, WAYS, SHOTS, QUERY)
        expected = _frozen_episode(frozen, split, index, seed, OPTIONS[options])
        for got, want in zip((episode.support, episode.support_labels, episode.query,
                              episode.query_labels), expected):
            assert got.dtype == want.dtype and torch.equal(got, want), (options, split, seed, index)
        key = (options, split, seed, index)
        if key in DIGESTS:
            assert digest(episode) == DIGESTS[key], key


def test_full_variant_episodes_equal_e8770d9(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    # 80 characters: the full variant's cut gives val 5 and test 21 of them
    _official_zip(folder / "images_background.zip", "images_background", 5, 10, drawings=6)
    _official_zip(folder / "images_evaluation.zip", "images_evaluation", 3, 10, drawings=6)
    options = {"augment": True, "flips": True}
    data = Omniglot(str(tmp_path), variant="full", download=False, **options)
    frozen = _FrozenOmniglot([folder / "images_background.zip", folder / "images_evaluation.zip"],
                             "full")
    assert data.splits == frozen.splits
    for split, seed, index in CASES:
        episode = data.episode(split, index, seed, WAYS, SHOTS, QUERY)
        expected = _frozen_episode(frozen, split, index, seed, options)
        assert all(torch.equal(a, b) for a, b in zip(
            (episode.support, episode.support_labels, episode.query, episode.query_labels), expected))
