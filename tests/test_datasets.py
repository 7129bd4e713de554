"""mini-/tiered-ImageNet, CIFAR-FS, FC100 and image_folder on tiny files in the real formats.

Every image is one grey level that encodes where it came from: 80 * split + 10 * class + image,
so an episode's pixels tell which split, class and image each sample is.
"""
from __future__ import annotations

import csv
import inspect
import io
import os
import pickle
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from meta_cli.apps.predict import support_set
from meta_cli.data import image_folder, tiered_imagenet
from meta_cli.data.cifarfs import CIFARFS
from meta_cli.data.fc100 import FC100
from meta_cli.data.image_files import IMAGE_EXTENSIONS
from meta_cli.data.image_folder import ImageFolder
from meta_cli.data.mini_imagenet import MiniImagenet
from meta_cli.data.tiered_imagenet import TieredImagenet
from meta_cli.errors import UserError
from meta_cli.config.validation import check_node, plain

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
CLASSES, PER_CLASS = 6, 4


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("META_CLI_CACHE", str(tmp_path / "cache"))


def _level(split: int, cls: int, image: int) -> int:
    return 80 * split + 10 * cls + image


def _png(level: int, size: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (size, size), (level,) * len(mode) if mode == "RGB" else level).save(out, "PNG")
    return out.getvalue()


