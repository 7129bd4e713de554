"""The training loop's guards, on a model small enough to reason about."""
from __future__ import annotations

import pytest
import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.sinusoid import Sinusoid
from meta_cli.errors import UserError
from meta_cli.loop import Trainer, TrainSettings
from meta_cli.models.mlp import MLP


class SqrtOfWeight(Algorithm):
    """loss = sqrt(w) + 1: finite at w = 0, where its gradient is infinite."""

    def __init__(self, backbone, task, outputs, w: float = 0.0) -> None:
        super().__init__(backbone, task, outputs)
        self.w = torch.nn.Parameter(torch.tensor(w))

    def episode_loss(self, episode, training):
        return torch.sqrt(self.w) + 1.0, None


def _trainer(tmp_path, w: float, **settings) -> Trainer:
    source = Sinusoid()
    algorithm = SqrtOfWeight(MLP(input_shape=(1,), hidden=[4]), "regression", 1, w=w)
    return Trainer(algorithm, source, TrainSettings(progress=False, meta_batch_size=2, **settings),
                   tmp_path, seed=0, saved={})


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    trainer = _trainer(tmp_path, w=0.0)
    with pytest.raises(UserError, match=r"meta-gradient norm is inf at iteration 1 \(split train\)"):
        trainer.fit()
    assert trainer.algorithm.w.item() == 0.0  # no Adam step with an infinite gradient
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def test_clip_grad_norm_bounds_the_meta_gradient(tmp_path):
    trainer = _trainer(tmp_path, w=1e-6, clip_grad_norm=0.5)
    trainer.optimizer.zero_grad()
    (torch.sqrt(trainer.algorithm.w)).backward()  # d/dw sqrt(w) = 500 at w = 1e-6
    trainer._check_gradient(1)
    assert torch.isclose(trainer.algorithm.w.grad, torch.tensor(0.5))


class ShapeRecorder(SqrtOfWeight):
    """Records the query size of each meta-training episode it is given."""

    seen: list[int] = []

    def episode_loss(self, episode, training):
        ShapeRecorder.seen.append(len(episode.query))
        return super().episode_loss(episode, training)


@pytest.mark.parametrize("query, expected", [(None, 4), (7, 7)])
def test_train_query_sets_the_query_size_of_meta_training_episodes_only(tmp_path, query, expected):
    """train.query (Reptile's "train shots") draws meta-training episodes with that many query
    points; null keeps dataset.query."""
    ShapeRecorder.seen = []
    source = Sinusoid(shots=2, query=4)
    algorithm = ShapeRecorder(MLP(input_shape=(1,), hidden=[4]), "regression", 1, w=1.0)
    trainer = Trainer(algorithm, source, TrainSettings(progress=False, meta_batch_size=2, query=query),
                      tmp_path, seed=0, saved={})
    trainer.meta_step(1)
    assert ShapeRecorder.seen == [expected, expected]


@pytest.mark.parametrize("kind, expected", [
    ("constant", [0.1, 0.1, 0.1, 0.1]),
    ("linear", [0.1, 0.075, 0.05, 0.025]),  # 0.1 * (1 - i / 4)
    ("cosine", [0.1, 0.05 * (1 + 2 ** -0.5), 0.05, 0.05 * (1 - 2 ** -0.5)]),  # 0.05 * (1 + cos(pi i / 4))
])
def test_lr_schedule_decays_the_meta_lr_per_step_to_zero(tmp_path, kind, expected):
    trainer = _trainer(tmp_path, w=1.0, meta_lr=0.1, iterations=4, lr_schedule=kind,
                       val_every=100, checkpoint_every=100)
    seen = []
    for iteration in range(1, 5):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.meta_step(iteration)
    assert seen == pytest.approx(expected)
