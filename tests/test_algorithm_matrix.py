"""Every algorithm x a compatible backbone through the real CLI: a multirun that trains 2
iterations and meta-tests each, then `eval` reproduces a checkpoint's numbers."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import algorithms

# Continual meta-learners (oml, anml: the Stream regime) train on trajectories of classes, and
# are validated and meta-tested on episodes as the episodic learners are.
CLASSIFIERS = algorithms("classification") + algorithms("classification", "stream")
REGRESSORS = algorithms("regression")
TINY = ["train.iterations=2", "train.meta_batch_size=2", "train.val_every=2",
        "train.val_episodes=2", "train.log_every=1", "eval.episodes=4", "train.progress=false"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _sweep(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    return sweep


@pytest.mark.slow
def test_every_classifier_trains_and_evaluates(cli, tmp_path):
    """On conv4_pool, which every classifier takes (tests/test_backbones.py runs the others)."""
    result = cli("train", "-m", f"algorithm={','.join(CLASSIFIERS)}", "backbone=conv4_pool",
                 "backbone.hidden=8", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _rows(_sweep(tmp_path) / "summary.csv")
    assert len(summary) == len(CLASSIFIERS) and {r["status"] for r in summary} == {"ok"}
    jobs = [p for p in _sweep(tmp_path).iterdir() if (p / "accuracy.csv").is_file()]
    assert sorted(_rows(j / "accuracy.csv")[0]["algorithm"] for j in jobs) == sorted(CLASSIFIERS)
    for job in jobs:
        assert (job / "checkpoints" / "best.pt").is_file() and (job / "metrics.csv").is_file()

    # A checkpoint of each new family evaluates again to the same numbers.
    for algorithm in ("reptile", "metaoptnet", "metasgd"):
        job = next(j for j in jobs if _rows(j / "accuracy.csv")[0]["algorithm"] == algorithm)
        row = _rows(job / "accuracy.csv")[0]
        again = cli("eval", f"checkpoint={job / 'checkpoints' / 'best.pt'}", "eval.episodes=4",
                    f"hydra.run.dir={tmp_path / ('eval-' + algorithm)}")
        assert again.returncode == 0, again.stderr[-3000:]
        assert _rows(tmp_path / ("eval-" + algorithm) / "accuracy.csv") == [row]


def test_every_regressor_on_sinusoid(cli, tmp_path):
    result = cli("train", "-m", "dataset=sinusoid", f"algorithm={','.join(REGRESSORS)}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [_rows(j / "accuracy.csv")[0] for j in _sweep(tmp_path).iterdir() if (j / "accuracy.csv").is_file()]
    assert sorted(r["algorithm"] for r in rows) == sorted(REGRESSORS)
    assert all(r["accuracy"] == "" and float(r["loss"]) >= 0 for r in rows)


@pytest.mark.parametrize("algorithm", sorted(set(CLASSIFIERS) - set(REGRESSORS)))
def test_classification_only_algorithms_refuse_regression(cli, algorithm):
    result = cli("train", "dataset=sinusoid", f"algorithm={algorithm}", *TINY)
    assert result.returncode != 0
    assert "does only classification" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_metasgd_refuses_the_vmap_backend(cli):
    result = cli("train", "algorithm=metasgd", "algorithm.backend=vmap", *TINY)
    assert result.returncode != 0 and "algorithm.backend" in result.stderr and "l2l" in result.stderr


@pytest.mark.parametrize("backbone, advice", [("resnet12", "dropout"),
                                              ("wrn28", "backbone.running_stats=false")])
def test_vmap_refuses_running_statistics_in_one_line(cli, backbone, advice):
    result = cli("train", "algorithm=maml", "algorithm.backend=vmap", f"backbone={backbone}", *TINY)
    assert result.returncode == 1 and advice in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