def _interleaved(split: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """CLASSES * PER_CLASS images (N, size, size, 3) uint8 with classes interleaved, and labels."""
    labels = np.tile(np.arange(CLASSES), PER_CLASS)
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i] = _level(split, c, i // CLASSES)
    return images, labels


def write_mini(root: Path) -> None:
    folder = root / "mini-imagenet"
    folder.mkdir(parents=True)
    for s, mode in enumerate(("train", "validation", "test")):
        images, labels = _interleaved(s, 84)
        class_dict = {f"n{s}{c:07d}": np.flatnonzero(labels == c).tolist() for c in range(CLASSES)}
        with open(folder / f"mini-imagenet-cache-{mode}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)


def write_tiered(root: Path) -> None:
    folder = root / "tiered-imagenet"
    folder.mkdir(parents=True)
    for s, part in enumerate(SPLITS):
        images, labels = _interleaved(s, 84)
        pngs = [np.frombuffer(_png(int(im[0, 0, 0]), 84), dtype=np.uint8) for im in images]
        with open(folder / f"{part}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f)
        with open(folder / f"{part}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels, "label_general": labels // 3}, f)


def write_fc100(root: Path) -> None:
    folder = root / "fc100"
    folder.mkdir(parents=True)
    for s, part in enumerate(SPLITS):
        images, labels = _interleaved(s, 32)
        with open(folder / f"FC100_{part}.pickle", "wb") as f:
            pickle.dump({"data": images, "labels": (labels + 20 * s).tolist()}, f, protocol=2)


def write_cifarfs(root: Path) -> None:
    base = root / "cifarfs" / "cifar100"
    (base / "splits" / "bertinetto").mkdir(parents=True)
    for s, part in enumerate(SPLITS):
        names = [f"{part}_class_{c}" for c in range(CLASSES)]
        (base / "splits" / "bertinetto" / f"{part}.txt").write_text("\n".join(names) + "\n")
        for c, name in enumerate(names):
            (base / "data" / name).mkdir(parents=True)
            for i in range(PER_CLASS):
                (base / "data" / name / f"{name}_{i}.png").write_bytes(_png(_level(s, c, i), 32))


PICKLED = {  # config name: (class, writer, image size, expected file names)
    "mini_imagenet": (MiniImagenet, write_mini, 84, ["mini-imagenet-cache-train.pkl",
                                                     "mini-imagenet-cache-validation.pkl",
                                                     "mini-imagenet-cache-test.pkl"]),
    "tiered_imagenet": (TieredImagenet, write_tiered, 84, ["train_images_png.pkl", "val_labels.pkl",
                                                           "test_images_png.pkl"]),
    "cifarfs": (CIFARFS, write_cifarfs, 32, ["cifar100/splits/bertinetto/train.txt",
                                             "cifar100/splits/bertinetto/test.txt"]),
    "fc100": (FC100, write_fc100, 32, ["FC100_train.pickle", "FC100_val.pickle", "FC100_test.pickle"]),
}
FOLDERS = {"mini_imagenet": "mini-imagenet", "tiered_imagenet": "tiered-imagenet",
           "cifarfs": "cifarfs", "fc100": "fc100"}


def levels(x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """(N, C, H, W) normalised images -> (N,) grey levels, checked to be whole and equal."""
    if mean is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    values = x * 255
    assert torch.allclose(values, values.round(), atol=1e-3)
    values = values.round().int()
    assert (values == values[:, :1, :1, :1]).all()  # every pixel and channel: the same level
    return values[:, 0, 0, 0]


def check_episode(ep, split: int | None, ways: int, shots: int, query: int, mean=None,
                  std=None) -> None:
    """Labels class-major, each label one class, support and query images all distinct.

    split=None: the levels are 10 * class + image (more than 8 classes, one split)."""
    assert ep.support_labels.tolist() == [w for w in range(ways) for _ in range(shots)]
    assert ep.query_labels.tolist() == [w for w in range(ways) for _ in range(query)]
    every = torch.cat([levels(ep.support, mean, std), levels(ep.query, mean, std)])
    if split is not None:
        assert ((every // 80) == split).all()
    assert len(set(every.tolist())) == len(every)  # no image twice in an episode
    labels = torch.cat([ep.support_labels, ep.query_labels])
    classes = every // 10 if split is None else (every % 80) // 10
    assert len({int(classes[labels == w].unique().item()) for w in range(ways)}) == ways


@pytest.mark.parametrize("name", PICKLED)
def test_episodes_shapes_labels_range_and_determinism(name, tmp_path):
    cls, write, size, _ = PICKLED[name]
    write(tmp_path)
    data = cls(str(tmp_path), download=False, query=2)
    assert data.input_shape == (3, size, size) and data.task == "classification"
    train, val, test = (set(data.splits[s]) for s in SPLITS)
    assert len(train) == len(val) == len(test) == CLASSES
    assert not (train & val or train & test or val & test)
    mean, std = data.describe()["transform"]["mean"], data.describe()["transform"]["std"]
    assert len(mean) == len(std) == 3
    for s, split in enumerate(SPLITS):
        ep = data.episode(split, 3, seed=5, ways=5, shots=2, query=2)
        assert ep.support.shape == (10, 3, size, size) and ep.query.shape == (10, 3, size, size)
        assert ep.support.dtype == torch.float32 and ep.support_labels.dtype == torch.int64
        check_episode(ep, s, 5, 2, 2, mean, std)
        lowest = min((0 - m) / d for m, d in zip(mean, std))
        highest = max((1 - m) / d for m, d in zip(mean, std))
        assert lowest - 1e-5 <= ep.support.min() and ep.support.max() <= highest + 1e-5
    ep = data.episode("val", 7, seed=1, ways=4, shots=1, query=3)
    fresh = cls(str(tmp_path), download=False, query=2)
    again = fresh.episode("val", 7, seed=1, ways=4, shots=1, query=3)
    assert torch.equal(ep.support, again.support) and torch.equal(ep.query, again.query)
    assert torch.equal(ep.query_labels, again.query_labels)
    other = data.episode("val", 8, seed=1, ways=4, shots=1, query=3)
    assert not torch.equal(ep.support, other.support)



@pytest.mark.parametrize("name", ["mini_imagenet", "fc100"])
def test_files_directly_in_root_as_learn2learn_keeps_them(name, tmp_path):
    cls, write, _, files = PICKLED[name]
    write(tmp_path)
    nested = cls(str(tmp_path), download=False, query=2)
    for f in files:  # learn2learn's MiniImagenet/FC100 read <root>/<file>, no subfolder
        (tmp_path / FOLDERS[name] / f).rename(tmp_path / f)
    flat = cls(str(tmp_path), download=False, query=2)
    assert flat.folder == tmp_path
    a, b = (d.episode("test", 2, seed=3, ways=5, shots=1, query=2) for d in (nested, flat))
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)

@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_to_device_gives_the_same_episodes_there(device, tmp_path):
    write_mini(tmp_path)
    data = MiniImagenet(str(tmp_path), download=False)
    before = data.episode("test", 1, seed=2, ways=5, shots=1, query=3)
    moved = data.to(torch.device(device)).episode("test", 1, seed=2, ways=5, shots=1, query=3)
    assert moved.support.device.type == device and moved.support.dtype == torch.float32
    assert torch.allclose(moved.support.cpu(), before.support, atol=1e-6)
    assert torch.equal(moved.query_labels.cpu(), before.query_labels)


def test_without_normalisation_pixels_are_0_to_1(tmp_path):
    write_fc100(tmp_path)
    data = FC100(str(tmp_path), download=False, mean=None, std=None)
    ep = data.episode("test", 0, seed=0, ways=3, shots=1, query=1)
    assert 0 <= ep.support.min() and ep.query.max() <= 1
    check_episode(ep, 2, 3, 1, 1)
    assert data.describe()["transform"]["mean"] is None


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    write_tiered(tmp_path)
    first = TieredImagenet(str(tmp_path), download=False).episode("train", 0, 0, 5, 1, 3)

    def boom(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(tiered_imagenet, "decode", boom)
    cached = TieredImagenet(str(tmp_path), download=False)
    assert torch.equal(cached.episode("train", 0, 0, 5, 1, 3).support, first.support)
    assert len(list((tmp_path / "cache" / "tiered-imagenet").glob("*.pt"))) == 3


def test_saved_splits_are_kept_and_checked(tmp_path):
    write_mini(tmp_path)
    data = MiniImagenet(str(tmp_path), download=False)
    saved = {s: list(reversed(c)) for s, c in data.splits.items()}
    again = MiniImagenet(str(tmp_path), download=False, splits=saved)
    assert again.splits == saved
    with pytest.raises(UserError, match="saved split names 1 classes.*n9"):
        MiniImagenet(str(tmp_path), download=False, splits={**saved, "test": ["n9"]})


def test_check_too_many_ways_or_too_few_images(tmp_path):
    write_cifarfs(tmp_path)
    data = CIFARFS(str(tmp_path), download=False)
    data.check("train", 6, 2, 2)
    with pytest.raises(UserError, match=r"dataset.ways=7 .* 6 classes of the CIFAR-FS train split"):
        data.check("train", 7, 1, 1)
    eval_keys = {"ways": "eval.ways", "shots": "eval.shots", "query": "eval.query"}
    with pytest.raises(UserError, match=r"shots \+ query = 1 \+ 4 .* 4 images.*lower eval.query to 3\."):
        data.check("test", 5, 1, 4, keys=eval_keys)


@pytest.mark.parametrize("name", PICKLED)
def test_missing_files_name_the_files_and_folder(name, tmp_path):
    cls, _, _, files = PICKLED[name]
    with pytest.raises(UserError) as error:
        cls(str(tmp_path), download=False)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path / FOLDERS[name]}/" in message
    assert all(f in message for f in files), message


@pytest.mark.parametrize("name", PICKLED)
def test_failed_download_is_one_line(name, tmp_path, monkeypatch):
    asked = []

    def offline(url, timeout=None):
        asked.append(url)
        raise urllib.error.URLError(f"Temporary failure in name resolution\n{url}")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="download failed: Temporary failure") as error:
        PICKLED[name][0](str(tmp_path), download=True)
    assert "\n" not in str(error.value) and str(tmp_path / FOLDERS[name]) in str(error.value)
    assert asked and all(url.startswith("https://zenodo.org/record/7978538/") for url in asked)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial files left


HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"


def test_download_that_saves_an_html_page_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(HTML))
    with pytest.raises(UserError, match=r"mini-imagenet-cache-train.pkl is an HTML page, not a mini"):
        MiniImagenet(str(tmp_path), download=True)


@pytest.mark.parametrize("name, file", [("mini_imagenet", "mini-imagenet-cache-validation.pkl"),
                                        ("tiered_imagenet", "test_labels.pkl"),
                                        ("fc100", "FC100_train.pickle")])
def test_html_truncated_or_foreign_pickle_is_a_user_error(name, file, tmp_path):
    cls, write, _, _ = PICKLED[name]
    write(tmp_path)
    path = tmp_path / FOLDERS[name] / file
    good = path.read_bytes()
    path.write_bytes(b"\n  " + HTML)
    with pytest.raises(UserError, match=re.escape(f"{path} is an HTML page")):
        cls(str(tmp_path), download=False)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=re.escape(f"cannot unpickle {path}")) as error:
        cls(str(tmp_path), download=False)
    assert "\n" not in str(error.value)
    path.write_bytes(pickle.dumps({"something": "else"}))
    with pytest.raises(UserError, match=r"(is|are) not .*pickles?\b.*: KeyError: "):
        cls(str(tmp_path), download=False)


def test_cifarfs_split_file_naming_a_missing_class(tmp_path):
    write_cifarfs(tmp_path)
    split = tmp_path / "cifarfs/cifar100/splits/bertinetto/val.txt"
    split.write_text(split.read_text() + "no_such_class\n")
    with pytest.raises(UserError, match="lists 1 classes without a folder.*no_such_class"):
        CIFARFS(str(tmp_path), download=False)


# image_folder ---------------------------------------------------------------------------

def write_folder(root: Path, classes: int = 10, per_class: int = 3, size: int = 16,
                 groups: int = 0, split: int = 0, mode: str = "RGB") -> list[str]:
    """root/<class>/*.png, or root/<group>/<class>/*.png with `groups` groups; class ids."""
    ids = []
    for c in range(classes):
        name = f"group{c % groups}/class{c}" if groups else f"class{c}"
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i}.png").write_bytes(_png(_level(split, c, i), size, mode))
        (folder / "notes.txt").write_text("not an image")
        ids.append(name)
    return ids


def test_image_folder_flat_layout_split_by_seeded_fractions(tmp_path):
    ids = write_folder(tmp_path / "images")
    random.seed(1)
    data = ImageFolder(str(tmp_path / "images"), fractions=[0.6, 0.2, 0.2], image_size=16, query=2)
    random.seed(2)
    again = ImageFolder(str(tmp_path / "images"), fractions=[0.6, 0.2, 0.2], image_size=16, query=2)
    assert data.splits == again.splits
    assert [len(data.splits[s]) for s in SPLITS] == [6, 2, 2]
    assert sorted(sum(data.splits.values(), [])) == sorted(ids)
    other = ImageFolder(str(tmp_path / "images"), fractions=[0.6, 0.2, 0.2], split_seed=1, image_size=16)
    assert other.splits != data.splits and sorted(sum(other.splits.values(), [])) == sorted(ids)
    assert image_folder.split_by_fractions(ids, [0.6, 0.2, 0.2], 0) == data.splits
    ep = data.episode("train", 2, seed=3, ways=5, shots=1, query=2)
    assert ep.support.shape == (5, 3, 16, 16) and ep.query.shape == (10, 3, 16, 16)
    check_episode(ep, None, 5, 1, 2)
    assert 0 <= ep.support.min() and ep.support.max() <= 1
    ep_again = again.episode("train", 2, seed=3, ways=5, shots=1, query=2)
    assert torch.equal(ep.support, ep_again.support)
    described = data.describe()["data"]
    assert described["split"] == "fractions" and described["split_seed"] == 0
    assert data.describe()["splits"] == data.splits


def test_image_folder_groups_grayscale_resize_and_normalisation(tmp_path):
    write_folder(tmp_path, classes=8, size=20, groups=2, mode="L")
    data = ImageFolder(str(tmp_path), image_size=12, channels=1, mean=[0.5], std=[0.25],
                       fractions=[0.5, 0.25, 0.25])
    assert data.input_shape == (1, 12, 12)
    assert all(re.fullmatch(r"group[01]/class\d", c) for c in sum(data.splits.values(), []))
    ep = data.episode("train", 0, seed=0, ways=4, shots=1, query=1)
    assert ep.support.shape == (4, 1, 12, 12)
    check_episode(ep, 0, 4, 1, 1, [0.5], [0.25])


def test_image_folder_explicit_split_folders(tmp_path):
    for s, split in enumerate(SPLITS):
        write_folder(tmp_path / split, classes=5, split=s)
    data = ImageFolder(str(tmp_path), image_size=16, fractions=[1.0, 0.0, 0.0])  # folders win
    for s, split in enumerate(SPLITS):
        assert data.splits[split] == [f"{split}/class{c}" for c in range(5)]
        check_episode(data.episode(split, 0, 0, 5, 1, 2), s, 5, 1, 2)
    assert data.describe()["data"]["split"] == "folders"
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(UserError, match="has train/, test/ but not all of train/, val/, test/"):
        ImageFolder(str(tmp_path))


def test_image_folder_reads_the_image_types_predict_reads(tmp_path):
    """One list of image extensions: the files image_folder trains on are those `meta-cli
    predict` takes from a support folder of the same layout."""
    formats = {".png": "PNG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".pgm": "PPM",
               ".gif": "GIF", ".WEBP": "WEBP"}
    root = tmp_path / "images"
    for c in range(6):
        for i, (suffix, kind) in enumerate(formats.items()):
            folder = root / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (16, 16), 10 * c + i).save(folder / f"{i}{suffix}", kind)
        (folder / "notes.txt").write_text("not an image")
    data = ImageFolder(str(root), image_size=16, channels=1, fractions=[0.5, 0.25, 0.25])
    assert data.images_per_class("train") == len(formats)
    paths, labels = support_set(str(root))
    assert paths == [p for c in range(6) for p in image_folder.find_classes(root)[f"class{c}"]]
    assert labels == [f"class{c}" for c in range(6) for _ in formats]
    ep = data.episode("train", 0, seed=0, ways=2, shots=2, query=5)
    check_episode(ep, None, 2, 2, 5)  # JPEG is lossy but keeps a flat grey level exact
    # `meta-cli predict --help` lists the same types
    help_text = " ".join((REPO / "conf" / "predict.yaml").read_text().split())
    assert f"({' '.join(IMAGE_EXTENSIONS)}," in help_text


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_image_folder_bad_image_is_named(damage, tmp_path):
    write_folder(tmp_path, classes=6)
    bad = tmp_path / "class3" / "1.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a png")
    else:
        big = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(big, "PNG")
        bad.write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    with pytest.raises(UserError, match=re.escape(f"cannot decode image {bad}")) as error:
        ImageFolder(str(tmp_path))
    assert "\n" not in str(error.value) and "BytesIO" not in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"fractions": [0.5, 0.5]}, "dataset.fractions must be"),
    ({"fractions": [0.5, 0.3, 0.3]}, "dataset.fractions must be"),
    ({"fractions": [0.2, 0.6, 0.2]}, "3 classes are too few"),
    ({"mean": [0.5, 0.5]}, "set both dataset.mean and dataset.std"),
    ({"mean": [0.5, 0.5], "std": [1, 1]}, "dataset.mean must have 1 or 3 values"),
    ({"mean": [0.5], "std": [0]}, "dataset.std values must be > 0"),
])
def test_image_folder_bad_settings(kwargs, message, tmp_path):
    write_folder(tmp_path, classes=3)
    with pytest.raises(UserError, match=re.escape(message)):
        ImageFolder(str(tmp_path), **kwargs)


