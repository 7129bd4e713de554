"""`image_folder` through the CLI as a user meets it: eval of its checkpoints with
META_CLI_DATA set, and the one-line errors of a folder that does not fit the settings."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["algorithm=protonet", "backbone.hidden=8", "dataset=image_folder", "dataset.image_size=16",
        "dataset.query=2", "dataset.fractions=[0.5,0.25,0.25]", "train.iterations=2", "train.val_every=2",
        "train.val_episodes=2", "eval.episodes=3", "train.progress=false", "device=cpu"]


def write_images(root: Path, counts: dict[str, int], size: int = 16) -> Path:
    """root/<class>/<i>.png: counts[class] random RGB images per class."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_eval_of_an_image_folder_checkpoint_with_meta_cli_data_set(cli, tmp_path):
    """The cli fixture sets META_CLI_DATA (to the shared Omniglot), as the README recommends:
    eval reads the checkpoint's own image folder all the same, and data_root= moves it."""
    images = write_images(tmp_path / "images", {f"class{c:02d}": 4 for c in range(20)})
    assert cli("train", *TINY, f"dataset.root={images}", "hydra.run.dir=run").returncode == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    with open(tmp_path / "run" / "accuracy.csv", newline="") as f:
        (trained,) = list(csv.DictReader(f))
    result = cli("eval", f"checkpoint={checkpoint}", "eval.episodes=3", "hydra.run.dir=eval")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "eval" / "accuracy.csv", newline="") as f:
        (evaluated,) = list(csv.DictReader(f))
    assert evaluated["accuracy"] == trained["accuracy"]  # the same folder, the same episodes
    shutil.move(images, tmp_path / "moved")
    moved = cli("eval", f"checkpoint={checkpoint}", "eval.episodes=3", f"data_root={tmp_path / 'moved'}",
                "hydra.run.dir=eval2")
    assert moved.returncode == 0, moved.stderr
    with open(tmp_path / "eval2" / "accuracy.csv", newline="") as f:
        assert list(csv.DictReader(f))[0]["accuracy"] == trained["accuracy"]


SHAPE = ["algorithm=protonet", "dataset=image_folder", "dataset.image_size=16", "train.progress=false"]


def test_one_short_class_is_named_with_a_fix_that_works(cli, tmp_path):
    images = write_images(tmp_path / "images", {f"class{c:02d}": 2 if c == 3 else 8 for c in range(20)})
    line = _error_line(cli("train", *SHAPE, f"dataset.root={images}"))
    assert "1 of the 14 classes of the image folder train split (meta-training) has fewer images than " \
           "shots + query = 1 + 5 = 6: 'class03' (2)" in line
    assert "add images to that class or remove it" in line and "lower dataset.query to 1" in line
    assert not (tmp_path / "outputs").exists()
    from meta_cli.data.image_folder import ImageFolder

    data = ImageFolder(str(images), image_size=16, query=1)  # the fix it names
    data.check("train", 5, 1, 1)


def test_a_folder_too_small_for_the_ways_says_how_many_classes_it_needs(cli, tmp_path):
    images = write_images(tmp_path / "images", {f"class{c}": 6 for c in range(4)})
    line = _error_line(cli("train", *SHAPE, f"dataset.root={images}", "dataset.ways=2"))
    assert "dataset.ways=2 is more than the 1 class of the image folder val split (validation)" in line
    assert "<= 1" not in line  # no episode has one class
    assert "gives the val split 1: add class folders (from 10 classes on, it gets 2)" in line
    from meta_cli.data.image_folder import ImageFolder

    write_images(tmp_path / "more", {f"class{c}": 6 for c in range(10)})  # the number it names
    data = ImageFolder(str(tmp_path / "more"), image_size=16, ways=2)
    for split in ("train", "val", "test"):
        data.check(split, 2, 1, 5)


def test_a_file_as_root_is_called_a_file(cli, tmp_path):
    images = write_images(tmp_path / "images", {f"class{c}": 6 for c in range(4)})
    line = _error_line(cli("train", *SHAPE, f"dataset.root={images / 'class0' / '0.png'}"))
    assert "0.png is a file, not a folder" in line and "does not exist" not in line
