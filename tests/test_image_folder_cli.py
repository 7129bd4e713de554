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
