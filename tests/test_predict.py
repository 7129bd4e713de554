"""`meta-cli predict` and `meta_cli.load(...).predict`: on images written from an eval
episode they give exactly the predictions of the model meta-testing that episode."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dirs
from PIL import Image

import meta_cli
from meta_cli.apps.eval import check_eval
from meta_cli.data.base import Episode
from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError

TINY = {
    "protonet": ["algorithm=protonet", "train.iterations=20", "train.val_every=10"],
    "maml": ["algorithm=maml", "train.iterations=5", "train.meta_batch_size=2", "train.val_every=5"],
    "sinusoid": ["dataset=sinusoid", "train.iterations=2", "train.val_every=2"],
}
COMMON = ["train.val_episodes=5", "eval.episodes=5", "train.progress=false", "device=cpu"]
SEED = 0  # eval.seed's default: the episodes `meta-cli eval` meta-tests on
INDEX = 3


def _meta_cli(*args: str, cwd: Path, data_root: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache)})
    exe = Path(sys.executable).with_name("meta-cli")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_root, cache_dir) -> dict[str, Path]:
    """best.pt of a tiny protonet, maml (Omniglot 5-way 1-shot) and sinusoid run."""
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, overrides in TINY.items():
        result = _meta_cli("train", *overrides, *COMMON, f"hydra.run.dir={root / name}",
                           cwd=root, data_root=data_root, cache=cache_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = root / name / "checkpoints" / "best.pt"
    return out


def _eval_episode(path: Path, test_time: dict | None = None) -> tuple[Episode, torch.Tensor, float]:
    """Test episode INDEX as `meta-cli eval checkpoint=path` (with algorithm.KEY=VALUE for each
    of `test_time`) draws it, the logits (n, ways) of the model eval rebuilds on it, and eval's
    accuracy on it."""
    device = {"_target_": "meta_cli.runtime.device.pick_device", "kind": "cpu"}
    evaluation = {"_target_": "meta_cli.evaluation.episodes.EvalSettings", "seed": SEED}
    distributed = {"_target_": "meta_cli.runtime.distributed.DistributedSettings"}
    spec = check_eval({"checkpoint": str(path), "data_root": None, "algorithm": test_time or {}, "eval": evaluation,
                       "device": device, "distributed": distributed})
    source, model, settings = spec.restored.data, spec.restored.model, spec.evaluation
    ((ways, shots, query),) = settings.settings(source)
    episode = source.episode(settings.split, INDEX, settings.seed, ways, shots, query)
    model.eval()
    with torch.no_grad():
        logits = model.query_logits(episode)
        _, accuracy = model.episode_loss(episode, training=False)
    return episode, logits, accuracy.item()


def _class_name(label: int) -> str:
    return f"char-{chr(ord('a') + label)}"  # sorts like the labels: folder order = label order


def _write_png(image: torch.Tensor, path: Path) -> None:
    """(1, 28, 28) model input (strokes 1 on 0) -> PNG in Omniglot's polarity (black on white)."""
    pixels = (image[0] * 255).round().to(torch.uint8)
    assert torch.equal(pixels.float().div(255), image[0])  # the data are uint8 / 255 exactly
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((255 - pixels).numpy(), mode="L").save(path)


def _write_episode(episode: Episode, folder: Path) -> tuple[list[Path], list[Path]]:
    """support/<class>/sNN.png and query/qNNN.png, names sorted in episode order."""
    support = []
    for i, (image, label) in enumerate(zip(episode.support, episode.support_labels.tolist())):
        support.append(folder / "support" / _class_name(label) / f"s{i:02d}.png")
        _write_png(image, support[-1])
    query = [folder / "query" / f"q{i:03d}.png" for i in range(len(episode.query))]
    for image, path in zip(episode.query, query):
        _write_png(image, path)
    return support, query


