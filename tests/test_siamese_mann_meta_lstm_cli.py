"""Siamese, MANN and Meta-LSTM through the real CLI on the real Omniglot files: one sweep trains the three,
`eval` reproduces each checkpoint's numbers, MANN and Meta-LSTM regress on sinusoid, MANN labels
image files with `predict`, and bad input stops with one line."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import meta_cli
from meta_cli.apps.eval import check_eval

FAMILIES = ["siamese", "mann", "meta_lstm"]
TINY = ["train.iterations=2", "train.meta_batch_size=2", "train.val_every=2", "train.val_episodes=2",
        "train.log_every=1", "eval.episodes=4", "train.progress=false", "device=cpu", "distributed.processes=1"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _meta_cli(*args: str, cwd: Path, data_root: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache)})
    return subprocess.run([str(Path(sys.executable).with_name("meta-cli")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, cache_dir) -> dict[str, Path]:
    """The run dir of each family, trained 2 iterations on Omniglot 5-way 1-shot in one sweep,
    on the body every classifier takes (as tests/test_algorithm_matrix.py)."""
    root = tmp_path_factory.mktemp("families")
    result = _meta_cli("train", "-m", f"algorithm={','.join(FAMILIES)}", "backbone=conv4_pool",
                       "backbone.hidden=8", *TINY, cwd=root, data_root=data_root, cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (root / "outputs" / "multirun").glob("*/*")
    jobs = [p for p in sweep.iterdir() if (p / "accuracy.csv").is_file()]
    return {_rows(job / "accuracy.csv")[0]["algorithm"]: job for job in jobs}


def test_each_family_trains_and_eval_reproduces_its_numbers(trained, cli, tmp_path):
    assert sorted(trained) == sorted(FAMILIES)
    checkpoints = [trained[name] / "checkpoints" / "best.pt" for name in FAMILIES]
    result = cli("eval", "-m", f"checkpoint={','.join(map(str, checkpoints))}", "eval.episodes=4")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "eval" / "multirun").glob("*/*")
    for job, name in enumerate(FAMILIES):
        row = _rows(trained[name] / "accuracy.csv")[0]
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert _rows(sweep / str(job) / "accuracy.csv") == [row]


def test_checkpoints_load_with_weights_only_and_restore_the_model(trained):
    for name in FAMILIES:
        path = trained[name] / "checkpoints" / "best.pt"
        payload = torch.load(path, map_location="cpu", weights_only=True)
        learner = meta_cli.load(path, device="cpu")
        state = learner.algorithm.state_dict()
        assert state.keys() == payload["algorithm"].keys()
        assert all(torch.equal(state[k], payload["algorithm"][k]) for k in state)


def test_mann_and_meta_lstm_regress_on_sinusoid(cli, tmp_path):
    result = cli("train", "-m", "dataset=sinusoid", "algorithm=mann,meta_lstm", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [_rows(j / "accuracy.csv")[0] for j in (tmp_path / "outputs" / "multirun").glob("*/*/*")
            if (j / "accuracy.csv").is_file()]
    assert sorted(r["algorithm"] for r in rows) == ["mann", "meta_lstm"]
    assert all(r["accuracy"] == "" and 0 <= float(r["loss"]) < 100 for r in rows)


def _png(image: torch.Tensor, path: Path) -> None:
    """(1, 28, 28) model input, strokes 1 on 0 -> an Omniglot-style PNG (black strokes on white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(255 - (image[0] * 255).round().to(torch.uint8).numpy()).save(path)


def test_mann_predict_labels_files_as_eval_labels_the_episode(trained, cli, tmp_path):
    """A test episode written to files: `meta-cli predict` gives each query the class the model's
    meta-test logits give it (MANN answers each query in its own step, so the set does not matter)."""
    path = trained["mann"] / "checkpoints" / "best.pt"
    spec = check_eval({"checkpoint": str(path), "data_root": None, "algorithm": {}, "device": {
        "_target_": "meta_cli.runtime.device.pick_device", "kind": "cpu"}, "eval": {"_target_": "meta_cli.evaluation.episodes.EvalSettings"},
        "distributed": {"_target_": "meta_cli.runtime.distributed.DistributedSettings"}})
    episode = spec.restored.data.episode("test", 0, 0, 5, 1, 2)
    with torch.no_grad():
        expected = spec.restored.model.eval().query_logits(episode).argmax(1).tolist()
    for i, (image, label) in enumerate(zip(episode.support, episode.support_labels.tolist())):
        _png(image, tmp_path / "support" / f"class{label}" / f"{i}.png")
    for i, image in enumerate(episode.query):
        _png(image, tmp_path / "query" / f"q{i:02d}.png")
    result = cli("predict", f"checkpoint={path}", f"support={tmp_path / 'support'}", f"query={tmp_path / 'query'}",
                 "device=cpu", f"hydra.run.dir={tmp_path / 'predicted'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sorted(_rows(tmp_path / "predicted" / "predictions.csv"), key=lambda r: r["path"])
    assert [r["predicted_class"] for r in rows] == [f"class{c}" for c in expected]


@pytest.mark.parametrize("case", ["siamese_on_sinusoid", "meta_lstm_learner_too_large", "mann_more_ways",
                                  "checkpoint_of_another_algorithm"])
def test_bad_input_is_one_line(case, trained, cli):
    args, message = {
        "siamese_on_sinusoid": (["train", "algorithm=siamese", "dataset=sinusoid", *TINY],
                                "does only classification"),
        "meta_lstm_learner_too_large": (["train", "algorithm=meta_lstm", "algorithm.max_learner_parameters=1000", *TINY],
                                        "more than the 1,000 cells"),
        "mann_more_ways": (["eval", f"checkpoint={trained['mann'] / 'checkpoints' / 'best.pt'}", "eval.ways=[5,8]"],
                           "8 ways (eval.ways) are more than the 5 this MANN was built for"),
        "checkpoint_of_another_algorithm": (["train", f"resume={trained['siamese']}", "algorithm=mann"],
                                            "holds a Siamese model"),
    }[case]
    result = cli(*args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_meta_lstm_gates_script_plots_a_checkpoint(trained, tmp_path, data_root, cache_dir):
    """scripts/meta_lstm_gates.py: the forget and input gates of each learner layer over the
    inner steps (Ravi & Larochelle's Figure 3), as a PNG."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "meta_lstm_gates.py"
    out = tmp_path / "gates.png"
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    result = subprocess.run([sys.executable, str(script), str(trained["meta_lstm"] / "checkpoints" / "best.pt"),
                             "--episodes", "2", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 episodes x" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
