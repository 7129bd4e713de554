"""`meta-cli report PATH`: one table, summary.csv and two PNGs for a run dir or a sweep dir.

Idempotent (it only reads the jobs' files and rewrites its own) and fine on an interrupted
sweep: jobs still `running` or never started are counted, not averaged.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd

from meta_cli.errors import UserError
from meta_cli.report.continual import plot_continual
from meta_cli.report.plot_style import markers, save_png, series_styles, use_fonts, wrap_label
from meta_cli.report.summary import UNREADABLE, Unreadable, job_dirs, read_job_file, summary, write_summary
from meta_cli.rundir.outputs import text_table

CURVES = "learning_curves.png"
RESULTS = "test_results.png"


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


#: Job states as status.json records them (and summary's `unreadable`: a damaged file); any
#: other (`running` with no live process, never started) is unfinished.
STATES = ("ok", "failed", "stopped", UNREADABLE)


def _kind(rows: pd.DataFrame) -> pd.Series:
    """'accuracy' for classification rows (accuracy.csv has an accuracy), 'return' for meta-RL
    (returns.csv), 'mse' for regression."""
    rl = rows["return"].notna() if "return" in rows.columns else pd.Series(False, index=rows.index)
    return pd.Series(["return" if r else "accuracy" if a else "mse"
                      for r, a in zip(rl, rows["accuracy"].notna())], index=rows.index)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean ± ci95 per setting over its seeds; `seed_std` is the spread across seeds.

    Classification rows fill `accuracy` (a fraction), regression rows `mse` (the test loss),
    meta-RL rows `return` (one row per adaptation `steps`): a sweep over several kinds keeps
    them apart. Jobs are counted by state: failed, stopped (by SIGTERM/SIGINT, resumable),
    unfinished (still running, killed, or never started) and unreadable (a damaged file).
    """
    common = common_overrides(summary)
    frame = summary.assign(setting=summary["overrides"].map(lambda o: _setting(o, common)))
    rows = []
    for setting, jobs in frame.groupby("setting", sort=False):
        done = jobs[jobs["status"] == "ok"]
        counts = {"jobs": jobs["job"].nunique(),
                  **{state: jobs.loc[jobs["status"] == state, "job"].nunique() for state in ("failed", "stopped")},
                  "unfinished": jobs.loc[~jobs["status"].isin(STATES), "job"].nunique(),
                  UNREADABLE: jobs.loc[jobs["status"] == UNREADABLE, "job"].nunique()}
        if done.empty:
            rows.append({"setting": setting, **counts})
            continue
        done = done.assign(kind=_kind(done), steps=done["steps"] if "steps" in done.columns else pd.NA,
                           # The dataset meta-tested on (eval dataset=NAME; a folder's root is not
                           # an override of the setting): one row per (setting, eval dataset, shots).
                           eval_dataset=done["eval_dataset"] if "eval_dataset" in done.columns else pd.NA)
        for (evaluated, ways, shots, split, steps, kind), group in done.groupby(
                ["eval_dataset", "ways", "shots", "split", "steps", "kind"], dropna=False, sort=False):
            values = group[{"accuracy": "accuracy", "mse": "loss", "return": "return"}[kind]].astype(float)
            foreign = not (pd.isna(evaluated) or (group["dataset"] == evaluated).all())
            rows.append({"setting": setting, "eval_dataset": evaluated if foreign else pd.NA,
                         "ways": ways, "shots": shots, "split": split, "steps": steps, **counts,
                         "seeds": len(values), kind: values.mean(),
                         f"{kind}_ci95": group["ci95"].astype(float).mean(),
                         "seed_std": values.std(ddof=1) if len(values) > 1 else math.nan})
    table = pd.DataFrame(rows)
    order = ["setting", "eval_dataset", "ways", "shots", "split", "steps", "jobs", "failed", "stopped", "unfinished", UNREADABLE, "seeds",
             "accuracy", "accuracy_ci95", "mse", "mse_ci95", "return", "return_ci95", "seed_std"]
    return table.reindex(columns=[c for c in order if c in table.columns and
                                  (c not in ("steps", "eval_dataset") or table[c].notna().any())])