def _expected(logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    best = logits.argmax(dim=1)
    return [_class_name(i) for i in best.tolist()], logits.softmax(dim=1).gather(1, best[:, None])[:, 0]


@pytest.mark.slow
def test_predict_takes_the_test_time_keys_eval_takes(cli, tmp_path, monkeypatch, cache_dir):
    """`predict ... algorithm.head=logistic` labels with pretrain's logistic-regression head,
    exactly as `eval ... algorithm.head=logistic` meta-tests with it (and not as the
    checkpoint's own prototype head); meta_cli.load takes the same keys."""
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    trained = cli("train", "algorithm=pretrain", "backbone.widths=[8,8,8,8]", "train.iterations=2",
                  "train.val_every=2", *COMMON, "hydra.run.dir=pretrain")
    assert trained.returncode == 0, trained.stderr[-3000:]
    path = tmp_path / "pretrain" / "checkpoints" / "best.pt"
    episode, logits, _ = _eval_episode(path, {"head": "logistic"})
    _, own_logits, _ = _eval_episode(path)
    assert not torch.allclose(logits.softmax(1), own_logits.softmax(1), atol=1e-3)  # the head matters
    _write_episode(episode, tmp_path / "images")
    result = cli("predict", f"checkpoint={path}", f"support={tmp_path / 'images' / 'support'}",
                 f"query={tmp_path / 'images' / 'query'}", "device=cpu", "algorithm.head=logistic")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in run_dirs(tmp_path) if r.parent.parent.name == "predict"]
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels, scores = _expected(logits)
    assert [r["predicted_class"] for r in rows] == labels
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in rows]), scores, atol=1e-5, rtol=0)
    learner = meta_cli.load(path, device="cpu", head="logistic")
    assert learner.algorithm.head == "logistic"
    with pytest.raises(UserError, match="algorithm.head must be one of"):
        meta_cli.load(path, device="cpu", head="softmax")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_cli_predict_equals_eval_on_the_same_episode(algorithm, checkpoints, cli, tmp_path, monkeypatch,
                                                     cache_dir):
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    path = checkpoints[algorithm]
    episode, logits, eval_accuracy = _eval_episode(path)
    support, query = _write_episode(episode, tmp_path / "images")
    learner = meta_cli.load(path, device="cpu")
    # The decode path (resize 28 -> 28 is the identity, invert, / 255) gives back the episode.
    assert torch.equal(learner.preprocess(support), episode.support)
    assert torch.equal(learner.preprocess(query), episode.query)

    result = cli("predict", f"checkpoint={path}", f"support={tmp_path / 'images' / 'support'}",
                 f"query={tmp_path / 'images' / 'query'}", "device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    # Apart from training runs, and named: outputs/predict/<date>/<time>.
    assert run.parent.parent == tmp_path / "outputs" / "predict"
    assert f"meta-cli: wrote {run / 'predictions.csv'}" in result.stderr
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "predicted_class", "score"]
    assert [r["path"] for r in rows] == [str(p) for p in query]
    labels, scores = _expected(logits)
    assert [r["predicted_class"] for r in rows] == labels
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in rows]), scores,
                               atol=1e-5, rtol=0)
    truth = [_class_name(i) for i in episode.query_labels.tolist()]
    assert sum(a == b for a, b in zip(labels, truth)) / len(truth) == pytest.approx(eval_accuracy)
    # The printed table: a header, then one aligned line per query image.
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["path", "predicted_class", "score"]
    column = lines[0].index("predicted_class")
    assert [(line[:column].rstrip(), line[column:].split()[0]) for line in lines[1:]] == \
        [(str(p), c) for p, c in zip(query, labels)]


