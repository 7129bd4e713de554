"""Meta-RL learning check until the CLI runs RL: train, then meta-test after 0..3 adaptation steps.

    .venv/bin/python scripts/rl_check.py --algorithm maml_trpo --minutes 2.5 --out /tmp/maml.csv
    .venv/bin/python scripts/rl_check.py --algorithm pretrain_rl --iterations 40
    .venv/bin/python scripts/rl_check.py --algorithm random_init_rl --iterations 0

Each iteration draws `--meta-batch` numbered training tasks (as the engine will) and runs one
meta_step; a row per iteration goes to --out (returns, KL, seconds, the rollout share). Training
stops after --iterations or --minutes, whichever comes first. Then the policy is meta-tested on
--eval-tasks test tasks (returns +- ci95 after 0, 1, 2, 3 steps; a second table of the same
tasks from a second evaluation shows it is reproducible when --check-repeat is given).
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
import time

import torch

from meta_cli.rl.evaluation import adaptation_returns
from meta_cli.rl.maml_trpo import MAMLTRPO
from meta_cli.rl.pretrain_rl import PretrainRL
from meta_cli.rl.random_init import RandomInitRL
from meta_cli.rl.tasks import (
    HalfCheetahDirTasks,
    HalfCheetahVelTasks,
    Navigation2DTasks,
)

ALGORITHMS = {"maml_trpo": MAMLTRPO, "pretrain_rl": PretrainRL, "random_init_rl": RandomInitRL}
DATASETS = {"navigation2d": Navigation2DTasks, "halfcheetah_dir": HalfCheetahDirTasks,
            "halfcheetah_vel": HalfCheetahVelTasks}


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="maml_trpo")
    parser.add_argument("--dataset", choices=DATASETS, default="navigation2d")
    parser.add_argument("--iterations", type=int, default=10**9)
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="CSV of the per-iteration metrics")
    parser.add_argument("--check-repeat", action="store_true", help="evaluate twice, compare")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="algorithm.KEY or dataset.KEY overrides, e.g. algorithm.max_kl=0.02")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"algorithm": {}, "dataset": {}}
    for item in args.set:
        key, value = item.split("=", 1)
        group, name = key.split(".", 1)
        overrides[group][name] = parse_value(value)

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.algorithm} on {args.dataset}, meta-batch "
          f"{args.meta_batch}, {overrides}", flush=True)
    source = DATASETS[args.dataset](**overrides["dataset"])
    torch.manual_seed(args.seed)
    algorithm = ALGORITHMS[args.algorithm](source, **overrides["algorithm"])
    rows, start = [], time.perf_counter()
    for iteration in range(args.iterations):
        if time.perf_counter() - start > 60 * args.minutes:
            break
        tasks = source.tasks("train", range(iteration * args.meta_batch, (iteration + 1) * args.meta_batch),
                             args.seed)
        cpu = time.process_time()
        metrics = algorithm.meta_step(tasks, iteration, args.seed)
        # CPU seconds of this process: on a shared machine, the step's cost without the waiting.
        metrics["cpu_s"] = time.process_time() - cpu
        rows.append({"iteration": iteration, "elapsed_s": time.perf_counter() - start, **metrics})
        print(f"it {iteration:4d}  pre {metrics['return_pre']:8.2f}  post {metrics['return_post']:8.2f}  "
              f"kl {metrics.get('kl', 0):.4f}  step {metrics['step_s']:.2f}s (cpu {metrics['cpu_s']:.2f}s)  "
              f"rollout {metrics['rollout_s']:.2f}s ({100 * metrics['rollout_s'] / metrics['step_s']:.0f} %)",
              flush=True)
    train_s = time.perf_counter() - start
    if rows:
        steps_s = sorted(r["step_s"] for r in rows)
        cpu_s = sorted(r["cpu_s"] for r in rows)
        share = sum(r["rollout_s"] for r in rows) / sum(steps_s)
        print(f"trained {len(rows)} iterations in {train_s:.1f} s: {len(rows) / train_s:.3f} it/s, "
              f"median step {steps_s[len(rows) // 2]:.2f} s wall, {cpu_s[len(rows) // 2]:.2f} s CPU; "
              f"rollout share {100 * share:.1f} % of the wall time")
    if args.out and rows:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    start = time.perf_counter()
    results = adaptation_returns(algorithm, source, "test", args.eval_tasks, args.eval_seed)
    print(f"meta-test: {args.eval_tasks} test tasks, eval seed {args.eval_seed}, "
          f"{time.perf_counter() - start:.1f} s")
    for r in results:
        print(f"  steps {r.steps}: return {r.mean:8.2f} +- {r.ci95:.2f}")
    if args.check_repeat:
        again = adaptation_returns(algorithm, source, "test", args.eval_tasks, args.eval_seed)
        same = all(a.task_returns == b.task_returns for a, b in zip(results, again))
        print(f"  second evaluation identical: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
