"""OML and ANML through the real CLI on the real Omniglot zips (tiny budgets): train, the
continual protocol at the end of training and from `meta-cli eval`, a resume after SIGKILL that
ends bit for bit where an uninterrupted run ends, and the bad inputs, each one line."""
from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import torch

KILLER = '''
import os, signal
spec = os.environ.get("KILL_AT")
if spec:
    marker = spec
    real = os.replace
    def replace(src, dst, *a, **k):
        result = real(src, dst, *a, **k)
        if marker in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    os.replace = replace
'''

#: 6 steps of 2 trajectories (3 classes x 2 images, 2 fresh + 4 remember images each), the
#: continual protocol on 2 streams of up to 6 of the 47 meta-test characters at the end.
TINY = ["train.iterations=6", "train.val_every=3", "train.checkpoint_every=2", "train.val_episodes=4",
        "train.meta_batch_size=2", "train.ways=3", "train.query=2", "algorithm.trajectory_shots=2",
        "algorithm.remember=4", "train.progress=false", "eval.protocol=continual", "eval.classes=[3,6]",
        "eval.streams=2", "eval.stream_shots=3", "eval.heldout=2", "eval.lr=0.03"]


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("killer")
    (folder / "sitecustomize.py").write_text(KILLER)
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def state(run: Path) -> dict:
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "step-0000006.pt", weights_only=True)
    return {"metrics": [r[:4] for r in csv.reader(open(run / "metrics.csv"))],
            "continual": [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows(run / "continual.csv")],
            "best": best, "last": last}


def assert_same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"] and a["continual"] == b["continual"]
    for name in ("best", "last"):
        x, y = a[name], b[name]
        assert x["iteration"] == y["iteration"]
        for k in x["algorithm"]:
            assert torch.equal(x["algorithm"][k], y["algorithm"][k]), (name, k)
        for i, s in x["optimizer"]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, y["optimizer"]["state"][i][k]), (name, i, k)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["oml", "anml"])
def test_trains_tests_continually_and_resumes_bit_for_bit(cli, tmp_path, killer, algorithm):
    run = [f"algorithm={algorithm}", *TINY]
    ref = cli("train", *run, "hydra.run.dir=ref")
    assert ref.returncode == 0, ref.stderr
    table = rows(tmp_path / "ref" / "continual.csv")
    assert [(r["classes"], r["split_kind"], r["split"], r["status"]) for r in table] == [
        ("3", "heldout", "test", "ok"), ("3", "stream", "test", "ok"),
        ("6", "heldout", "test", "ok"), ("6", "stream", "test", "ok")]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["streams"] == "2" for r in table)
    killed = cli("train", *run, "hydra.run.dir=run", env={"PYTHONPATH": str(killer), "KILL_AT": "step-0000004.pt"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "resume=run")
    assert resumed.returncode == 0, resumed.stderr
    assert_same(state(tmp_path / "run"), state(tmp_path / "ref"))


@pytest.mark.slow
def test_eval_of_another_algorithm_picks_the_rate_on_val_and_reports_a_diverging_one(cli, tmp_path):
    """ProtoNet's backbone with a fresh linear head; two rates compared on val streams, one of
    them diverges (inf in float32): its rows say so and the test streams use the other."""
    assert cli("train", "algorithm=protonet", "train.iterations=2", "train.val_every=2", "train.val_episodes=2",
               "train.progress=false", "eval.episodes=2", "hydra.run.dir=proto").returncode == 0
    result = cli("eval", "checkpoint=proto/checkpoints/best.pt", "eval.protocol=continual", "eval.classes=[4]",
                 "eval.streams=2", "eval.stream_shots=2", "eval.heldout=1", "eval.lr=[0.05,1e300]",
                 "hydra.run.dir=ev")
    assert result.returncode == 0, result.stderr
    table = rows(tmp_path / "ev" / "continual.csv")
    val = {(r["eval_lr"], r["split_kind"]): r["status"] for r in table if r["split"] == "val"}
    assert val == {("0.05", "heldout"): "ok", ("0.05", "stream"): "ok",
                   ("1e+300", "heldout"): "diverged", ("1e+300", "stream"): "diverged"}
    tests = [r for r in table if r["split"] == "test"]
    assert [(r["split_kind"], r["eval_lr"], r["status"]) for r in tests] == [
        ("heldout", "0.05", "ok"), ("stream", "0.05", "ok")]


BAD = [
    (["algorithm=oml", "eval.classes=[10,48]"],
     ["eval.classes", "48", "omniglot minimal test split", "47"]),
    (["algorithm=oml", "eval.classes=[5]", "eval.stream_shots=16"],
     ["eval.stream_shots + eval.heldout", "21", "20 images per class"]),
    (["algorithm=mann", "algorithm.inputs=pixels", "eval.protocol=continual", "eval.classes=[5]"], ["no backbone"]),
    (["algorithm=maml_trpo", "dataset=navigation2d", "eval.protocol=continual"], ["eval.protocol", "meta-RL"]),
    (["algorithm=anml", "distributed.processes=2"], ["one process", "distributed.processes=1"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_inputs_are_one_line_before_any_run_dir(cli, tmp_path, args, words):
    result = cli("train", *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meta-cli: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "outputs").exists()


def test_incremental_sine(cli, tmp_path):
    """dataset=sinusoid: functions learned one after another online; the MSE over all of them."""
    result = cli("train", "dataset=sinusoid", "train.iterations=2", "train.val_every=2", "train.val_episodes=2",
                 "train.progress=false", "eval.protocol=continual", "eval.classes=[3]", "eval.streams=2",
                 "eval.stream_shots=4", "eval.heldout=2", "eval.lr=[0.001,0.01]", "hydra.run.dir=sine")
    assert result.returncode == 0, result.stderr
    table = rows(tmp_path / "sine" / "continual.csv")
    assert [(r["split"], r["split_kind"]) for r in table] == [("val", "heldout"), ("val", "stream")] * 2 + [
        ("test", "heldout"), ("test", "stream")]
    assert all(r["accuracy"] == "" and float(r["loss"]) > 0 and r["classes"] == "3" for r in table)
    assert "MSE" in result.stdout
