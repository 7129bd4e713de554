"""The continual protocol's streams: one vmapped computation over streams and rates equals the
plain loop over them; a diverging rate is flagged, not raised; the schedule is cut from one
full-length stream."""
from __future__ import annotations

import torch

from meta_cli.algorithms.anml import ANML
from meta_cli.algorithms.continual import FrozenEmbedding
from meta_cli.evaluation.continual import Stream, cut, run_batched, run_looped
from meta_cli.models.conv4 import Conv4
from meta_cli.models.mlp import MLP

CLASSES, SHOTS, HELDOUT = 4, 3, 2


def streams(learner, make_input, n: int = 3) -> list[Stream]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        train = make_input(CLASSES * SHOTS, g)
        held = make_input(CLASSES * HELDOUT, g)
        with torch.no_grad():
            out.append(Stream(learner.stream_features(train), torch.arange(CLASSES).repeat_interleave(SHOTS),
                              learner.stream_features(held), torch.arange(CLASSES).repeat_interleave(HELDOUT)))
    return out


def vectors(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 6, generator=g)


def images(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=g)


def test_batched_streams_equal_the_loop_frozen_embedding():
    torch.manual_seed(0)
    learner = FrozenEmbedding(MLP((6,), hidden=[8]))
    data = streams(learner, vectors)
    lrs = [0.01, 0.3, 1e300]
    looped, batched = run_looped(learner, data, CLASSES, lrs), run_batched(learner, data, CLASSES, lrs)
    for a, b in zip(looped, batched):
        torch.testing.assert_close(a, b)
    held, stream, diverged = batched
    assert held.shape == (3, 3) and diverged.dtype == torch.bool
    assert not diverged[:, :2].any() and diverged[:, 2].all()  # 1e300 (inf in float32): a non-finite loss, flagged
    assert stream[:, :2].mean() > 1 / CLASSES  # the stream's own images are learned, a little


def test_batched_streams_equal_the_loop_anml_conv():
    """ANML adapts its prediction network (a conv net, batch norm per image) on each image."""
    torch.manual_seed(0)
    model = ANML(Conv4((1, 12, 12), hidden=4, layers=2), "classification", CLASSES, 10).eval()
    data = streams(model, images, n=2)
    lrs = [0.05, 0.5]
    for a, b in zip(run_looped(model, data, CLASSES, lrs), run_batched(model, data, CLASSES, lrs)):
        torch.testing.assert_close(a, b)


def test_a_shorter_schedule_is_the_start_of_the_longer_stream():
    features = torch.arange(4 * SHOTS, dtype=torch.float32)[:, None]
    labels = torch.arange(4).repeat_interleave(SHOTS)
    held = torch.arange(4 * HELDOUT, dtype=torch.float32)[:, None]
    short = cut((features, labels, held, torch.arange(4).repeat_interleave(HELDOUT)), 2, SHOTS, HELDOUT)
    assert short.train_labels.tolist() == [0] * SHOTS + [1] * SHOTS
    assert short.train[:, 0].tolist() == list(range(2 * SHOTS)) and len(short.heldout) == 2 * HELDOUT


def test_oracle_sees_every_image_once_per_shuffled_epoch():
    from meta_cli.evaluation.continual import oracle

    labels = torch.arange(3).repeat_interleave(2)
    stream = Stream(torch.arange(6.0)[:, None], labels, torch.zeros(3, 1), torch.arange(3))
    seq = oracle(stream, 3, seed=0, index=0, classes=3)
    order = seq.train[:, 0].long()
    assert [sorted(order[e * 6:(e + 1) * 6].tolist()) for e in range(3)] == [list(range(6))] * 3
    assert torch.equal(seq.train_labels, labels[order]) and order[:6].tolist() != list(range(6))
    assert torch.equal(oracle(stream, 3, 0, 0, 3).train, seq.train)  # seeded


def test_scratch_is_a_fresh_seeded_network_not_the_model():
    from meta_cli.algorithms.continual import Scratch

    torch.manual_seed(0)
    backbone = Conv4((1, 12, 12), hidden=4, layers=2)
    a, b, c = Scratch(backbone, 1), Scratch(backbone, 1), Scratch(backbone, 2)
    first = "body.base.0.conv.weight"
    start = {k: v for k, v in a.stream_start(3).items()}
    assert torch.equal(start[first], b.stream_start(3)[first])
    assert not torch.equal(start[first], c.stream_start(3)[first])
    assert not torch.equal(start[first], dict(backbone.named_parameters())["base.0.conv.weight"])
    assert a.stream_logits(start, torch.rand(5, 1, 12, 12)).shape == (5, 3)


def test_report_plots_accuracy_against_classes_with_the_shipped_anchors(tmp_path):
    from meta_cli.report.continual import anchors, plot_continual
    from meta_cli.report.report import _pyplot
    from meta_cli.rundir.outputs import write_continual

    table = anchors()
    assert table[table["method"] == "ANML (re-runs)"].set_index("classes")["accuracy"].to_dict() == {
        10: 0.90, 50: 0.88, 100: 0.85, 200: 0.80}
    run = tmp_path / "run"
    run.mkdir()
    write_continual(run / "continual.csv", [
        {"classes": c, "split_kind": k, "accuracy": a, "ci95": 0.02, "streams": 3, "eval_lr": 0.03,
         "split": "test", "status": "ok", "learner": "model"}
        for c, a in ((10, 0.6), (25, 0.4)) for k in ("heldout", "stream")])
    png = plot_continual(tmp_path, [("run", run), ("empty", tmp_path / "none")], "t", _pyplot())
    assert png is not None and png.stat().st_size > 10_000
    assert plot_continual(tmp_path, [("empty", tmp_path / "none")], "t", _pyplot()) is None


def test_incremental_regression_batched_equals_the_loop():
    """Incremental sine: output k is function k; the MSE after the stream, vmapped = looped."""
    torch.manual_seed(0)
    learner = FrozenEmbedding(MLP((1,), hidden=[8]))
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(3):
        x, xh = torch.rand(CLASSES * SHOTS, 1, generator=g), torch.rand(CLASSES * HELDOUT, 1, generator=g)
        ids, idh = torch.arange(CLASSES).repeat_interleave(SHOTS), torch.arange(CLASSES).repeat_interleave(HELDOUT)
        data.append(Stream(learner.stream_features(x), ids, learner.stream_features(xh), idh,
                           torch.sin(x[:, 0] + ids), torch.sin(xh[:, 0] + idh)))
    lrs = [0.01, 0.1]
    looped, batched = run_looped(learner, data, CLASSES, lrs), run_batched(learner, data, CLASSES, lrs)
    for a, b in zip(looped, batched):
        torch.testing.assert_close(a, b)
    assert (batched[0] > 0).all() and not batched[2].any()
