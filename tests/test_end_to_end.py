"""train -> eval through the real CLI, in subprocesses, on real data."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run_dirs

from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.rundir.outputs import ACCURACY_COLUMNS

TINY_OMNIGLOT = ["train.iterations=4", "train.meta_batch_size=2", "train.val_every=2",
                 "train.val_episodes=4", "train.log_every=2", "eval.episodes=12"]
TINY_SINUSOID = ["dataset=sinusoid", "train.iterations=20", "train.val_every=10",
                 "train.val_episodes=10", "eval.episodes=20"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _train(cli, tmp_path, *overrides) -> Path:
    tmp_path.mkdir(exist_ok=True)
    result = cli("train", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 1
    return dirs[0]


def _eval(cli, tmp_path, checkpoint: Path, *overrides) -> tuple[Path, str]:
    before = set(run_dirs(tmp_path))
    result = cli("eval", f"checkpoint={checkpoint}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    (new,) = set(run_dirs(tmp_path)) - before
    # Apart from training runs, and named at the start: outputs/eval/<date>/<time>.
    assert new.parent.parent == tmp_path / "outputs" / "eval", new
    assert f"run dir {new}: meta-testing {checkpoint}" in result.stdout
    return new, result.stdout


def _check_run_files(run: Path) -> None:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run.parent.name)
    assert re.fullmatch(r"\d{2}-\d{2}-\d{2}-\d{6}", run.name)  # microseconds: no shared folders
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run / ".hydra" / name).is_file()
    assert list((run / "checkpoints").glob("step-*.pt")) and (run / "checkpoints" / "best.pt").is_file()
    assert not list((run / "checkpoints").glob("*.part"))
    assert _header(run / "metrics.csv") == Episodes.metrics_columns()
    assert _header(run / "accuracy.csv") == ACCURACY_COLUMNS


def test_sinusoid_train_then_eval_reproduces(cli, tmp_path):
    run = _train(cli, tmp_path, *TINY_SINUSOID)
    _check_run_files(run)
    metrics = _rows(run / "metrics.csv")
    assert {r["split"] for r in metrics} == {"train", "val"}
    assert [int(r["iteration"]) for r in metrics if r["split"] == "val"] == [10, 20]
    assert all(r["accuracy"] == "" for r in metrics)  # regression: no accuracy
    (row,) = _rows(run / "accuracy.csv")
    assert row["accuracy"] == "" and float(row["loss"]) > 0 and row["algorithm"] == "maml"
    assert row["dataset"] == "sinusoid" and row["backbone"] == "mlp" and row["episodes"] == "20"

    evaluated, stdout = _eval(cli, tmp_path, run / "checkpoints" / "best.pt", "eval.episodes=20")
    assert _rows(evaluated / "accuracy.csv") == [row]
    assert "sinusoid" in stdout and row["test_settings"] == ""

    # Test-time keys are recorded, in the table and in accuracy.csv: two evals of one
    # checkpoint can be told apart.
    other, stdout = _eval(cli, tmp_path, run / "checkpoints" / "best.pt", "eval.episodes=20",
                          "algorithm.test_adaptation_steps=3", "algorithm.first_order=true")
    (changed,) = _rows(other / "accuracy.csv")
    assert changed["test_settings"] == "algorithm.test_adaptation_steps=3 algorithm.first_order=true"
    assert changed["loss"] != row["loss"]
    header, line = stdout.strip().splitlines()[-2:]
    assert header.split()[-1] == "test_settings" and line.endswith(changed["test_settings"])


def test_the_run_log_holds_what_the_terminal_showed(cli, tmp_path):
    """train.log / eval.log: besides the log lines, the result table, the init= line, a failed
    run's one-line error (printed, not logged, on the terminal)."""
    trained = cli("train", *TINY_SINUSOID, "hydra.run.dir=a")
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = (tmp_path / "a" / "train.log").read_text()
    table = [line for line in trained.stdout.splitlines() if line.strip() and not line.startswith("[")]
    assert len(table) == 2 and all(line in log for line in table), (table, log)
    assert f"run dir {tmp_path / 'a'} on cpu" in log

    failed = cli("train", *TINY_SINUSOID, "init=a/checkpoints/best.pt", "train.meta_lr=1e8", "hydra.run.dir=b")
    assert failed.returncode == 1
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("meta-cli: error:")]
    log = (tmp_path / "b" / "train.log").read_text()
    assert "the train loss is nan" in error and error in log
    assert f"backbone from {tmp_path / 'a' / 'checkpoints' / 'best.pt'}" in log

    evaluated = cli("eval", f"checkpoint={tmp_path / 'a' / 'checkpoints' / 'best.pt'}", "eval.episodes=5",
                    "hydra.run.dir=e")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    table = [line for line in evaluated.stdout.splitlines() if line.strip() and not line.startswith("[")]
    log = (tmp_path / "e" / "eval.log").read_text()
    assert len(table) == 2 and all(line in log for line in table) and "run dir" in log


