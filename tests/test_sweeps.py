"""Sweeps that never lose a result: status.json, summary.csv, report, launchers, optuna, logs."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_dirs

SMALL = ["dataset=sinusoid", "train.iterations=40", "train.val_every=20", "train.val_episodes=10",
         "train.progress=false", "eval.episodes=30"]
PNG = b"\x89PNG\r\n\x1a\n"


def _sweep_dir(root: Path) -> Path:
    (sweep,) = [p for p in (root / "outputs" / "multirun").glob("*/*") if p.is_dir()]
    return sweep


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory, data_root, cache_dir):
    """A 4-job multirun whose third job diverges (meta_lr 1e8)."""
    import subprocess
    import sys
    root = tmp_path_factory.mktemp("sweep")
    exe = Path(sys.executable).with_name("meta-cli")
    result = subprocess.run([str(exe), "train", "-m", *SMALL, "train.meta_lr=0.001,0.002,1e8,0.003"],
                            cwd=root, capture_output=True, text=True,
                            env={**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)})
    return root, result


def test_failing_job_does_not_end_the_sweep(failed_sweep):
    root, result = failed_sweep
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("meta-cli: error:")]
    assert len(errors) == 1 and "iteration" in errors[0]
    sweep = _sweep_dir(root)
    statuses = {p.name: json.loads((p / "status.json").read_text()) for p in run_dirs(root)}
    assert [statuses[j]["status"] for j in "0123"] == ["ok", "ok", "failed", "ok"]
    failed = statuses["2"]
    assert "train loss is" in failed["error"] and "train.meta_lr=100000000.0" in failed["overrides"]
    assert failed["start"] <= failed["end"]
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["status"]) == ["failed", "ok", "ok", "ok"]
    ok = summary[summary["status"] == "ok"]
    assert ok["loss"].notna().all() and ok["shots"].tolist() == [10, 10, 10]
    bad = summary[summary["status"] == "failed"].iloc[0]
    assert "train loss is" in bad["error"] and pd.isna(bad["loss"])
    assert set(summary["train.meta_lr"].astype(str)) == {"0.001", "0.002", "100000000.0", "0.003"}


def test_episodes_csv_recomputes_accuracy_csv(failed_sweep):
    root, _ = failed_sweep
    run = _sweep_dir(root) / "0"
    episodes = pd.read_csv(run / "episodes.csv")
    accuracy = pd.read_csv(run / "accuracy.csv").iloc[0]
    assert len(episodes) == 30 and episodes["episode"].tolist() == list(range(30))
    assert math.isclose(episodes["loss"].mean(), accuracy["loss"], rel_tol=1e-5)
    ci95 = 1.96 * episodes["loss"].std(ddof=1) / math.sqrt(len(episodes))
    assert math.isclose(ci95, accuracy["ci95"], rel_tol=1e-4)


def test_report_prints_the_table_and_writes_the_plots(cli, failed_sweep):
    root, _ = failed_sweep
    sweep = _sweep_dir(root)
    first = cli("report", str(sweep))
    assert first.returncode == 0, first.stderr
    assert "train.meta_lr=0.002" in first.stdout and "failed" in first.stdout
    before = (sweep / "summary.csv").read_text()
    for png in ("learning_curves.png", "test_results.png"):
        data = (sweep / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    again = cli("report", str(sweep))  # idempotent
    assert again.returncode == 0 and again.stdout == first.stdout
    assert (sweep / "summary.csv").read_text() == before


@pytest.mark.slow
def test_report_aggregates_seeds(cli, tmp_path):
    result = cli("train", "-m", *SMALL, "seed=0,1", "train.meta_batch_size=5,10")
    assert result.returncode == 0, result.stderr
    sweep = _sweep_dir(tmp_path)
    report = cli("report", str(sweep))
    assert report.returncode == 0, report.stderr
    table = report.stdout.splitlines()
    rows = [line for line in table if line.startswith("train.meta_batch_size=")]
    assert len(rows) == 2 and all(" 2 " in row for row in rows)  # two seeds per setting
    summary = pd.read_csv(sweep / "summary.csv")
    for size, group in summary.groupby("train.meta_batch_size"):
        mean = group["loss"].mean()
        std = group["loss"].std(ddof=1)
        row = next(r for r in rows if f"train.meta_batch_size={size} " in r + " ")
        assert f"{mean:.4f}" in row and f"{std:.4f}" in row


@pytest.mark.slow
def test_report_of_an_interrupted_sweep(cli, tmp_path, killer):
    """SIGKILL the whole sweep during its second job; report still works and counts it."""
    result = cli("train", "-m", *SMALL, "seed=0,1,2",
                 env={"PYTHONPATH": str(killer), "KILL_AT": "rows:outputs/multirun/*/*/1/metrics.csv:3"})
    assert result.returncode == -signal.SIGKILL, result.stderr
    sweep = _sweep_dir(tmp_path)
    assert not (sweep / "2").exists()
    report = cli("report", str(sweep))
    assert report.returncode == 0, report.stderr
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["status"].tolist() == ["ok", "running"]
    header = report.stdout.splitlines()[1].split()
    assert "unfinished" in header and "seeds" in header
    assert (sweep / "learning_curves.png").read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> Path:
    from test_resume import KILLER
    folder = tmp_path_factory.mktemp("killer_sweeps")
    (folder / "sitecustomize.py").write_text(KILLER)
    return folder


def test_report_bad_path(cli, tmp_path):
    result = cli("report", str(tmp_path / "nope"))
    assert result.returncode == 1 and "is not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    result = cli("report", str(tmp_path / "empty"))
    assert result.returncode == 1 and "holds no meta-cli runs" in result.stderr


@pytest.mark.slow
def test_joblib_runs_two_jobs_in_parallel(cli, tmp_path):
    result = cli("train", "-m", "hydra/launcher=joblib", *SMALL, "train.iterations=200", "seed=0,1")
    assert result.returncode == 0, result.stderr
    assert "validated against ConfigStore schema" not in result.stderr
    status = [json.loads((p / "status.json").read_text()) for p in run_dirs(tmp_path)]
    assert [s["status"] for s in status] == ["ok", "ok"]
    # Parallel: each job started before the other ended.
    assert max(s["start"] for s in status) < min(s["end"] for s in status)
    assert pd.read_csv(_sweep_dir(tmp_path) / "summary.csv")["status"].tolist() == ["ok", "ok"]


def test_submitit_local_runs_a_job(cli, tmp_path):
    result = cli("train", "-m", "hydra/launcher=submitit_local", *SMALL, "seed=3")
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    assert (run / "accuracy.csv").is_file()
    assert list((_sweep_dir(tmp_path) / ".submitit").rglob("*_log.out"))


def test_optuna_preset_runs_two_trials(cli, tmp_path):
    result = cli("train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "train.iterations=2",
                 "train.meta_batch_size=2", "train.val_every=2", "train.val_episodes=5", "eval.episodes=5",
                 "train.progress=false")
    assert result.returncode == 0, result.stderr
    sweep = _sweep_dir(tmp_path)
    assert [p.name for p in run_dirs(tmp_path)] == ["0", "1"]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "algorithm.fast_lr" in results and "train.meta_lr" in results
    trials = pd.read_csv(sweep / "summary.csv")
    assert trials["status"].tolist() == ["ok", "ok"]
    assert trials["algorithm.adaptation_steps"].between(1, 4).all()


def test_optuna_refuses_keys_the_algorithm_lacks(cli, tmp_path):
    result = cli("train", "hparams_search=optuna", "algorithm=protonet")
    assert result.returncode == 1
    assert "tunes 'algorithm.fast_lr'" in result.stderr and "Traceback" not in result.stderr


def test_missing_plugin_names_the_extra(monkeypatch):
    from meta_cli.cli import preflight
    from meta_cli.errors import UserError

    real = preflight.importlib.import_module

    def without_joblib(name, *args):
        if name == "hydra_plugins.hydra_joblib_launcher":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(preflight.importlib, "import_module", without_joblib)
    with pytest.raises(UserError, match=r"pip install 'meta-cli\[launchers\]'"):
        preflight.check_plugins(["hydra/launcher=joblib"])
    preflight.check_plugins(["hydra/launcher=submitit_local"])  # installed: no error


def test_tensorboard_logger_writes_the_scalars(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = cli("train", *SMALL, "logger=tensorboard", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/tasks_per_s", "val/loss"} <= tags
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    train = metrics[metrics["split"] == "train"]
    assert [e.step for e in events.Scalars("train/loss")] == train["iteration"].tolist()
    for event, value in zip(events.Scalars("train/loss"), train["loss"]):
        assert math.isclose(event.value, value, rel_tol=1e-5)  # float32 vs 6 digits


def test_report_keeps_regression_and_classification_apart(cli, tmp_path):
    """A sweep over sinusoid (MSE) and Omniglot (accuracy): each result in its own columns,
    both in the plot; the MSE is shown as it is, not as a percentage."""
    result = cli("train", "-m", "dataset=sinusoid,omniglot", "train.iterations=2", "train.val_every=2",
                 "train.val_episodes=4", "train.meta_batch_size=2", "eval.episodes=10", "train.progress=false")
    assert result.returncode == 0, result.stderr
    sweep = _sweep_dir(tmp_path)
    report = cli("report", str(sweep))
    assert report.returncode == 0, report.stderr
    header, *rows = [line for line in report.stdout.splitlines()[1:] if line.strip()][:3]
    assert "accuracy %" in header and "test MSE" in header
    summary = pd.read_csv(sweep / "summary.csv")
    mse = summary.loc[summary["dataset"] == "sinusoid", "loss"].item()
    accuracy = summary.loc[summary["dataset"] == "omniglot", "accuracy"].item()
    sinusoid = next(r for r in rows if r.startswith("dataset=sinusoid"))
    omniglot = next(r for r in rows if r.startswith("dataset=omniglot"))
    assert f"{mse:.4f}" in sinusoid and f"{100 * mse:.2f}" not in sinusoid
    assert f"{100 * accuracy:.2f}" in omniglot
    assert (sweep / "test_results.png").read_bytes().startswith(PNG)


def test_report_counts_stopped_apart_from_failed_and_unfinished(tmp_path):
    from meta_cli.report.report import aggregate, format_table

    frame = pd.DataFrame({
        "job": ["0", "1", "2", "3"], "status": ["ok", "failed", "stopped", "running"],
        "overrides": ["seed=0", "seed=1", "seed=2", "seed=3"],
        "ways": [5, None, None, None], "shots": [1, None, None, None], "split": ["test", None, None, None],
        "accuracy": [0.5, None, None, None], "ci95": [0.01, None, None, None], "loss": [1.0, None, None, None]})
    (row,) = aggregate(frame).to_dict("records")
    assert (row["jobs"], row["failed"], row["stopped"], row["unfinished"], row["seeds"]) == (4, 1, 1, 1, 1)
    assert "stopped" in format_table(aggregate(frame)).splitlines()[0]

