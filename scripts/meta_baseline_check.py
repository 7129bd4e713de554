"""A short check of Meta-Baseline before the CLI has init= (issue 25): ProtoNet meta-trained by
the current Trainer from a pre-trained backbone (`meta_cli.init.load_backbone`), or from
scratch (--init omitted), then meta-tested on validation episodes.

    META_CLI_DATA=/work/shared/datasets python scripts/meta_baseline_check.py \\
        --init /tmp/pretrain.pt --iterations 300 --run-dir /tmp/mb

Temporary: `meta-cli train algorithm=protonet init=<pretrain>/checkpoints/best.pt` replaces it.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from meta_cli.algorithms.protonet import ProtoNet
from meta_cli.data.omniglot import Omniglot
from meta_cli.evaluation import evaluate
from meta_cli.init import load_backbone
from meta_cli.loop import Trainer, TrainSettings
from meta_cli.models.conv4 import Conv4
from meta_cli.seeding import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ways", type=int, default=20, help="ways of the training episodes")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    source = Omniglot(os.environ.get("META_CLI_DATA", "~/.cache/meta-cli/data"), download=False,
                      rotations=True, flips=True, augment=True)
    node = {"_target_": "meta_cli.models.conv4.Conv4", "hidden": args.hidden, "max_pool": True,
            "layers": 4, "channels_last": True, "pool_last": True, "widths": None}
    model = ProtoNet(Conv4(source.input_shape, hidden=args.hidden, max_pool=True), "classification", 5)
    saved = {"config": {"backbone": node}}
    if args.init is not None:
        saved["init"] = load_backbone(model, args.init, backbone_config=node)
        print(f"init from {saved['init']}", flush=True)
    model.eval()
    before = evaluate(model, source, "val", args.episodes, 0, 5, 1, 5)
    print(f"before meta-training: val 5w1s {100 * before.accuracy:.2f} +- {100 * before.ci95:.2f} %", flush=True)
    model.train()
    settings = TrainSettings(iterations=args.iterations, meta_batch_size=1, meta_lr=args.lr, ways=args.ways,
                             lr_schedule="cosine", val_every=args.iterations, val_episodes=args.episodes,
                             checkpoint_every=args.iterations, progress=False)
    trainer = Trainer(model, source, settings, args.run_dir, 0, saved)
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    print(f"meta-trained {args.iterations} iterations in {seconds:.1f} s "
          f"({args.iterations / seconds:.2f} it/s, validation included)", flush=True)
    model.eval()
    after = evaluate(model, source, "val", args.episodes, 0, 5, 1, 5)
    print(f"after: val 5w1s {100 * after.accuracy:.2f} +- {100 * after.ci95:.2f} %", flush=True)


if __name__ == "__main__":
    main()