@pytest.mark.slow
def test_same_seed_same_training(cli, tmp_path):
    first = _train(cli, tmp_path / "a", *TINY_SINUSOID, "seed=3")
    second = _train(cli, tmp_path / "b", *TINY_SINUSOID, "seed=3")
    third = _train(cli, tmp_path / "c", *TINY_SINUSOID, "seed=4")

    def losses(run: Path) -> list[tuple[str, str, str]]:
        return [(r["iteration"], r["split"], r["loss"]) for r in _rows(run / "metrics.csv")]

    assert losses(first) == losses(second)
    assert losses(first) != losses(third)


@pytest.mark.slow
def test_omniglot_maml_train_eval_checkpoint(cli, tmp_path, data_root):
    run = _train(cli, tmp_path, *TINY_OMNIGLOT)
    _check_run_files(run)
    (row,) = _rows(run / "accuracy.csv")
    assert (row["algorithm"], row["dataset"], row["backbone"]) == ("maml", "omniglot", "conv4")
    assert (row["ways"], row["shots"], row["query"], row["split"]) == ("5", "1", "5", "test")
    assert 0.0 <= float(row["accuracy"]) <= 1.0 and float(row["ci95"]) > 0
    assert row["checkpoint"] == str(run / "checkpoints" / "best.pt")

    payload = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert payload["config"]["algorithm"]["fast_lr"] == 0.4 and isinstance(payload["config"], dict)
    assert payload["choices"] == {"algorithm": "maml", "dataset": "omniglot", "backbone": "conv4",
                                  "preset": "maml_omniglot_conv4"}
    assert len(payload["splits"]["test"]) == 47 and payload["transform"]["size"] == 28
    assert {"algorithm", "optimizer", "iteration", "rng", "best"} <= set(payload)
    assert set(payload["rng"]) >= {"python", "numpy", "torch"}
    assert json.loads((run / "splits.json").read_text()) == payload["splits"]

    evaluated, _ = _eval(cli, tmp_path, run / "checkpoints" / "best.pt", "eval.episodes=12")
    assert _rows(evaluated / "accuracy.csv") == [row]  # same checkpoint + seed: same numbers

    other, _ = _eval(cli, tmp_path, run / "checkpoints" / "best.pt", "eval.episodes=12",
                     "eval.shots=[1,3]", "eval.seed=5", f"data_root={data_root}", "device=cpu")
    rows = _rows(other / "accuracy.csv")
    assert [r["shots"] for r in rows] == ["1", "3"]
    assert rows[0]["loss"] != row["loss"]  # another eval seed draws other episodes


@pytest.mark.slow
def test_protonet_evaluates_other_ways(cli, tmp_path):
    run = _train(cli, tmp_path, "algorithm=protonet", "backbone=conv4_pool", *TINY_OMNIGLOT)
    evaluated, stdout = _eval(cli, tmp_path, run / "checkpoints" / "best.pt",
                              "eval.ways=[5,10]", "eval.episodes=6", "eval.split=val")
    rows = _rows(evaluated / "accuracy.csv")
    assert [(r["ways"], r["split"], r["backbone"]) for r in rows] == [
        ("5", "val", "conv4_pool"), ("10", "val", "conv4_pool")]
    assert "protonet" in stdout


@pytest.mark.slow
def test_two_job_multirun(cli, tmp_path):
    result = cli("train", "-m", "algorithm=maml,protonet", *TINY_OMNIGLOT)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    algorithms = [_rows(j / "accuracy.csv")[0]["algorithm"] for j in jobs]
    assert algorithms == ["maml", "protonet"]
