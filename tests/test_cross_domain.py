"""Cross-domain evaluation: `meta-cli eval checkpoint=CKPT dataset=NAME` meta-tests a tiny
Omniglot checkpoint on a folder of rendered digits (and on Omniglot through the same path),
the report of a sweep of such evals, the image rule of `meta_cli.data.adapted`, and the
one-line refusals."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from meta_cli.data.adapted import bring, check_channels, convert_channels
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError

COMMON = ["train.iterations=2", "train.meta_batch_size=2", "train.val_every=2", "train.val_episodes=2",
          "eval.episodes=2", "train.progress=false", "device=cpu"]
TINY = {"protonet": ["algorithm=protonet", "backbone.hidden=8"],
        "maml": ["algorithm=maml", "backbone.hidden=8", "train.meta_batch_size=1"]}


def write_digits(root: Path, per_class: int = 6, size: int = 32, short: dict[str, int] | None = None) -> Path:
    """root/<digit>/<i>.png: each digit drawn black on white RGB with PIL's default font, at
    its own small random offset; `short`: classes with fewer images."""
    rng = np.random.default_rng(0)
    font = ImageFont.load_default()
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        for i in range((short or {}).get(str(digit), per_class)):
            image = Image.new("RGB", (size, size), (255, 255, 255))
            x, y = (int(v) for v in rng.integers(5, 12, 2))
            ImageDraw.Draw(image).text((x, y), str(digit), fill=(0, 0, 0), font=font)
            image.save(root / str(digit) / f"{i}.png")
    return root


def meta_cli(*args: str, cwd: Path, data_root: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache)})
    exe = Path(sys.executable).with_name("meta-cli")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, cache_dir):
    """A run (cwd, data, cache) and best.pt of a tiny Omniglot protonet and maml; a digits folder."""
    root = tmp_path_factory.mktemp("cross")
    out = {"root": root, "digits": write_digits(root / "digits")}
    for name, overrides in TINY.items():
        result = meta_cli("train", *overrides, *COMMON, f"hydra.run.dir={root / name}", cwd=root,
                          data_root=data_root, cache=cache_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = root / name / "checkpoints" / "best.pt"

    def run(*args: str) -> subprocess.CompletedProcess:
        return meta_cli(*args, cwd=root, data_root=data_root, cache=cache_dir)

    out["run"] = run
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    return lines[0]


def test_eval_on_a_folder_of_digits_names_both_datasets(trained):
    run, root = trained["run"], trained["root"]
    result = run("eval", f"checkpoint={trained['protonet']}", "dataset=image_folder",
                 f"dataset.root={trained['digits']}", "eval.split=all", "eval.episodes=4", "eval.shots=[1,3]", "eval.query=2",
                 "device=cpu", "hydra.run.dir=digits_eval")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(root / "digits_eval" / "accuracy.csv")
    assert [(r["dataset"], r["eval_dataset"], r["shots"], r["split"]) for r in rows] == [
        ("omniglot", f"image_folder:{trained['digits']}", shots, "all") for shots in ("1", "3")]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["episodes"] == "4" for r in rows)
    episodes = _rows(root / "digits_eval" / "episodes.csv")
    assert len(episodes) == 8 and {(e["dataset"], e["eval_dataset"]) for e in episodes} == {
        ("omniglot", f"image_folder:{trained['digits']}")}
    assert "image_folder:" in result.stdout  # the table names the eval dataset


def _eval_spec(*overrides: str):
    """eval's pre-flight in this process: the composed config checked (`check_eval`)."""
    from meta_cli.apps.eval import check_eval
    from meta_cli.cli.preflight import compose_jobs

    (job,) = compose_jobs("eval", ["device=cpu", *overrides])
    return check_eval(job.config)


def test_the_cross_domain_path_on_the_training_dataset_is_plain_eval(trained, data_root, cache_dir, monkeypatch):
    """dataset=omniglot on an Omniglot checkpoint: the same transform (nothing to bring), the
    same classes and episodes, so the same numbers as eval without dataset=."""
    from meta_cli.evaluation.episodes import test_rows

    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    results = []
    for extra in ([], ["dataset=omniglot"]):
        spec = _eval_spec(f"checkpoint={trained['protonet']}", "eval.episodes=6", *extra)
        results.append(test_rows(spec.restored.model, spec.restored.data, spec.evaluation, {}))
        assert spec.eval_dataset == "omniglot"
    plain, again = (r[0]["_episodes"] for r in results)
    assert plain.episode_accuracies == again.episode_accuracies and plain.episode_losses == again.episode_losses