def format_table(table: pd.DataFrame) -> str:
    """The aggregate as text: accuracy and its interval in %, MSE in its own columns."""
    # A result no job of the table has (runs whose result is continual.csv: continual.png) is
    # left out rather than shown as empty columns.
    for metric in ("accuracy", "mse", "return"):
        if metric in table.columns and table[metric].isna().all():
            table = table.drop(columns=[c for c in (metric, f"{metric}_ci95") if c in table.columns])
    shown = table.copy()
    for column in ("ways", "shots", "seeds", "steps"):
        if column in shown.columns:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
    if "seed_std" in shown.columns:  # in the unit of its row's metric
        percent = shown["accuracy"].notna() if "accuracy" in shown.columns else False
        shown["seed_std"] = [("" if pd.isna(v) else f"{100 * v:.2f}" if p else f"{v:.4f}")
                             for v, p in zip(table["seed_std"], percent if percent is not False
                                             else [False] * len(table))]
    for column, scale, digits in (("accuracy", 100.0, 2), ("accuracy_ci95", 100.0, 2),
                                  ("mse", 1.0, 4), ("mse_ci95", 1.0, 4), ("return", 1.0, 2),
                                  ("return_ci95", 1.0, 2)):
        if column in shown.columns:
            shown[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{scale * v:.{digits}f}")
    shown = shown.rename(columns={"accuracy": "accuracy %", "accuracy_ci95": "± ci95",
                                  "mse": "test MSE", "mse_ci95": "± MSE ci95", "return": "return",
                                  "return_ci95": "± return ci95", "seed_std": "seed std"})
    return text_table(shown)


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported only when a report draws
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_fonts()
    return plt


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_curves(out: Path, summary: pd.DataFrame, title: str) -> Path | None:
    """Train/val loss and accuracy against iteration, one line per job, each job its own
    colour (and line style, past 20 jobs) and markers where a curve has few points."""
    plt = _pyplot()
    common = common_overrides(summary)
    jobs = summary.drop_duplicates("run_dir")
    curves = []
    for row in jobs.itertuples():
        try:  # an unreadable metrics.csv was named by `summary`, which read it first
            curves.append((row, read_job_file(Path(row.run_dir) / "metrics.csv")))
        except (Unreadable, FileNotFoundError):
            continue
    curves = [(row, m) for row, m in curves if not m.empty]
    if not curves:
        return None
    # loss, then accuracy (classification) and the returns before/after adaptation (meta-RL)
    metrics = [m for m in ("loss", "accuracy", "return_pre", "return_post")
               if any(m in c.columns and c[m].notna().any() for _, c in curves)]
    panels = [(metric, split) for metric in metrics for split in ("train", "val")]
    figure, axes = plt.subplots(len(panels) // 2, 2, figsize=(12, 4 * len(panels) // 2), squeeze=False,
                                layout="constrained")
    styles = series_styles(len(curves))
    labels = [_short(f"{row.job}: {_setting(row.overrides, common, keep_seed=True)}") for row, _ in curves]
    for ax, (metric, split) in zip(axes.flat, panels):
        for (row, metrics), style, label in zip(curves, styles, labels):
            if metric not in metrics.columns:
                continue
            part = metrics[metrics["split"] == split].dropna(subset=[metric])
            ax.plot(part["iteration"], part[metric], label=label, **style, **markers(len(part)))
        ax.set_title(f"{split} {metric}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    # Below the panels, one entry per job whatever the panels hold (a job may lack a metric).
    handles = [plt.Line2D([], [], **style, **markers(1)) for style in styles]
    figure.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=2 if len(curves) > 6 else 1)
    figure.suptitle(f"learning curves: {title}")
    save_png(figure, out / CURVES)
    plt.close(figure)
    return out / CURVES


def plot_results(out: Path, table: pd.DataFrame, title: str) -> Path | None:
    """The meta-test result of each setting with ci95 error bars: one panel per metric
    (accuracy in %, test MSE), so a sweep over classification and regression shows both.
    Bars run horizontally, a setting per row with its label wrapped beside it: any number of
    settings and any length of label fit."""
    metrics = [m for m in ("accuracy", "mse", "return") if m in table.columns and table[m].notna().any()]
    if not metrics:
        return None
    plt = _pyplot()
    panels = [table.dropna(subset=[m]) for m in metrics]
    labels = {m: [f"{wrap_label(r.setting, width=40, lines=3)}\n"
                  f"{f'{int(r.ways)}-way ' if pd.notna(r.ways) else ''}{int(r.shots)}-shot, "
                  f"{int(r.seeds)} seed{'s' if r.seeds > 1 else ''}" for r in p.itertuples()]
              for m, p in zip(metrics, panels) if m != "return"}
    rows = max([len(p) for p in panels] + [0])
    lines = max([sum(label.count("\n") + 1 for label in ls) for ls in labels.values()] + [0])
    figure, axes = plt.subplots(1, len(metrics), squeeze=False, layout="constrained",
                                figsize=(7 * len(metrics), max(4.0, 1.2 + 0.17 * lines + 0.12 * rows)))
    for ax, metric, done in zip(axes.flat, metrics, panels):
        if metric == "return":
            _adaptation_curves(ax, done)
            continue
        scale = 100.0 if metric == "accuracy" else 1.0
        values, cis = scale * done[metric].astype(float), scale * done[f"{metric}_ci95"].astype(float)
        ax.barh(range(len(done)), values, xerr=cis, capsize=4, height=0.6,
                color="#4c72b0" if metric == "accuracy" else "#dd8452")
        for y, (value, ci) in enumerate(zip(values, cis)):
            ax.annotate(f"{value:.2f} ± {ci:.2f}" if metric == "accuracy" else f"{value:.4f} ± {ci:.4f}",
                        (value + ci, y), ha="left", va="center", fontsize=8, xytext=(4, 0),
                        textcoords="offset points", annotation_clip=False)
        ax.set_yticks(range(len(done)), labels[metric], fontsize=7)
        ax.set_ylim(len(done) - 0.5, -0.5)  # the first setting on top, as in the table
        ax.set_xlabel("test accuracy (%)" if metric == "accuracy" else "test MSE (lower is better)")
        ax.set_title("classification: meta-test accuracy ± ci95" if metric == "accuracy"
                     else "regression: meta-test MSE ± ci95")
        if metric == "accuracy":
            ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(f"meta-test results per setting: {title}")
    save_png(figure, out / RESULTS)
    plt.close(figure)
    return out / RESULTS


def _adaptation_curves(ax, done: pd.DataFrame) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Meta-RL: the mean test return against adaptation steps, a ci95 band, a line per setting
    (the MAML paper's Figure 5)."""
    settings = list(done.groupby("setting", sort=False))
    for (setting, rows), style in zip(settings, series_styles(len(settings))):
        rows = rows.sort_values("steps")
        steps, value, ci = (rows[c].astype(float).to_numpy() for c in ("steps", "return", "return_ci95"))
        ax.plot(steps, value, marker="o", label=_short(setting, 60), **style)
        ax.fill_between(steps, value - ci, value + ci, alpha=0.2, color=style["color"])
    ax.set_xlabel("adaptation steps (policy-gradient updates)")
    ax.set_ylabel("mean test return")
    ax.set_xticks(sorted(done["steps"].astype(int).unique()))
    ax.set_title("meta-RL: return after adaptation ± ci95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def report(path: Path, out: Path | None = None) -> tuple[str, str | None]:
    """The table as text, and the error that kept its files from being written (or None).

    The files (summary.csv and the plots) go into `out`, by default the folder reported on.
    """
    path = path.expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass a run dir or a sweep dir (outputs/multirun/<date>/<time>).")
    if not job_dirs(path):
        raise UserError(f"{path} holds no meta-cli runs (no .hydra/ or status.json below it).")
    frame = summary(path)
    table = aggregate(frame)
    common = common_overrides(frame)
    header = f"{path}: {frame['job'].nunique()} job(s)" + (f"; all with: {' '.join(common)}" if common else "")
    text = f"{header}\n{format_table(table)}"
    out = (out or path).expanduser().absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [p for p in (write_summary(path, out, frame), plot_curves(out, frame, path.name),
                               plot_results(out, table, path.name),
                               plot_continual(out, [(str(r.job), Path(r.run_dir)) for r in
                                                    frame.drop_duplicates("run_dir").itertuples()],
                                              path.name, _pyplot())) if p]
    except OSError as exc:
        return text, (f"cannot write the report files (summary.csv, plots) into {out}: "
                      f"{exc.strerror or exc}; the table above is complete. Write them elsewhere "
                      f"with: meta-cli report {path} --out DIR")
    return f"{text}\n\nwrote " + ", ".join(str(p) for p in written), None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meta-cli report",
                                     description="Table, summary.csv and plots for a run or sweep dir.")
    parser.add_argument("path", type=Path, help="a run dir or a sweep dir")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for summary.csv and the plots (default: PATH itself)")
    args = parser.parse_args(argv)
    text, error = report(args.path, args.out)
    print(text, flush=True)
    if error:
        raise UserError(error)
    return 0
