"""Meta-RL through the real CLI: train -> returns.csv, eval reproduces it, the same seed twice
gives the same numbers, resume is bit-exact, report plots the adaptation curve, bad input is
one line."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

TINY = ["algorithm=maml_trpo", "dataset=navigation2d", "dataset.horizon=10", "dataset.trajectories=4",
        "train.meta_batch_size=2", "train.iterations=2", "train.val_every=2", "train.val_episodes=2",
        "train.checkpoint_every=1", "train.log_every=1", "eval.tasks=3", "train.progress=false"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, cache_dir):
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("rl")
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    for name in ("a", "b"):
        result = subprocess.run([str(exe), "train", *TINY, f"hydra.run.dir={name}"], cwd=root, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_training_writes_returns_and_the_same_seed_repeats_them(trained):
    rows = _rows(trained / "a" / "returns.csv")
    assert [int(r["steps"]) for r in rows] == [0, 1, 2, 3]
    assert all(r["episodes"] == "3" and r["algorithm"] == "maml_trpo" and r["split"] == "test" for r in rows)
    assert (trained / "a" / "returns.csv").read_text().replace("/a/", "/b/") == (trained / "b" / "returns.csv").read_text()
    metrics = _rows(trained / "a" / "metrics.csv")
    assert {"return_pre", "return_post", "kl"} <= set(metrics[0]) and metrics[0]["return_pre"] != ""
    assert len(_rows(trained / "a" / "task_returns.csv")) == 3 * 4


def test_eval_reproduces_returns_csv(cli, trained, tmp_path):
    checkpoint = trained / "a" / "checkpoints" / "best.pt"
    result = cli("eval", f"checkpoint={checkpoint}", "eval.tasks=3", "hydra.run.dir=again")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "again" / "returns.csv").read_text() == (trained / "a" / "returns.csv").read_text()


def test_resume_is_bit_exact(cli, trained, tmp_path):
    """Stopped after step 1 (its checkpoint kept, step 2 removed) and resumed: the same weights."""
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained / "a", run)
    for name in ("step-0000002.pt", "step-0000002.json", "best.pt", "best.json", "last.pt", "last.json"):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    result = cli("train", f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    again = torch.load(run / "checkpoints" / "step-0000002.pt", weights_only=True)
    first = torch.load(trained / "a" / "checkpoints" / "step-0000002.pt", weights_only=True)
    assert all(torch.equal(again["algorithm"][k], v) for k, v in first["algorithm"].items())
    timing = ("tasks_per_s", "elapsed_s", "rollout_s")

    def untimed(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in timing} for r in _rows(path)]

    assert untimed(run / "metrics.csv") == untimed(trained / "a" / "metrics.csv")


def test_report_plots_the_adaptation_curve(cli, trained):
    result = cli("report", str(trained))
    assert result.returncode == 0, result.stderr
    assert "return" in result.stdout and "steps" in result.stdout
    assert (trained / "test_results.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("overrides, words", [
    (["algorithm=maml_trpo"], ["MAMLTRPO", "reinforcement learning", "classification"]),
    (["dataset=navigation2d", "algorithm=protonet"], ["ProtoNet", "classification", "rl"]),
    (["algorithm=maml_trpo", "dataset=navigation2d", "dataset.horizon=0"], ["dataset.horizon", ">= 1"]),
    (["algorithm=maml_trpo", "dataset=navigation2d", "dataset.trajectories=0"], ["dataset.trajectories", ">= 1"]),
    (["algorithm=maml_trpo", "dataset=navigation2d", "distributed.processes=2"], ["one process"]),
    (["algorithm=maml_trpo", "dataset=navigation2d", "eval.episodes=10"], ["eval.episodes", "meta-RL", "eval.tasks"]),
])
def test_bad_rl_input_is_one_line(cli, tmp_path, overrides, words):
    result = cli("train", *overrides, "train.progress=false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("key", ["eval.ways=5", "eval.shots=3", "eval.episodes=7", "eval.query=2", "eval.threads=2"])
def test_eval_refuses_keys_meta_rl_does_not_read(cli, trained, tmp_path, key):
    """Meta-RL meta-tests eval.tasks tasks: an episode key would be silently ignored."""
    result = cli("eval", f"checkpoint={trained / 'a' / 'checkpoints' / 'best.pt'}", key, "eval.tasks=3")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"meta-cli: error: {key.split('=')[0]} does not apply to meta-RL"), lines[0]
    assert "eval.tasks" in lines[0] and not (tmp_path / "outputs").exists()


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="the mujoco extra is not installed")
def test_halfcheetah_trains_a_step(cli):
    result = cli("train", "algorithm=maml_trpo", "dataset=halfcheetah_dir", "dataset.horizon=20",
                 "dataset.trajectories=2", "train.meta_batch_size=2", "train.iterations=1", "train.val_episodes=1",
                 "eval.tasks=1", "train.progress=false", "hydra.run.dir=cheetah")
    assert result.returncode == 0, result.stderr[-3000:]
