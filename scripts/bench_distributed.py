"""Meta-training throughput of N processes against 1, through the real CLI, in one run.

For each setting, `meta-cli train` runs with distributed.processes=1 and =N by turns (--repeats
times each); each run's tasks/s is the median of its metrics.csv train rows after the first
(warm-up) row, and the table gives the medians over the repeats and their ratio. One process
uses every core (torch's intra-op threads); N processes take cores / N threads each. Omniglot
5-way 1-shot, no preset (the same settings for every contender), data from $META_CLI_DATA.

  .venv/bin/python scripts/bench_distributed.py [--processes 2] [--repeats 3] [--iterations 60]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {  # name: overrides (each on Omniglot 5w1s, a meta-batch of 16 tasks)
    "fomaml (l2l loop)": ["algorithm=fomaml", "algorithm.backend=l2l"],
    "maml second-order (vmap)": ["algorithm=maml", "algorithm.backend=vmap"],
    "protonet": ["algorithm=protonet"],
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tasks_per_s(overrides: list[str], processes: int, iterations: int, folder: Path) -> float:
    exe = Path(sys.executable).with_name("meta-cli")
    run = folder / f"run-{processes}-{len(list(folder.iterdir()))}"
    command = [str(exe), "train", "preset=none", *overrides, "train.meta_batch_size=16",
               f"train.iterations={iterations}", f"train.val_every={iterations}", "train.val_episodes=1",
               "eval.episodes=1", "train.log_every=5", "train.progress=false",
               f"distributed.processes={processes}", f"hydra.run.dir={run}"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(run / "metrics.csv", newline="") as f:
        rows = [float(r["tasks_per_s"]) for r in csv.DictReader(f) if r["split"] == "train"]
    return statistics.median(rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpu_model()}, {cores} cores; torch threads: 1 process x {cores}, "
          f"{args.processes} processes x {max(1, cores // args.processes)}")
    print(f"| setting | 1 process (tasks/s) | {args.processes} processes (tasks/s) | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            one, many = [], []
            for _ in range(args.repeats):  # by turns: a slow spell of the machine hits both
                one.append(tasks_per_s(SETTINGS[name], 1, args.iterations, Path(tmp)))
                many.append(tasks_per_s(SETTINGS[name], args.processes, args.iterations, Path(tmp)))
            a, b = statistics.median(one), statistics.median(many)
            print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
