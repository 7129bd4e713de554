"""`meta-cli report PATH`: one table, summary.csv and two PNGs for a run dir or a sweep dir.

Idempotent (it only reads the jobs' files and rewrites its own) and fine on an interrupted
sweep: jobs still `running` or never started are counted, not averaged.
"""
from __future__ import annotations

import argparse
import io
import math
import re
from pathlib import Path

import pandas as pd

from meta_cli.atomic import write_atomic
from meta_cli.errors import UserError
from meta_cli.summary import job_dirs, write_summary

CURVES = "learning_curves.png"
BARS = "test_accuracy.png"
SETTING_COLUMNS = ["setting", "ways", "shots", "split"]


def _overrides(value: object) -> list[str]:
    return [] if pd.isna(value) else str(value).split()


def common_overrides(summary: pd.DataFrame) -> list[str]:
    """Overrides every job shares: said once above the table, not in every setting."""
    lists = [_overrides(v) for v in summary.drop_duplicates("job")["overrides"]]
    if len(lists) < 2:
        return []
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def _setting(overrides: object, common: list[str], keep_seed: bool = False) -> str:
    """A job's own overrides without its seed: the jobs of one setting differ by seed only."""
    kept = [o for o in _overrides(overrides)
            if o not in common and (keep_seed or not re.match(r"^\+?seed=", o))]
    return " ".join(kept) or "(defaults)"


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean ± ci95 per setting over its seeds; `seed_std` is the spread across seeds."""
    common = common_overrides(summary)
    frame = summary.assign(setting=summary["overrides"].map(lambda o: _setting(o, common)))
    regression = frame["accuracy"].isna().all()
    metric = "loss" if regression else "accuracy"
    rows = []
    for setting, jobs in frame.groupby("setting", sort=False):
        done = jobs[jobs["status"] == "ok"]
        counts = {"jobs": jobs["job"].nunique(), "failed": jobs.loc[jobs["status"] == "failed", "job"].nunique(),
                  "unfinished": jobs.loc[~jobs["status"].isin(["ok", "failed"]), "job"].nunique()}
        if done.empty:
            rows.append({"setting": setting, **counts})
            continue
        for (ways, shots, split), group in done.groupby(["ways", "shots", "split"], dropna=False, sort=False):
            values = group[metric].astype(float)
            rows.append({"setting": setting, "ways": ways, "shots": shots, "split": split, **counts,
                         "seeds": len(values), metric: values.mean(),
                         "ci95": group["ci95"].astype(float).mean(),
                         "seed_std": values.std(ddof=1) if len(values) > 1 else math.nan})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    shown = table.copy()
    percent = "accuracy" in shown.columns
    for column in ("ways", "shots", "seeds"):
        if column in shown.columns:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for column in ("accuracy", "ci95", "seed_std", "loss"):
        if column in shown.columns:
            scale, digits = (100.0, 2) if percent else (1.0, 4)
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{scale * v:.{digits}f}")
    if percent:
        shown = shown.rename(columns={"accuracy": "accuracy %", "ci95": "± ci95", "seed_std": "seed std"})
    cells = shown.astype(object).where(shown.notna(), "").astype(str)
    widths = {c: max(len(c), *(len(v) for v in cells[c])) for c in cells.columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in cells.columns)]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in cells.columns) for _, row in cells.iterrows()]
    return "\n".join(line.rstrip() for line in lines)


def _save_png(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def plot_curves(path: Path, summary: pd.DataFrame) -> Path | None:
    """Train/val loss and accuracy against iteration, one line per job."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = common_overrides(summary)
    jobs = summary.drop_duplicates("run_dir")
    curves = [(row, pd.read_csv(Path(row.run_dir) / "metrics.csv")) for row in jobs.itertuples()
              if (Path(row.run_dir) / "metrics.csv").is_file()]
    curves = [(row, m) for row, m in curves if not m.empty]
    if not curves:
        return None
    with_accuracy = any(m["accuracy"].notna().any() for _, m in curves)
    panels = [("loss", "train"), ("loss", "val")] + ([("accuracy", "train"), ("accuracy", "val")] if with_accuracy else [])
    figure, axes = plt.subplots(len(panels) // 2, 2, figsize=(12, 4 * len(panels) // 2), squeeze=False,
                                layout="constrained")
    for ax, (metric, split) in zip(axes.flat, panels):
        for row, metrics in curves:
            part = metrics[metrics["split"] == split]
            label = f"{row.job}: {_setting(row.overrides, common, keep_seed=True)}"[:70]
            ax.plot(part["iteration"], part[metric], marker="." if split == "val" else None, label=label)
        ax.set_title(f"{split} {metric}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="upper right")
    figure.suptitle(f"learning curves: {path.name}")
    _save_png(figure, path / CURVES)
    plt.close(figure)
    return path / CURVES


def plot_bars(path: Path, table: pd.DataFrame) -> Path | None:
    """Test accuracy (loss for regression) per setting with ci95 error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if "accuracy" in table.columns else "loss"
    if metric not in table.columns:
        return None
    done = table.dropna(subset=[metric])
    if done.empty:
        return None
    labels = [f"{r.setting}\n{f'{int(r.ways)}-way ' if pd.notna(r.ways) else ''}{int(r.shots)}-shot, "
              f"{int(r.seeds)} seed{'s' if r.seeds > 1 else ''}" for r in done.itertuples()]
    scale = 100.0 if metric == "accuracy" else 1.0
    figure, ax = plt.subplots(figsize=(max(6, 1.6 * len(done)), 5), layout="constrained")
    ax.bar(range(len(done)), scale * done[metric], yerr=scale * done["ci95"], capsize=6, color="#4c72b0")
    for x, (value, ci) in enumerate(zip(done[metric], done["ci95"])):
        ax.annotate(f"{scale * value:.2f} ± {scale * ci:.2f}", (x, scale * (value + ci)),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(done)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else "test loss (MSE)")
    ax.set_title(f"meta-test {metric} ± ci95 per setting: {path.name}")
    if metric == "accuracy":
        ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _save_png(figure, path / BARS)
    plt.close(figure)
    return path / BARS


def report(path: Path) -> str:
    path = path.expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass a run dir or a sweep dir (outputs/multirun/<date>/<time>).")
    if not job_dirs(path):
        raise UserError(f"{path} holds no meta-cli runs (no .hydra/ or status.json below it).")
    summary = write_summary(path)
    table = aggregate(summary)
    written = [p for p in (path / "summary.csv", plot_curves(path, summary), plot_bars(path, table)) if p]
    common = common_overrides(summary)
    header = f"{path}: {summary['job'].nunique()} job(s)" + (f"; all with: {' '.join(common)}" if common else "")
    return f"{header}\n{format_table(table)}\n\nwrote " + ", ".join(str(p) for p in written)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meta-cli report",
                                     description="Table, summary.csv and plots for a run or sweep dir.")
    parser.add_argument("path", type=Path, help="a run dir or a sweep dir")
    args = parser.parse_args(argv)
    print(report(args.path))
    return 0