@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_python_api_takes_paths_pil_images_and_tensors(algorithm, checkpoints, tmp_path, monkeypatch,
                                                        cache_dir):
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    episode, logits, _ = _eval_episode(checkpoints[algorithm])
    support, query = _write_episode(episode, tmp_path)
    names = [_class_name(i) for i in episode.support_labels.tolist()]
    expected_labels, expected_scores = _expected(logits)
    learner = meta_cli.load(str(checkpoints[algorithm]), device="cpu")
    opened = [Image.open(p) for p in support], [Image.open(p) for p in query]
    for given_support, given_query in [
        (support, query),
        ([str(p) for p in support], [str(p) for p in query]),
        opened,
        ([img.convert("RGB") for img in opened[0]], [img.convert("RGB") for img in opened[1]]),
        (episode.support, episode.query),  # (N, C, H, W) batches of model inputs
        (list(episode.support), list(episode.query)),
    ]:
        result = learner.predict(given_support, names, given_query)
        assert result.labels == expected_labels
        torch.testing.assert_close(result.scores, expected_scores, atol=1e-5, rtol=0)
        assert result.classes == sorted(set(names)) and result.probabilities.shape == logits.shape
    # Labels are names of any kind; integer labels give the classes back as integers.
    ints = learner.predict(episode.support, episode.support_labels, episode.query)
    assert ints.labels == logits.argmax(dim=1).tolist()
    single = learner.predict(support, names, query[0])
    assert len(single.labels) == 1 and single.scores.shape == (1,)


def test_python_api_errors(checkpoints, tmp_path):
    maml = meta_cli.load(checkpoints["maml"], device="cpu")
    images = torch.rand(8, 1, 28, 28)
    with pytest.raises(UserError, match=r"4 classes but this MAML model was trained 5-way"):
        maml.predict(images, ["a", "a", "b", "b", "c", "c", "d", "d"], images[:2])
    proto = meta_cli.load(checkpoints["protonet"], device="cpu")
    with pytest.raises(UserError, match=r"8 support images but 3 support labels"):
        proto.predict(images, ["a", "b", "c"], images[:2])
    with pytest.raises(UserError, match=r"tensor of shape \(3, 28, 28\)"):
        proto.predict([torch.rand(3, 28, 28)] * 2, ["a", "b"], images[:1])
    with pytest.raises(UserError, match=r"values outside 0..1"):
        proto.predict(images * 255, ["a", "b"] * 4, images[:1])
    with pytest.raises(UserError, match=r"cannot read image .*missing.png"):
        proto.predict(images, ["a", "b"] * 4, [tmp_path / "missing.png"])
    with pytest.raises(UserError, match=r"is a regression model .*needs a classification checkpoint"):
        meta_cli.load(checkpoints["sinusoid"])


def _support_dir(root: Path, classes: int, per_class: int = 1) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _write_png(torch.zeros(1, 28, 28), root / "support" / _class_name(c) / f"{i}.png")
    return root / "support"