def test_image_folder_root_missing_or_empty(tmp_path):
    with pytest.raises(UserError, match="set dataset.root"):
        ImageFolder(None)
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found in"):
        ImageFolder(str(tmp_path / "empty"))


# configs and the CLI --------------------------------------------------------------------

@pytest.mark.parametrize("name, backbone", [("mini_imagenet", "cnn4"), ("tiered_imagenet", "cnn4"),
                                            ("cifarfs", "cnn4"), ("fc100", "cnn4"),
                                            ("image_folder", "conv4_pool")])
def test_yaml_keys_are_constructor_parameters_with_comments(name, backbone, monkeypatch):
    monkeypatch.setenv("META_CLI_DATA", "/data")
    with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
        config = plain(compose(config_name="train", overrides=[f"dataset={name}"]))
        expected = plain(compose(config_name="train", overrides=[f"backbone={backbone}"]))["backbone"]
    node = config["dataset"]
    check_node(node, "dataset")
    assert config["backbone"] == expected
    target = {"mini_imagenet": MiniImagenet, "tiered_imagenet": TieredImagenet, "cifarfs": CIFARFS,
              "fc100": FC100, "image_folder": ImageFolder}[name]
    params = {k: p for k, p in inspect.signature(target).parameters.items() if k not in target.injected}
    assert set(node) - {"_target_"} == set(params)
    for key, value in node.items():  # the YAML's defaults are the constructor's
        default = params[key].default if key in params else value
        if key != "root":
            assert value == (list(default) if isinstance(default, tuple) else default), key
    lines = (REPO / "conf" / "dataset" / f"{name}.yaml").read_text().splitlines()
    assert lines[0].startswith("# ")
    keyed = [line for line in lines
             if re.match(r"\w+:", line) and not line.startswith(("_target_", "defaults"))]
    assert keyed and all("#" in line for line in keyed)


