"""`meta-cli report` for the continual protocol: held-out and stream accuracy against the
classes learned, one line per run and kind, from each run's continual.csv (its test rows),
beside published anchor lines read from the table shipped with the package
(continual_anchors.csv: method, classes, accuracy, source), never typed in here."""
from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pandas as pd

from meta_cli.report.plot_style import save_png, series_styles

CONTINUAL = "continual.png"
ANCHORS = "continual_anchors.csv"


def anchors() -> pd.DataFrame:
    """The published lines: method, classes, accuracy (0-1), source."""
    with resources.files("meta_cli.report").joinpath(ANCHORS).open() as f:
        return pd.DataFrame(list(csv.DictReader(f))).astype({"classes": int, "accuracy": float})


def read_runs(runs: list[tuple[str, Path]]) -> list[tuple[str, pd.DataFrame]]:
    """(label, the test rows of its continual.csv) of each run that has one."""
    found = []
    for label, run in runs:
        path = run / "continual.csv"
        if not path.is_file():
            continue
        rows = pd.read_csv(path)
        rows = rows[(rows["split"] != "val") & (rows["status"] == "ok")]
        if not rows.empty:
            found.append((label, rows))
    return found


def plot_continual(out: Path, runs: list[tuple[str, Path]], title: str, plt) -> Path | None:  # noqa: ANN001
    """continual.png: accuracy (%) against classes learned, held-out solid and stream dashed,
    ci95 bars; the anchors grey dotted. None when no run has continual rows."""
    found = read_runs(runs)
    if not found:
        return None
    figure, ax = plt.subplots(figsize=(8, 6), layout="constrained")
    for (label, rows), style in zip(found, series_styles(len(found))):
        for kind, line in (("heldout", "-"), ("stream", "--")):
            part = rows[rows["split_kind"] == kind].sort_values("classes")
            if part.empty:
                continue
            learner = part["learner"].iloc[0] if "learner" in part.columns else "model"
            name = f"{label}{'' if learner == 'model' else f' [{learner}]'}: {kind}"
            ax.errorbar(part["classes"], 100 * part["accuracy"], yerr=100 * part["ci95"], capsize=3,
                        marker="o", color=style["color"], linestyle=line, label=name)
    for method, rows in anchors().groupby("method", sort=False):
        rows = rows.sort_values("classes")
        ax.plot(rows["classes"], 100 * rows["accuracy"], color="grey", linestyle=":", marker="s",
                label=f"{method} (published; {rows['source'].iloc[0].split(';')[0]})")
    ax.set_xlabel("classes learned (one image per SGD step, class after class)")
    ax.set_ylabel("accuracy over all classes learned (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7,
                  ncols=2 if len(found) > 3 else 1)
    ax.set_title(f"continual learning: {title}")
    save_png(figure, out / CONTINUAL)
    plt.close(figure)
    return out / CONTINUAL
