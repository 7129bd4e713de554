"""Episode sampling: learn2learn's TaskDataset pipeline against meta-cli's ClassSampler.

Both draw Omniglot 5-way 1-shot episodes with 5 query images per class (6 images per
class) from the same decoded images; learn2learn through MetaDataset + NWays, KShots,
LoadData, RemapLabels, ConsecutiveLabels, then stacking the samples into tensors as its
examples do; meta-cli by indexing one tensor. Prints episodes per second (median of 5 runs).

    .venv/bin/python scripts/bench_sampler.py
"""
from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meta_cli._l2l import l2l
from meta_cli.data.omniglot import Omniglot

WAYS, SHOTS, QUERY, EPISODES = 5, 1, 5, 300


def main() -> None:
    root = os.environ.get("META_CLI_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    data = Omniglot(root, rotations=False, flips=False, augment=False)
    sampler = data._sampler("train")  # decoded once, cached
    images = sampler.convert(sampler.images)  # learn2learn gets float model inputs, as ours gives
    labels = torch.empty(len(images), dtype=torch.long)
    for c, idx in enumerate(sampler.class_images):
        labels[idx] = c
    train_idx = np.concatenate(sampler.class_images)

    meta = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images[train_idx], labels[train_idx]))
    tasks = l2l.data.TaskDataset(meta, task_transforms=[
        l2l.data.transforms.NWays(meta, WAYS),
        l2l.data.transforms.KShots(meta, SHOTS + QUERY),
        l2l.data.transforms.LoadData(meta),
        l2l.data.transforms.RemapLabels(meta),
        l2l.data.transforms.ConsecutiveLabels(meta),
    ], num_tasks=-1)

    def l2l_episodes() -> None:
        for _ in range(EPISODES):
            x, y = tasks.sample()
            assert x.shape == (WAYS * (SHOTS + QUERY), 1, 28, 28)

    def ours() -> None:
        for i in range(EPISODES):
            ep = data.episode("train", i, 0, WAYS, SHOTS, QUERY)
            assert ep.query.shape == (WAYS * QUERY, 1, 28, 28)

    random.seed(0)
    results = {}
    for name, fn in (("learn2learn TaskDataset", l2l_episodes), ("meta-cli ClassSampler", ours)):
        fn()  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        results[name] = EPISODES / statistics.median(times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    for name, rate in results.items():
        print(f"{name:26s} {rate:9.0f} episodes/s")
    print(f"speed-up: {results['meta-cli ClassSampler'] / results['learn2learn TaskDataset']:.1f}x")


if __name__ == "__main__":
    main()
