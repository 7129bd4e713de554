"""eval.protocol=instances (Santoro et al.'s accuracy by presentation number) through the real
CLI on the real Omniglot files: a tiny MANN run writes instances.csv, `eval` reproduces it, and
bad input stops with one line."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from meta_cli.rundir.outputs import INSTANCE_COLUMNS

TINY = ["algorithm=mann", "backbone=conv4_pool", "backbone.hidden=8", "train.iterations=2", "train.meta_batch_size=2",
        "train.val_every=2", "train.val_episodes=2", "train.progress=false", "device=cpu", "distributed.processes=1"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root, cache_dir) -> Path:
    import os
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("instances")
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
           "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    result = subprocess.run([str(Path(sys.executable).with_name("meta-cli")), "train", *TINY, "eval.protocol=instances",
                             "eval.episodes=3", "eval.instances=[1,2,4]", f"hydra.run.dir={folder / 'run'}"],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "instance" in result.stdout and "%" in result.stdout  # the table
    return folder / "run"


def test_instances_csv_by_presentation_and_eval_reproduces_it(run, cli, tmp_path):
    rows = _rows(run / "instances.csv")
    assert list(rows[0]) == INSTANCE_COLUMNS
    assert [(r["ways"], r["presentations"], r["instance"], r["episodes"]) for r in rows] == [
        ("5", "4", "1", "3"), ("5", "4", "2", "3"), ("5", "4", "4", "3")]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and float(r["ci95"]) >= 0 for r in rows)
    assert not (run / "accuracy.csv").exists()
    for _ in range(2):  # the second time into a run dir holding instances.csv: a meta-cli file
        result = cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.protocol=instances",
                     "eval.episodes=3", "eval.instances=[1,2,4]", f"hydra.run.dir={tmp_path / 'eval'}")
        assert result.returncode == 0, result.stderr[-3000:]
    again = _rows(tmp_path / "eval" / "instances.csv")
    assert [{k: v for k, v in r.items() if k != "checkpoint"} for r in again] == \
        [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows]


@pytest.mark.parametrize("case", ["not_sequences", "beyond_images_per_class"])
def test_bad_instances_input_is_one_line(case, run, cli):
    args, message = {
        "not_sequences": (["train", "algorithm=protonet", "eval.protocol=instances", "train.iterations=1"],
                          "ProtoNet does not read sequences"),
        "beyond_images_per_class": (["eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.protocol=instances",
                                     "eval.instances=[1,2,30]"],
                                    "the 30th presentation of a class, more than the 20 images per class"),
    }[case]
    result = cli(*args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