def _meta_cli(tmp_path: Path, *overrides: str) -> Path:
    """Train through the real CLI in a subprocess; returns the run dir."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(META_CLI_CACHE=str(tmp_path / "cache"), META_CLI_DATA=str(tmp_path / "nowhere"),
               OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    args = [str(Path(sys.executable).with_name("meta-cli")), "train", *overrides, "algorithm=protonet",
            "backbone.hidden=8", "train.iterations=2", "train.meta_batch_size=2", "train.val_every=2",
            "train.val_episodes=2", "eval.episodes=3", "train.progress=false", f"hydra.run.dir={run}"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.parametrize("name, overrides", [
    ("mini_imagenet", ["dataset.query=2"]),  # the dataset's own backbone, cnn4
    ("cifarfs", ["dataset.query=2", "backbone=conv4_pool", "dataset.download=false"]),
    ("image_folder", ["dataset.query=2", "dataset.image_size=16", "dataset.fractions=[0.5,0.25,0.25]"]),
])
def test_train_through_the_cli(name, overrides, tmp_path):
    data = tmp_path / "data"
    if name == "image_folder":
        write_folder(data, classes=20, per_class=3)
    else:
        PICKLED[name][1](data)
    run = _meta_cli(tmp_path, f"dataset={name}", f"dataset.root={data}", *overrides)
    with open(run / "accuracy.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == name and row["episodes"] == "3" and 0 <= float(row["accuracy"]) <= 1
    assert (run / "splits.json").is_file()
