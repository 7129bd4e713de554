"""`meta-cli report` on what real sweeps leave behind: damaged files, many jobs, long setting
labels, wide characters. Job dirs are written here with meta-cli's own writers (the files a
run writes), so each test takes seconds."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.rundir.outputs import write_accuracy, write_csv

METRICS_COLUMNS = Episodes.metrics_columns()

PNG = b"\x89PNG\r\n\x1a\n"


def make_job(folder: Path, overrides: list[str], accuracy: float, status: str = "ok",
             iterations: tuple[int, ...] = (10, 20)) -> Path:
    """A finished classification job: status.json, metrics.csv and accuracy.csv."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    (folder / "status.json").write_text(json.dumps({"status": status, "error": None, "overrides": overrides}))
    write_csv(folder / "metrics.csv", METRICS_COLUMNS,
              [{"iteration": i, "split": split, "loss": 1.0 / i, "accuracy": accuracy * i / iterations[-1]}
               for i in iterations for split in ("train", "val")])
    if status == "ok":
        write_accuracy(folder / "accuracy.csv", [{
            "algorithm": "protonet", "dataset": "omniglot", "backbone": "conv4_pool", "ways": 5, "shots": 1,
            "query": 5, "split": "test", "episodes": 100, "accuracy": accuracy, "ci95": 0.02, "loss": 0.5,
            "seed": 0, "checkpoint": str(folder / "checkpoints" / "best.pt")}])
    return folder


def test_damaged_files_are_counted_unreadable_and_the_rest_reported(cli, tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [make_job(sweep / str(i), [f"seed={i}"], accuracy=0.5 + i / 100) for i in range(6)]
    make_job(sweep / "6", ["seed=6"], accuracy=0.0, status="failed")
    (jobs[1] / "metrics.csv").write_text("")                                    # empty
    (jobs[2] / "accuracy.csv").write_text('algorithm,accuracy\n"unterminated\n')  # not CSV
    (jobs[3] / "accuracy.csv").write_text((jobs[3] / "accuracy.csv").read_text().replace("0.53", "high"))
    (jobs[4] / "status.json").write_text("{truncated")
    (jobs[5] / "accuracy.csv").write_text((jobs[5] / "accuracy.csv").read_text().splitlines()[0] + "\n")
    (sweep / "6" / "metrics.csv").write_bytes(b"\x00\xff\xfe")  # a failed job: only its curve is lost
    result = cli("report", str(sweep))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = result.stderr.splitlines()
    assert all(w.startswith("meta-cli: warning: ") for w in warnings) and len(warnings) == 6, result.stderr
    for job, words in (("1/metrics.csv", "the file is empty"), ("2/accuracy.csv", "not a CSV file"),
                       ("3/accuracy.csv", "accuracy column holds values that are not numbers"),
                       ("4/status.json", "Expecting property name"), ("5/accuracy.csv", "no rows"),
                       ("6/metrics.csv", "its learning curve is left out")):
        line = next((w for w in warnings if str(sweep / job) in w), None)
        assert line is not None and words in line, (job, result.stderr)
    header, row = result.stdout.splitlines()[1:3]
    assert header.split()[:11] == ["setting", "ways", "shots", "split", "jobs", "failed", "stopped", "unfinished",
                                   "unreadable", "seeds", "accuracy"]
    assert row.split()[:10] == ["(defaults)", "5", "1", "test", "7", "1", "0", "0", "5", "1"]
    assert "50.00" in row  # job 0 alone is averaged
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary.set_index("job")["status"].to_dict() == {
        0: "ok", 1: "unreadable", 2: "unreadable", 3: "unreadable", 4: "unreadable", 5: "unreadable", 6: "failed"}
    assert (sweep / "learning_curves.png").read_bytes().startswith(PNG)
    assert (sweep / "test_results.png").read_bytes().startswith(PNG)
