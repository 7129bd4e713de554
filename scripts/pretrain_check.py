"""A short learning check of algorithm=pretrain before the engine runs it (issue 25).

Pre-trains the backbone + classifier over all Omniglot meta-training classes on numbered
mini-batches (`TaskSource.batch`, Adam on a cosine, as the Trainer will), then meta-tests
each test-time head on the same validation episodes with `meta_cli.evaluation.evaluate`.
Optionally saves a checkpoint in the Trainer's format (for init=) and meta-trains ProtoNet
from its backbone (Meta-Baseline) with the current Trainer.

    META_CLI_DATA=/work/shared/datasets python scripts/pretrain_check.py --seconds 120

Temporary: once the Trainer has its non-episodic step, `meta-cli train algorithm=pretrain`
replaces it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from meta_cli import checkpoint
from meta_cli.algorithms.pretrain import Pretrain
from meta_cli.data.omniglot import Omniglot
from meta_cli.evaluation import evaluate
from meta_cli.models.conv4 import Conv4
from meta_cli.seeding import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (the cosine's length)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds of steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--classifier", default="linear")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--heads", default="prototype,linear,cosine,logistic")
    parser.add_argument("--ways", default="5")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--split", default="val")
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--before", action="store_true", help="also meta-test the untrained body (prototype head)")
    parser.add_argument("--save", type=Path, default=None, help="write a checkpoint for init=")
    parser.add_argument("--load", type=Path, default=None, help="meta-test this checkpoint, no training")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    source = Omniglot(os.environ.get("META_CLI_DATA", "~/.cache/meta-cli/data"), download=False,
                      rotations=True, flips=True, augment=True)  # conf/dataset/omniglot.yaml
    backbone_node = {"_target_": "meta_cli.models.conv4.Conv4", "hidden": args.hidden, "max_pool": True,
                     "layers": 4, "channels_last": True, "pool_last": True, "widths": None}
    backbone = Conv4(source.input_shape, hidden=args.hidden, max_pool=True)
    model = Pretrain(backbone, "classification", 5, classes=source.num_classes("train"),
                     classifier=args.classifier)
    source.check_batch("train", args.batch_size)
    optimizer = model.meta_optimizer(args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    print(f"classes {model.classes}, examples {source.num_examples('train')}, threads "
          f"{torch.get_num_threads()}, {args}", flush=True)
    if args.before:
        model.eval()
        result = evaluate(model, source, args.split, args.episodes, 0, int(args.ways.split(",")[0]), 1, 5)
        print(f"untrained body, prototype head: {100 * result.accuracy:.2f} +- {100 * result.ci95:.2f} %", flush=True)
    model.train()
    started, window = time.perf_counter(), []
    step = 0
    if args.load is not None:
        model.load_state_dict(checkpoint.load(args.load)["algorithm"])
        args.steps = 0
    for step in range(1, args.steps + 1):
        images, labels = source.batch("train", step - 1, args.seed, args.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, accuracy = model.batch_loss(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        window.append((loss.item(), accuracy.item()))
        elapsed = time.perf_counter() - started
        if step % 100 == 0:
            mean = [sum(v) / len(v) for v in zip(*window)]
            print(f"step {step} loss {mean[0]:.3f} acc {mean[1]:.3f} {step / elapsed:.2f} steps/s "
                  f"({elapsed:.0f} s)", flush=True)
            window = []
        if args.seconds is not None and elapsed > args.seconds:
            break
    train_s = time.perf_counter() - started
    if step:
        print(f"trained {step} steps in {train_s:.1f} s: {step / train_s:.2f} steps/s, "
              f"{step * args.batch_size / train_s:.0f} images/s", flush=True)

    if args.save is not None:
        config = {"backbone": backbone_node, "algorithm": {"_target_": "meta_cli.algorithms.pretrain.Pretrain"},
                  "seed": args.seed, "note": "scripts/pretrain_check.py"}
        checkpoint.save({"config": config, "iteration": step, "algorithm": model.state_dict()}, args.save)
        print(f"saved {args.save}", flush=True)

    model.eval()
    results = {}
    for ways in (int(w) for w in args.ways.split(",")):
        for head in args.heads.split(","):
            model.head, model.finetune = head, args.finetune
            t0 = time.perf_counter()
            result = evaluate(model, source, args.split, args.episodes, 0, ways, 1, 5)
            seconds = time.perf_counter() - t0
            results[f"{ways}w1s {head}"] = (result.accuracy, result.ci95, seconds)
            print(f"{args.split} {ways}-way 1-shot, {head}{' +finetune' if args.finetune else ''}: "
                  f"{100 * result.accuracy:.2f} +- {100 * result.ci95:.2f} % ({args.episodes} episodes, "
                  f"{seconds:.1f} s)", flush=True)
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
