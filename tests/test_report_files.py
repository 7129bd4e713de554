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


def _columns(line: str, names: list[str]) -> list[int]:
    """The terminal column at which each of `names` starts in `line`."""
    from meta_cli.rundir.outputs import display_width

    return [display_width(line[: line.index(name)]) for name in names]


def test_wide_characters_keep_table_columns_aligned():
    from meta_cli.rundir.outputs import display_width, text_table

    assert [display_width(t) for t in ("クラス 1", "ｘ", "e\u0301", "a\u200db", "abc")] == [8, 2, 1, 2, 3]
    table = text_table([{"path": "a.png", "predicted_class": "クラス 1", "score": 0.5},
                        {"path": "b.png", "predicted_class": "x", "score": 0.25}]).splitlines()
    assert _columns(table[0], ["score"]) == _columns(table[1], ["0.5"]) == _columns(table[2], ["0.25"])


def test_report_of_many_one_point_jobs_with_long_wide_labels(cli, tmp_path):
    """12 jobs (more than matplotlib's 10 colours), each curve a single point, settings with
    long option names and Japanese class folders."""
    sweep = tmp_path / "sweep"
    for i in range(12):
        make_job(sweep / str(i), [f"dataset.root=/data/images/クラス_{i % 6}",
                                  f"algorithm.a_rather_long_option_name_for_a_label_{i % 6}=0.000{i % 6}",
                                  f"seed={i // 6}"], accuracy=0.4 + i / 100, iterations=(10,))
    result = cli("report", str(sweep))
    assert result.returncode == 0, result.stderr
    # At most one line per PNG about glyphs no installed font has, never one per glyph.
    assert len([w for w in result.stderr.splitlines() if "no installed font has" in w]) <= 2, result.stderr
    assert "Glyph" not in result.stderr
    lines = result.stdout.splitlines()
    header, rows = lines[1], [line for line in lines if line.startswith("dataset.root=")]
    assert len(rows) == 6
    for row in rows:  # the numbers start under their headers although クラス is 2 columns a character
        assert _columns(row, ["test"]) == _columns(header, ["split"])
    from PIL import Image

    with Image.open(sweep / "test_results.png") as image:  # labels wrap: the figure stays readable
        assert image.width < 1100 and image.height < 1400, image.size


def _figure(monkeypatch):
    """The figures report's plots save (closed, still readable) instead of their PNGs."""
    from meta_cli.report import report

    saved = []
    monkeypatch.setattr(report, "save_png", lambda figure, path: saved.append(figure))
    return saved


def test_curves_of_one_point_have_markers_and_every_job_its_own_style(tmp_path, monkeypatch):
    from meta_cli.report import report
    from meta_cli.report.plot_style import series_styles
    from meta_cli.report.summary import summary

    for count in (1, 10, 11, 20, 21, 45):
        styles = [(tuple(s["color"]), s["linestyle"]) for s in series_styles(count)]
        assert len(set(styles)) == count
    for i in range(12):
        make_job(tmp_path / "sweep" / str(i), [f"seed={i}"], accuracy=0.5, iterations=(10,))
    saved = _figure(monkeypatch)
    report.plot_curves(tmp_path, summary(tmp_path / "sweep"), "sweep")
    (figure,) = saved
    train_loss = figure.axes[0]
    assert len(train_loss.lines) == 12
    assert all(line.get_marker() not in (None, "None", "") and len(line.get_xdata()) == 1 for line in train_loss.lines)
    assert len({(tuple(line.get_color()), line.get_linestyle()) for line in train_loss.lines}) == 12


def test_result_labels_are_wrapped_beside_horizontal_bars(tmp_path, monkeypatch):
    from meta_cli.report import report
    from meta_cli.report.summary import summary

    long = "algorithm.a_rather_long_option_name_for_a_label=0.001 dataset.root=/a/very/long/path/to/images"
    for i in range(3):
        make_job(tmp_path / "sweep" / str(i), [f"{long}{i}"], accuracy=0.5)
    saved = _figure(monkeypatch)
    report.plot_results(tmp_path, report.aggregate(summary(tmp_path / "sweep")), "sweep")
    (figure,) = saved
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(labels) == 3 and all(len(line) <= 40 for label in labels for line in label.splitlines())
    assert all(label.splitlines()[-1] == "5-way 1-shot, 1 seed" for label in labels)
    assert figure.get_size_inches()[0] == 7  # wide labels never widen the figure