def test_report_of_an_eval_sweep_has_one_row_per_checkpoint_dataset_and_shots(trained):
    run, root = trained["run"], trained["root"]
    other = write_digits(root / "digits_b", per_class=5)
    sweep = root / "sweep"
    result = run("eval", "-m", f"checkpoint={trained['protonet']}", "dataset=image_folder",
                 f"dataset.root={trained['digits']},{other}", "eval.split=all", "eval.episodes=2",
                 "eval.shots=[1,2]", "eval.query=2", "device=cpu", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = run("report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    # dataset.root is no setting of its own (it only moves a dataset): the eval dataset tells them apart
    lines = [line for line in report.stdout.splitlines() if "image_folder:" in line]
    assert len(lines) == 4, report.stdout  # 2 folders x 2 shots
    assert sum(str(other) in line for line in lines) == 2


def test_refusals_are_one_line_and_write_nothing(trained, tmp_path):
    """Through the CLI: one line, a non-zero exit, no run dir."""
    run, root = trained["run"], trained["root"]
    digits = ["dataset=image_folder", f"dataset.root={trained['digits']}", "device=cpu"]
    cases = [
        # the test split of 10 classes cut 0.7/0.15/0.15 holds 2: fewer than the 5 ways
        ((f"checkpoint={trained['protonet']}", *digits), ["eval.ways=5", "2 classes", "eval.split=all"]),
    ]
    for args, words in cases:
        line = _one_line(run("eval", *args, "hydra.run.dir=refused"))
        assert all(w in line for w in words), (args, line)
        assert not (root / "refused").exists()


def test_what_the_checkpoint_decides_is_refused(trained, tmp_path, data_root, cache_dir, monkeypatch):
    """The pre-flight's checks (in this process): a class short of images named, a fixed-ways
    model held to its ways, the checkpoint's keys, a dataset without images."""
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    digits = ["dataset=image_folder", f"dataset.root={trained['digits']}"]
    short = write_digits(tmp_path / "short", short={"7": 3})
    cases = [
        ((f"checkpoint={trained['protonet']}", "dataset=image_folder", f"dataset.root={short}", "eval.split=all",
          "eval.shots=[1,5]", "eval.query=1"), ["'7' (3)", "eval.shots"]),
        ((f"checkpoint={trained['maml']}", *digits, "eval.split=all", "eval.ways=3"), ["eval.ways=3"]),
        ((f"checkpoint={trained['maml']}", *digits, "eval.split=all", "eval.cache=true"), ["adapts its body"]),
        ((f"checkpoint={trained['protonet']}", *digits, "dataset.image_size=32"), ["1x28x28"]),
        ((f"checkpoint={trained['protonet']}", *digits, "dataset.mean=[0.5]"), ["dataset.std"]),
        ((f"checkpoint={trained['protonet']}", "dataset=sinusoid"), ["dataset=sinusoid"]),
        ((f"checkpoint={trained['protonet']}", "dataset.mean=[0.5]", "dataset.std=[0.5]"), ["dataset=NAME"]),
        ((f"checkpoint={trained['protonet']}", *digits, "backbone.hidden=4"), ["backbone"]),
    ]
    for args, words in cases:
        with pytest.raises(UserError) as caught:
            _eval_spec(*args)
        assert all(w in str(caught.value) for w in words), (args, str(caught.value))


def test_channels_sizes_and_normalisation_are_brought_by_the_declared_rule():
    rgb = torch.rand(2, 3, 8, 8)
    gray = convert_channels(rgb, 1)
    pil = np.asarray(Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).convert("L"))
    assert np.abs(gray[0, 0].numpy() * 255 - pil).max() <= 1.0  # PIL's luma, up to its rounding
    assert torch.equal(convert_channels(gray, 3), gray.expand(-1, 3, -1, -1))
    # Omniglot's inputs (strokes = 1) to an RGB, normalised model of another size: white paper
    # stays white, i.e. (1 - mean) / std, in every channel.
    omniglot = ImageTransform(28, 1, invert=True)
    model = ImageTransform(14, 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    brought = bring(torch.zeros(1, 1, 28, 28), omniglot, model)
    assert brought.shape == (1, 3, 14, 14)
    assert torch.allclose(brought[0, :, 0, 0], torch.tensor([2.5, 3.0, 3.5]))
    assert bring(rgb, model, model) is rgb
    with pytest.raises(UserError, match="only 1 <-> 3"):
        check_channels(3, 4)


def test_an_adapted_source_brings_episodes_and_mini_batches_alike():
    """A body's input (timm's RGB) from a gray dataset: pretrain's mini-batches go through the
    same rule as episodes, and the checkpoint records the body's input."""
    from meta_cli.data.adapted import AdaptedSource
    from meta_cli.data.base import Episode

    class Gray:
        transform = ImageTransform(8, 1, invert=True)
        title = "gray"

        def episode(self, split, index, seed, ways, shots, query):
            return Episode(torch.zeros(2, 1, 8, 8), torch.arange(2), torch.ones(2, 1, 8, 8), torch.arange(2))

        def batch(self, split, index, seed, size):
            return torch.zeros(size, 1, 8, 8), torch.zeros(size, dtype=torch.long)

        def describe(self):
            return {"splits": {}, "transform": self.transform.to_dict()}

    body = ImageTransform(4, 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    source = AdaptedSource(Gray(), body)
    images, labels = source.batch("train", 0, 0, 3)
    episode = source.episode("test", 0, 0, 2, 1, 1)
    assert images.shape == (3, 3, 4, 4) and torch.allclose(images, torch.ones_like(images))  # white paper
    assert torch.allclose(episode.support, images[:2]) and torch.allclose(episode.query, -torch.ones(2, 3, 4, 4))
    assert source.describe()["transform"] == body.to_dict() and source.input_shape == (3, 4, 4)