BAD = {  # case -> the one line it must give
    "missing support": r"support=.*nowhere: no such directory",
    "empty class": r"support class folder .*char-z holds no images",
    "unreadable image": r"cannot decode image .*q/broken.png: not an image file PIL can read",
    "maml ways": r"the support set has 3 classes but this MAML model was trained 5-way",
    "damaged checkpoint": r"checkpoint .*copy/best.pt is truncated: \d+ bytes, its manifest says",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_any_run_dir(case, checkpoints, cli, tmp_path):
    support, query = _support_dir(tmp_path, 3), tmp_path / "q"
    _write_png(torch.zeros(1, 28, 28), query / "fine.png")
    checkpoint = checkpoints["maml" if case == "maml ways" else "protonet"]
    if case == "missing support":
        support = tmp_path / "nowhere"
    elif case == "empty class":
        (support / "char-z").mkdir()
        (support / "char-z" / "notes.txt").write_text("not an image\n")
    elif case == "unreadable image":
        (query / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "damaged checkpoint":
        (tmp_path / "copy").mkdir()
        shutil.copy(checkpoint.with_suffix(".json"), tmp_path / "copy" / "best.json")
        checkpoint = tmp_path / "copy" / "best.pt"
        checkpoint.write_bytes(checkpoints["protonet"].read_bytes()[:1000])
    result = cli("predict", f"checkpoint={checkpoint}", f"support={support}", f"query={query}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    assert re.search(BAD[case], lines[0]), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "BytesIO" not in result.stderr
    assert run_dirs(tmp_path) == []  # stopped by precheck, before Hydra made a run dir


def test_library_warnings_are_one_line_each(checkpoints, cli, tmp_path):
    """PIL's DecompressionBombWarning (made to fire on Omniglot-sized images by lowering PIL's
    limit) comes out as one meta-cli warning naming the image, with no library path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import PIL.Image\nPIL.Image.MAX_IMAGE_PIXELS = 600\n")
    support, query = _support_dir(tmp_path, 3), tmp_path / "q"
    _write_png(torch.zeros(1, 28, 28), query / "one.png")  # 784 pixels: over 600, under 1200
    result = cli("predict", f"checkpoint={checkpoints['protonet']}", f"support={support}",
                 f"query={query}", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    # (tmp_path holds this test's name, "warnings": lines naming a file in it are not warnings)
    warnings = [line for line in result.stderr.splitlines()
                if "warning" in line.replace(str(tmp_path), "").lower()]
    assert warnings and all(line.startswith("meta-cli: warning: image ") for line in warnings), warnings
    assert any("q/one.png is very large" in line for line in warnings)
    assert "DecompressionBombWarning" not in result.stderr and ".py:" not in result.stderr


MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def test_image_folder_checkpoint_predicts_like_eval(tmp_path, data_root, cache_dir, monkeypatch):
    """An RGB, normalised image_folder model: PNGs of an eval episode's raw pixels give, through
    predict (paths and PIL images), exactly the probabilities eval's model computes on that
    episode: predict resizes, scales and normalises as the dataset does."""
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(20):
        (images / f"class{c:02d}").mkdir(parents=True)
        for i in range(4):  # 20x20 on disk, 16x16 for the model: predict must resize too
            pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode="RGB").save(images / f"class{c:02d}" / f"{i}.png")
    run = tmp_path / "run"
    result = _meta_cli("train", "algorithm=protonet", "dataset=image_folder", f"dataset.root={images}",
                       "dataset.image_size=16", "dataset.query=2", "dataset.fractions=[0.5,0.25,0.25]",
                       f"dataset.mean={MEAN}".replace(" ", ""), f"dataset.std={STD}".replace(" ", ""),
                       "train.iterations=2", "train.val_every=2", *COMMON, f"hydra.run.dir={run}",
                       cwd=tmp_path, data_root=data_root, cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run / "checkpoints" / "best.pt"
    episode, logits, _ = _eval_episode(checkpoint)

    def write(x: torch.Tensor, path: Path) -> None:  # model input -> the 16x16 uint8 PNG it came from
        mean, std = torch.tensor(MEAN).view(-1, 1, 1), torch.tensor(STD).view(-1, 1, 1)
        pixels = ((x * std + mean) * 255).round().to(torch.uint8)
        transform = ImageTransform(16, 3, mean=MEAN, std=STD)
        assert torch.equal(transform.to_input(pixels[None])[0], x)  # exactly what eval saw
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB").save(path)

    support = [tmp_path / "s" / f"{i:02d}.png" for i in range(len(episode.support))]
    query = [tmp_path / "q" / f"{i:03d}.png" for i in range(len(episode.query))]
    for x, path in [*zip(episode.support, support), *zip(episode.query, query)]:
        write(x, path)
    learner = meta_cli.load(checkpoint, device="cpu")
    assert learner.input_shape == (3, 16, 16)
    labels = episode.support_labels.tolist()
    for given_support, given_query in [(support, query), ([Image.open(p) for p in support],
                                                          [Image.open(p) for p in query])]:
        predicted = learner.predict(given_support, labels, given_query)
        expected = logits.softmax(dim=1)[:, predicted.classes]
        torch.testing.assert_close(predicted.probabilities, expected, atol=1e-5, rtol=0)
        assert predicted.labels == [predicted.classes[i] for i in expected.argmax(dim=1).tolist()]
    # Tensors are model inputs already: normalised values outside 0..1 are fine here.
    assert learner.predict(episode.support, labels, episode.query).labels == predicted.labels
