"""Omniglot: splits by character that never leak, per-class rotation, the full-zip path."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meta_cli.data import omniglot, omniglot_files
from meta_cli.data.omniglot import Omniglot
from meta_cli.data.sampler import Affine, random_affine
from meta_cli.errors import UserError


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


def _alphabets(names: list[str]) -> set[str]:
    return {n.split(":", 1)[1].split("/")[0] for n in names}


def test_minimal_splits_are_disjoint_alphabets(data_root):
    data = Omniglot(str(data_root), flips=False)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (136, 59, 47)
    assert _alphabets(train) == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert _alphabets(val) == {"Sanskrit", "Tagalog"}
    assert _alphabets(test) == {"Japanese_(katakana)"}
    # characters are compared without their zip: small2's Greek/Latin must not reappear
    bare = [{n.split(":", 1)[1] for n in s} for s in (train, val, test)]
    assert not (bare[0] & bare[1] or bare[0] & bare[2] or bare[1] & bare[2])
    assert data.num_classes("train") == 136 * 4 and data.num_classes("test") == 47


def test_episode_shape_labels_and_determinism(data_root):
    data = Omniglot(str(data_root))
    ep = data.episode("test", 3, seed=7, ways=5, shots=2, query=3)
    assert ep.support.shape == (10, 1, 28, 28) and ep.query.shape == (15, 1, 28, 28)
    assert ep.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_labels.tolist() == [i for i in range(5) for _ in range(3)]
    assert 0.0 <= ep.support.min() and ep.support.max() <= 1.0
    # strokes are 1: most of a 28x28 Omniglot image is background (0)
    assert ep.support.mean() < 0.3
    again = data.episode("test", 3, seed=7, ways=5, shots=2, query=3)
    assert torch.equal(ep.support, again.support) and torch.equal(ep.query, again.query)
    other = data.episode("test", 4, seed=7, ways=5, shots=2, query=3)
    assert not torch.equal(ep.support, other.support)


def test_support_and_query_images_are_distinct(data_root):
    data = Omniglot(str(data_root), rotations=False)
    sampler = data._sampler("val")
    rng = np.random.default_rng(0)
    ep = sampler.sample(rng, ways=5, shots=5, query=15)
    flat = torch.cat([ep.support, ep.query]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == 100  # 5 classes x 20 different drawings


def test_rotation_is_chosen_per_class(data_root):
    data = Omniglot(str(data_root), flips=False, augment=False)
    sampler = data._sampler("train")
    rotations_seen = set()
    for index in range(30):
        rng = np.random.default_rng(index)
        classes = rng.choice(sampler.num_classes, size=5, replace=False)
        rotations_seen.add(tuple(sorted({int(c) % 4 for c in classes})))
    # with a per-task rotation every task would show a single angle
    assert any(len(r) > 1 for r in rotations_seen)
    # class v is base class v // 4 turned by (v % 4) * 90 degrees, all its images alike
    class _Fixed:
        def __init__(self, classes):
            self.classes = classes

        def choice(self, n, size, replace):
            return np.array(self.classes)

        def permutation(self, n):
            return np.arange(n)

        def integers(self, high):  # the episode's own seed
            return 0

    ep = sampler.sample(_Fixed([0, 1, 6]), ways=3, shots=20, query=0)
    base0 = sampler.convert(sampler.images[sampler.class_images[0]])  # cached uint8 -> inputs
    base1 = sampler.convert(sampler.images[sampler.class_images[1]])
    assert torch.equal(ep.support[:20], base0)
    assert torch.equal(ep.support[20:40], torch.rot90(base0, 1, dims=(-2, -1)))
    assert torch.equal(ep.support[40:], torch.rot90(base1, 2, dims=(-2, -1)))


def test_too_many_ways_is_a_clear_error(data_root):
    data = Omniglot(str(data_root))
    with pytest.raises(UserError, match=r"ways=48 is more than the 47 classes .* test split"):
        data.check("test", 48, 1, 5)
    with pytest.raises(UserError, match=r"shots \+ query = 1 \+ 20 .* 20 images.*lower dataset.query to 19"):
        data.check("test", 5, 1, 20)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.where(rng.random((105, 105)) < 0.1, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _official_zip(path: Path, stem: str, alphabets: int, characters: int, drawings: int = 20) -> None:
    """A small zip in the official layout <stem>/<Alphabet>/characterNN/NNNN_MM.png."""
    with zipfile.ZipFile(path, "w") as z:
        for a in range(alphabets):
            for c in range(1, characters + 1):
                for d in range(1, drawings + 1):
                    z.writestr(f"{stem}/Alpha{stem[-4:]}{a}/character{c:02d}/{c:04d}_{d:02d}.png",
                               _png(hash((stem, a, c, d)) % 2**32))


@pytest.fixture
def full_root(tmp_path: Path) -> Path:
    folder = tmp_path / "omniglot"
    folder.mkdir()
    _official_zip(folder / "images_background.zip", "images_background", 3, 10, drawings=3)
    _official_zip(folder / "images_evaluation.zip", "images_evaluation", 2, 10, drawings=3)
    return tmp_path


def test_full_variant_split_is_fixed_and_proportional(full_root):
    a = Omniglot(str(full_root), variant="full", shots=1, query=1, download=False)
    b = Omniglot(str(full_root), variant="full", shots=1, query=1, download=False)
    assert a.splits == b.splits  # from FULL_SPLIT_SEED, not from any global RNG
    sizes = [len(a.splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 50
    assert sizes == [50 - round(50 * 100 / 1623) - round(50 * 423 / 1623),
                     round(50 * 100 / 1623), round(50 * 423 / 1623)]
    assert not set(a.splits["train"]) & set(a.splits["test"])
    ep = a.episode("train", 0, seed=0, ways=5, shots=1, query=1)
    assert ep.support.shape == (5, 1, 28, 28)


def test_full_variant_missing_offline_names_files(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot_files, "URL", "http://127.0.0.1:9/{name}")
    with pytest.raises(UserError) as err:
        Omniglot(str(tmp_path), variant="full")
    message = str(err.value)
    assert "images_background.zip" in message and "images_evaluation.zip" in message
    assert str(tmp_path / "omniglot") in message and "download failed" in message
    assert not list((tmp_path / "omniglot").glob("*.part"))


def test_download_is_md5_checked(tmp_path, monkeypatch):
    source = tmp_path / "server"
    source.mkdir()
    _official_zip(source / "images_background.zip", "images_background", 1, 2, drawings=2)
    _official_zip(source / "images_evaluation.zip", "images_evaluation", 1, 2, drawings=2)
    monkeypatch.setattr(omniglot_files, "URL", source.as_uri() + "/{name}")
    root = tmp_path / "root"
    # official checksums: these generated files do not match and are not kept
    with pytest.raises(UserError, match="md5 mismatch"):
        Omniglot(str(root), variant="full", shots=1, query=1)
    assert not (root / "omniglot" / "images_background.zip").exists()
    digests = {n: hashlib.md5((source / n).read_bytes()).hexdigest()
               for n in ("images_background.zip", "images_evaluation.zip")}
    monkeypatch.setattr(omniglot_files, "MD5", digests)
    data = Omniglot(str(root), variant="full", shots=1, query=1)
    assert (root / "omniglot" / "images_background.zip").is_file()
    assert sum(len(v) for v in data.splits.values()) == 4


def test_decoded_images_are_cached(data_root, cache_dir):
    Omniglot(str(data_root))._sampler("test")
    stems = [p.with_suffix("") for p in (cache_dir / "omniglot").glob("images-*.pt")]
    minimal = [s for s in stems
               if len(json.loads(s.with_suffix(".json").read_text())["classes"]) == 136 + 156]
    assert len(minimal) == 1
    images = torch.load(minimal[0].with_suffix(".pt"), weights_only=True)["images"]
    assert images.dtype == torch.uint8 and images.shape == (2720 + 3120, 1, 28, 28)
    assert json.loads(minimal[0].with_suffix(".json").read_text())["counts"] == [20] * 292


def test_opening_decodes_nothing_until_the_first_episode(data_root, tmp_path, monkeypatch):
    """The pre-flight opens the dataset: with no cache yet, the zips' listing gives the
    classes and counts, and the images are decoded (once) at the first episode."""
    monkeypatch.setenv("META_CLI_CACHE", str(tmp_path / "fresh"))
    calls = []

    def counted(zips):
        calls.append(zips)
        return omniglot_files.decode(zips)

    monkeypatch.setattr(omniglot, "decode", counted)
    data = Omniglot(str(data_root))
    data.check("train", 5, 1, 19)
    assert data.num_classes("train") == 136 * 8 and data.images_per_class("val") == 20
    assert calls == [] and not list((tmp_path / "fresh" / "omniglot").glob("*.pt"))
    data.episode("val", 0, 0, 5, 1, 1)
    data.episode("train", 0, 0, 5, 1, 1)
    assert len(calls) == 1 and len(list((tmp_path / "fresh" / "omniglot").glob("*.pt"))) == 1


def test_augmentation_is_seeded_and_only_in_meta_training(data_root):
    plain = Omniglot(str(data_root), augment=False)
    augmented = Omniglot(str(data_root), augment=True)
    a = augmented.episode("train", 0, seed=1, ways=5, shots=1, query=1)
    b = augmented.episode("train", 0, seed=1, ways=5, shots=1, query=1)
    p = plain.episode("train", 0, seed=1, ways=5, shots=1, query=1)
    assert torch.equal(a.support, b.support)  # same (seed, split, index): same pixels
    assert not torch.equal(a.support, p.support)  # ...but not the raw images
    assert (a.support.sum() - p.support.sum()).abs() < 0.3 * p.support.sum()  # small changes only
    for split in ("val", "test"):
        assert torch.equal(augmented.episode(split, 0, 1, 5, 1, 1).support,
                           plain.episode(split, 0, 1, 5, 1, 1).support)


def test_flips_add_mirrored_classes(data_root):
    data = Omniglot(str(data_root), flips=True)
    assert data.num_classes("train") == 136 * 8 and data.num_classes("test") == 47
    sampler = data._sampler("train")
    base = sampler.images[sampler.class_images[1]]
    # class 8 + 5 = base 1, variant 5: mirrored, then turned by 90 degrees
    assert torch.equal(sampler._transform(base, 5), torch.rot90(base.flip(-1), 1, dims=(-2, -1)))
    assert torch.equal(sampler._transform(base, 0), base)


def test_shear_slants_a_vertical_stroke_by_at_most_its_range():
    image = torch.zeros(1, 1, 28, 28)
    image[..., 14] = 1.0  # one vertical stroke
    sheared = random_affine(image, np.random.default_rng(0),
                            Affine(degrees=0.0, scale=0.0, shift=0.0, shear=0.5))
    rows = torch.arange(28, dtype=torch.float32)
    # centre of mass of the stroke, row by row, away from the borders
    columns = (sheared[0, 0, 4:24] * torch.arange(28.0)).sum(1) / sheared[0, 0, 4:24].sum(1)
    slope = torch.linalg.lstsq(torch.stack([rows[4:24], torch.ones(20)], 1), columns[:, None]).solution[0]
    drawn = np.random.default_rng(0)
    drawn.uniform(size=1), drawn.uniform(size=1), drawn.uniform(size=(2, 1))  # angle, zoom, shifts
    expected = -drawn.uniform(-0.5, 0.5, 1)[0]  # grid x = x' + shear * y', so the stroke tilts by -shear
    assert abs(slope.item() - expected) < 0.02 and abs(expected) > 0.05


def test_augmentation_ranges_are_config_keys(data_root):
    data = Omniglot(str(data_root), augment=True, augment_degrees=0, augment_scale=0,
                    augment_shift=0, augment_shear=0)
    plain = Omniglot(str(data_root), augment=False)
    # a zero-range affine is the identity (up to bilinear resampling at the same grid)
    a, p = (d.episode("train", 3, 1, 5, 1, 1).support for d in (data, plain))
    assert torch.allclose(a, p, atol=1e-5)
    assert data.describe()["data"]["train_affine"] == {
        "degrees": 0, "scale": 0, "shift": 0, "shear": 0}
    assert data.describe()["transform"] == {"size": 28, "channels": 1, "invert": True,
                                            "resize": "lanczos", "mean": None, "std": None}
