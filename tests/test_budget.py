"""train.time_budget: the run measures its first steps, fixes the iterations that fit (and the
cadences and lr schedule sized to them), ends with its meta-test, and resumes bit for bit."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meta_cli.engine.budget import Plan, TimeBudget, parse_duration
from meta_cli.errors import UserError
from meta_cli.engine.settings import TrainSettings

#: 100,000 iterations never fit 15 s: the budget decides. Their cadences intend 10 validations,
#: 10 checkpoints and 100 metrics rows, which the plan keeps in proportion.
BUDGETED = ["dataset=sinusoid", "train.time_budget=15s", "train.iterations=100000", "train.val_every=10000",
            "train.checkpoint_every=10000", "train.log_every=1000", "train.keep_checkpoints=1000",
            "train.lr_schedule=cosine", "train.val_episodes=20", "eval.episodes=40", "train.progress=false"]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400),
                                           (" 2m 30s ", 150), (45, 45), (0.5, 0.5), ("20", None)])
def test_durations(text, seconds):
    if seconds is None:  # a bare number as text is not a duration: YAML gives numbers as numbers
        with pytest.raises(UserError, match="is not a duration"):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "m", "1h-5m", "0s", "ten minutes"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(UserError, match=r"train.time_budget=.*(duration|positive)"):
        TrainSettings(time_budget=text)


def test_the_plan_fits_the_budget_and_keeps_the_config_proportions():
    """1,000 s; 10 s gone on 50 steps of 0.125 s (after a first one of 5 s) and a 5 s
    validation; the meta-test, 6 times a validation's episodes, takes 30 s: (1000 - 10 - 30) *
    0.95 = 912 s are left, for the 10 validations the config intends (50 s) and 862 / 0.125 =
    6,896 more steps: 6,946 of the 20,000 configured. The 10 validations and 20 checkpoints
    the config intends are kept, spread over them."""
    settings = TrainSettings(iterations=20000, val_every=2000, checkpoint_every=1000, log_every=10,
                             time_budget="1000s")
    budget = TimeBudget(1000, settings, test_per_validation=6.0)
    assert not budget.probed(1, 5.0)
    for i in range(2, 51):
        budget.probed(i, 5.0 + 0.125 * (i - 1))
    assert budget.step_time() == 0.125  # the first step's warm-up left out
    plan = budget.decide(done=50, elapsed=10.0, validation_s=5.0)
    assert plan == Plan(iterations=6946, val_every=695, checkpoint_every=348, log_every=3)
    # A checkpoint write of 1 s: 10 with the validations, 20 more: 80 s, so 6,656 steps.
    assert budget.decide(done=50, elapsed=10.0, validation_s=5.0, checkpoint_s=1.0) == \
        Plan(iterations=6706, val_every=671, checkpoint_every=336, log_every=3)
    # Slow checkpoint writes: at most a tenth of the time left goes to them.
    assert budget.decide(done=50, elapsed=10.0, validation_s=5.0, checkpoint_s=30.0).checkpoint_every == \
        -(-budget.decide(done=50, elapsed=10.0, validation_s=5.0, checkpoint_s=30.0).iterations // 3)
    # Where everything fits, the run is the one its config states.
    roomy = TimeBudget(10000, settings, 6.0)
    for i, end in enumerate((1.0, 1.1, 1.2), start=1):
        roomy.probed(i, end)
    assert roomy.decide(done=3, elapsed=2.0, validation_s=1.0) == Plan.of(settings)
    # A budget already spent ends the run at the probe; validations shrink to what fits.
    assert budget.decide(done=50, elapsed=2000.0, validation_s=5.0).iterations == 50
    slow_validation = TimeBudget(1000, settings, test_per_validation=0.1)
    slow_validation.ends = list(budget.ends)
    # (1000 - 10 - 20) * 0.95 = 921.5 s left: half of it holds 2 validations of 200 s, not 10.
    assert slow_validation.decide(done=50, elapsed=10.0, validation_s=200.0) == \
        Plan(iterations=50 + int((921.5 - 400) / 0.125), val_every=2111, checkpoint_every=212, log_every=2)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, data_root, cache_dir) -> Path:
    """One budgeted sinusoid run, alone: its own dir."""
    root = tmp_path_factory.mktemp("budget")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    result = subprocess.run([str(Path(sys.executable).with_name("meta-cli")), "train", *BUDGETED,
                             "hydra.run.dir=run"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout.txt").write_text(result.stdout)
    return root / "run"


@pytest.mark.slow
def test_a_time_budget_ends_cleanly_with_its_meta_test(budgeted):
    (row,) = _rows(budgeted / "accuracy.csv")
    assert float(row["loss"]) > 0
    last = torch.load(budgeted / "checkpoints" / "last.pt", weights_only=True)
    plan = last["plan"]
    assert 3 <= plan["iterations"] < 100000 and last["iteration"] == plan["iterations"]
    metrics = _rows(budgeted / "metrics.csv")
    assert int(metrics[-1]["iteration"]) == plan["iterations"] and metrics[-1]["split"] == "val"
    # Its own lr schedule: cosine over the decided iterations, at 0 at the end.
    assert last["scheduler"]["T_max"] == plan["iterations"] and last["optimizer"]["param_groups"][0]["lr"] == 0
    # Training and the estimated meta-test fit the 15 s (wide margin: a shared machine's speed varies).
    assert float(metrics[-1]["elapsed_s"]) < 45
    log = (budgeted / "train.log").read_text()
    assert f"time budget 15s: {plan['iterations']} iterations fit" in log


@pytest.mark.slow
def test_a_budgeted_run_resumes_bit_for_bit(budgeted, cli, tmp_path):
    """Its checkpoints after the first post-decision one removed (a crash there), resumed on
    another machine's timing: the stored plan, not a new measurement, decides the rest."""
    run = tmp_path / "run"
    shutil.copytree(budgeted, run)
    steps = sorted((run / "checkpoints").glob("step-*.pt"))
    assert len(steps) >= 2, steps
    for later in steps[1:]:
        later.unlink()
        later.with_suffix(".json").unlink()
    for name in ("last.pt", "last.json", "accuracy.csv", "episodes.csv"):
        ((run / "checkpoints" / name) if name.startswith("last") else (run / name)).unlink()
    resumed = cli("train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "time budget" not in (run / "train.log").read_text().split("resuming")[-1]  # no new decision
    final = steps[-1].name
    first = torch.load(budgeted / "checkpoints" / final, weights_only=True)
    again = torch.load(run / "checkpoints" / final, weights_only=True)
    assert again["plan"] == first["plan"] and again["iteration"] == first["iteration"]
    for k, v in first["algorithm"].items():
        assert torch.equal(again["algorithm"][k], v), k
    for i, state in first["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(again["optimizer"]["state"][i][k], v), (i, k)
    assert again["scheduler"] == first["scheduler"] and torch.equal(again["rng"]["torch"], first["rng"]["torch"])

    def untimed(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in ("tasks_per_s", "elapsed_s")} for r in _rows(path)]

    assert untimed(run / "metrics.csv") == untimed(budgeted / "metrics.csv")
    assert [{k: v for k, v in r.items() if k != "checkpoint"} for r in _rows(run / "accuracy.csv")] == \
        [{k: v for k, v in r.items() if k != "checkpoint"} for r in _rows(budgeted / "accuracy.csv")]
