"""A run never writes over or beside files meta-cli did not create (meta_cli.rundir.files), and
a meta-cli run dir or sweep dir can still be trained in again, resumed and reported."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.engine.regimes.rollouts import Rollouts
from meta_cli.errors import UserError
from meta_cli.rundir import files as run_files
from meta_cli.rundir.loggers import CsvLogger

METRICS_COLUMNS = Episodes.metrics_columns()
RL_METRICS_COLUMNS = Rollouts.metrics_columns()  # meta-RL's: its own columns between

TINY = ["dataset=sinusoid", "train.iterations=4", "train.val_every=2", "train.checkpoint_every=2",
        "train.val_episodes=2", "train.meta_batch_size=2", "eval.episodes=4", "train.progress=false"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    return lines[0]


def test_a_users_metrics_csv_is_never_touched(cli, tmp_path):
    """The issue's case: a folder with the user's metrics.csv (id,value + 3 rows)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.csv").write_text("id,value\n1,a\n2,b\n3,c\n")
    before = _snapshot(folder)
    line = _error_line(cli("train", *TINY, f"hydra.run.dir={folder}"))
    assert "metrics.csv (header 'id,value')" in line and "hydra.run.dir=PATH" in line
    assert _snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]


def test_a_folder_with_other_files_is_refused_naming_them(cli, tmp_path):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / "status.json").write_text('["not", "a", "status"]')
    before = _snapshot(folder)
    line = _error_line(cli("train", *TINY, f"hydra.run.dir={folder}"))
    assert "data/" in line and "notes.txt" in line and "status.json (not a meta-cli status record)" in line
    assert _snapshot(folder) == before and not (folder / ".hydra").exists()


def test_a_sweep_dir_with_a_foreign_job_folder_is_refused(cli, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "accuracy.csv").write_text("name,score\nx,1\n")
    line = _error_line(cli("train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"))
    assert "0/accuracy.csv (header 'name,score')" in line and "hydra.sweep.dir=PATH" in line
    assert sorted(p.name for p in sweep.rglob("*")) == ["0", "accuracy.csv"]


def test_a_run_dir_is_trained_again_resumed_and_reported(cli, tmp_path):
    """An existing empty folder, then a re-run (resumes by itself, as a SLURM requeue), a
    report into it and resume=: all pass, and the run dir holds only what RUN_FILES lists."""
    folder = tmp_path / "run"
    folder.mkdir()
    assert cli("train", *TINY, f"hydra.run.dir={folder}").returncode == 0
    assert cli("report", str(folder)).returncode == 0
    again = cli("train", *TINY, f"hydra.run.dir={folder}")
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr
    (folder / "notes.txt").write_text("a file beside a run being resumed is left alone\n")
    resumed = cli("train", f"resume={folder}")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert run_files.run_dir_problems(folder) == ["notes.txt"]
    assert run_files.run_dir_problems(folder, strict=False) == []


def test_a_sweep_dir_is_run_again(cli, tmp_path):
    sweep = tmp_path / "sweep"
    for _ in range(2):
        result = cli("train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}")
        assert result.returncode == 0, result.stderr
    assert run_files.sweep_dir_problems(sweep) == []


def test_what_a_run_dir_may_hold(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    (run / "metrics.csv").write_text(",".join(RL_METRICS_COLUMNS) + "\n")  # meta-RL's header is ours too
    (run / "accuracy.csv").write_text("")  # empty: nothing to lose
    (run / "summary.csv").write_text("job,status,error,overrides,run_dir,seed,algorithm\n")
    (run / "status.json").write_text(json.dumps({"status": "ok"}))
    for name in ("step-0000002.pt", "step-0000002.json", "best.pt", "last.json", ".best.pt.x1.part"):
        (run / "checkpoints" / name).write_bytes(b"")
    (run / ".status.json.abc.part").write_bytes(b"")  # a write a crash interrupted
    assert run_files.run_dir_problems(run) == []
    (run / "checkpoints" / "model.pt").write_bytes(b"")
    (run / ".hydra" / "mine.yaml").write_text("")
    (run / "episodes.csv").write_text("a,b\n")
    (run / "splits.json").symlink_to(run / "status.json")
    assert run_files.run_dir_problems(run) == [
        ".hydra/mine.yaml", "checkpoints/model.pt", "episodes.csv (header 'a,b')", "splits.json (not a plain file)"]
    assert run_files.run_dir_problems(run, strict=False) == ["episodes.csv (header 'a,b')",
                                                             "splits.json (not a plain file)"]
    with pytest.raises(UserError, match="to resume it"):
        run_files.check_folder(run, multirun=False, key="hydra.run.dir=", resuming=True)
    run_files.check_folder(tmp_path / "absent", multirun=False, key="hydra.run.dir=")


def test_the_logger_never_appends_to_a_foreign_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("id,value\n1,a\n")
    with pytest.raises(UserError, match="not a meta-cli metrics.csv"):
        CsvLogger(tmp_path, METRICS_COLUMNS, keep_rows=1)
    assert (tmp_path / "metrics.csv").read_text() == "id,value\n1,a\n"
    # A meta-cli metrics.csv of another kind, with no rows to keep: started over with this run's header.
    (tmp_path / "metrics.csv").write_text(",".join(RL_METRICS_COLUMNS) + "\n")
    CsvLogger(tmp_path, METRICS_COLUMNS).close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [",".join(METRICS_COLUMNS)]
