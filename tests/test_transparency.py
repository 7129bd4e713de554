"""Transparent images (RGBA, LA, a palette or a colour marked transparent) are composited onto
the white paper a drawing sits on before they are converted: black strokes on transparency
(what drawing tools save) read as the same strokes on white, in `predict` and in the datasets'
decoding alike (both go through `ImageTransform.pixels`)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dirs
from PIL import Image, ImageDraw

from meta_cli.data.image_files import decode_image
from meta_cli.data.transform import ImageTransform

OMNIGLOT = ImageTransform(28, 1, invert=True)  # its strokes 1 on 0: the background must be white
RGB = ImageTransform(32, 3)


def _drawing(seed: int, size: int = 105) -> np.ndarray:
    """(size, size) uint8 grey levels, black (0) strokes on white (255), antialiased edges."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (4 * size, 4 * size), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(20, 4 * size - 20, 2)) for _ in range(3)], fill=0, width=24)
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def _forms(grey: np.ndarray) -> dict[str, Image.Image]:
    """The drawing as an opaque greyscale image, and as black strokes on transparency in each
    mode: the transparent pixels themselves black, so a converter that drops the alpha sees a
    uniform black image."""
    ink = 255 - grey  # opacity of the black ink
    binary = grey < 128
    palette = Image.fromarray(binary.astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 0])  # index 0: transparent black; 1: black
    palette.info["transparency"] = 0
    keyed = Image.fromarray(np.where(binary, 0, 7).astype(np.uint8), "L")  # grey 7 marked transparent
    keyed.info["transparency"] = 7
    return {
        "opaque": Image.fromarray(grey, "L"),
        "rgba": Image.fromarray(np.stack([np.zeros_like(ink)] * 3 + [ink], axis=-1), "RGBA"),
        "la": Image.fromarray(np.stack([np.zeros_like(ink), ink], axis=-1), "LA"),
        "p": palette,
        "l_keyed": keyed,
        "binary": Image.fromarray(np.where(binary, 0, 255).astype(np.uint8), "L"),
    }


@pytest.mark.parametrize("transform", [OMNIGLOT, RGB], ids=["omniglot", "rgb"])
def test_transparent_files_decode_as_the_drawing_on_white(transform, tmp_path):
    forms = _forms(_drawing(0))
    decoded = {}
    for name, image in forms.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        assert Image.open(path).mode == image.mode  # the file really holds that mode
        decoded[name] = decode_image(path, str(path), transform)
    assert decoded["opaque"].float().std() > 20  # a drawing, not a uniform image
    assert torch.equal(decoded["rgba"], decoded["opaque"])
    assert torch.equal(decoded["la"], decoded["opaque"])
    assert torch.equal(decoded["p"], decoded["binary"])  # a palette is all-or-nothing
    assert torch.equal(decoded["l_keyed"], decoded["binary"])


@pytest.fixture(scope="module")
def protonet(tmp_path_factory, data_root, cache_dir) -> Path:
    """best.pt of a tiny Omniglot ProtoNet run (any weights will do: the test compares inputs)."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("protonet")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)})
    result = subprocess.run([str(Path(sys.executable).with_name("meta-cli")), "train", "algorithm=protonet",
                             "train.iterations=2", "train.val_every=2", "train.val_episodes=2", "eval.episodes=2",
                             "train.progress=false", "device=cpu", f"hydra.run.dir={root / 'run'}"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "checkpoints" / "best.pt"


@pytest.mark.slow
def test_predict_reads_transparent_queries_as_the_drawing(protonet, cli, tmp_path):
    """One query batch holds each drawing in every form: identical model inputs give identical
    rows, so each transparent form gets its opaque twin's label and score."""
    for label in range(5):
        folder = tmp_path / "support" / f"class-{label}"
        folder.mkdir(parents=True)
        _forms(_drawing(100 + label))["opaque"].save(folder / "s.png")
    (tmp_path / "query").mkdir()
    for i in range(3):
        for name, image in _forms(_drawing(100 + i)).items():
            if name != "l_keyed":
                image.save(tmp_path / "query" / f"q{i}-{name}.png")
    result = cli("predict", f"checkpoint={protonet}", f"support={tmp_path / 'support'}",
                 f"query={tmp_path / 'query'}", "device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    with open(run / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).stem: (r["predicted_class"], r["score"]) for r in csv.DictReader(f)}
    for i in range(3):
        assert rows[f"q{i}-rgba"] == rows[f"q{i}-la"] == rows[f"q{i}-opaque"], rows
        assert rows[f"q{i}-p"] == rows[f"q{i}-binary"], rows
    # The queries are drawings of the support classes: each is recognised (a uniform image,
    # which dropping the alpha gives, could not be).
    assert [rows[f"q{i}-opaque"][0] for i in range(3)] == ["class-0", "class-1", "class-2"], rows
