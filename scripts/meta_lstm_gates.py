"""Meta-LSTM's learned gates over the inner steps, from a checkpoint: Ravi & Larochelle's
Figure 3 (2017). For one randomly chosen parameter of each learner layer (a weight of each
convolution or linear layer, the head last), the forget gate f_t and the input gate i_t at each
inner step t = 1..T, one curve per meta-test episode, adapted as `meta-cli eval` adapts (batch
norm with the support batches' averages). i_t is the coordinate's step size on -grad; f_t < 1
shrinks the parameter (weight decay).

  .venv/bin/python scripts/meta_lstm_gates.py CHECKPOINT [--episodes 10] [--out gates.png] [--seed 0]

The data are read from $META_CLI_DATA (or --data-root), as `meta-cli eval` reads them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from meta_cli.algorithms.meta_lstm import MetaLSTM, episode_statistics, set_batch_norm_training
from meta_cli.engine.build import restore
from meta_cli.errors import UserError


def layers(model: MetaLSTM) -> list[tuple[str, int, int]]:
    """(name, first coordinate, size) of each weight of the learner (not biases or norms), in
    the order of theta."""
    found, start = [], 0
    for name, shape in model.shapes.items():
        if name.endswith("weight") and len(shape) >= 2:
            found.append((name, start, shape.numel()))
        start += shape.numel()
    return found


def trace_gates(model: MetaLSTM, source, episodes: int, seed: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per test episode, the (f_t, i_t) of every inner step, (n,) each."""
    model.eval()
    traces = []
    with torch.no_grad():
        for index in range(episodes):
            episode = source.episode("test", index, seed, source.ways, source.shots, source.query)
            trace: list[tuple[torch.Tensor, torch.Tensor]] = []
            with episode_statistics(model.learner):
                set_batch_norm_training(model.learner, True)
                model.adapt(episode.support, episode.support_labels, trace)
                set_batch_norm_training(model.learner, False)
            traces.append(trace)
    return traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--episodes", type=int, default=10, help="meta-test episodes, one curve each")
    parser.add_argument("--out", default="gates.png")
    parser.add_argument("--seed", type=int, default=0, help="the episodes' seed and the parameters' draw")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    restored = restore(args.checkpoint, data_root=args.data_root)
    model = restored.model
    if not isinstance(model, MetaLSTM):
        raise SystemExit(f"meta-cli: error: {args.checkpoint} holds a {type(model).__name__} model; "
                         f"this script plots algorithm=meta_lstm's gates.")
    traces = trace_gates(model, restored.data, args.episodes, args.seed)
    chosen = torch.Generator().manual_seed(args.seed)
    picks = [(name, start + int(torch.randint(size, (1,), generator=chosen))) for name, start, size in layers(model)]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, model.steps + 1)
    figure, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 5), squeeze=False, sharex=True)
    for column, (name, coordinate) in enumerate(picks):
        for row, (gate, label) in enumerate(((1, "input gate i_t"), (0, "forget gate f_t"))):
            ax = axes[row][column]
            for trace in traces:
                ax.plot(steps, [float(step[gate][coordinate]) for step in trace], marker="o", markersize=3, alpha=0.7)
            ax.set_title(f"{name}\n#{coordinate}" if row == 0 else "", fontsize=8)
            ax.set_xlabel("inner step t" if row == 1 else "")
            if column == 0:
                ax.set_ylabel(label)
            ax.tick_params(labelsize=7)
    figure.suptitle(f"Meta-LSTM gates, {args.episodes} test episodes, {Path(args.checkpoint).name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}: {len(picks)} layers x {args.episodes} episodes x {model.steps} steps")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"meta-cli: error: {exc}")
