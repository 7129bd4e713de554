"""The training loop and its step's guards, on a model small enough to reason about."""
from __future__ import annotations

import pytest
import torch

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.sinusoid import Sinusoid
from meta_cli.runtime.distributed import World
from meta_cli.errors import UserError
from meta_cli.rundir.loggers import CsvLogger
from meta_cli.engine.regimes.base import apply_gradient
from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.engine.trainer import Trainer
from meta_cli.models.mlp import MLP
from meta_cli.rundir.checkpointer import Checkpointer
from meta_cli.rundir.outputs import MetricsLog
from meta_cli.engine.settings import TrainSettings


class SqrtOfWeight(Algorithm):
    """loss = sqrt(w) + 1: finite at w = 0, where its gradient is infinite."""

    def __init__(self, backbone, task, outputs, w: float = 0.0) -> None:
        super().__init__(backbone, task, outputs)
        self.w = torch.nn.Parameter(torch.tensor(w))

    def episode_loss(self, episode, training):
        return torch.sqrt(self.w) + 1.0, None


def _trainer(tmp_path, w: float, algorithm_class=SqrtOfWeight, source=None, **settings) -> Trainer:
    source = source or Sinusoid()
    algorithm = algorithm_class(MLP(input_shape=(1,), hidden=[4]), "regression", 1, w=w)
    s = TrainSettings(progress=False, meta_batch_size=2, val_episodes=2, **settings)
    regime = Episodes(algorithm, source)
    regime.start(s, 0, bf16=False)
    log = MetricsLog(lambda **kw: CsvLogger(tmp_path, **kw), regime.metrics_columns())
    keeper = Checkpointer(tmp_path, {}, s.keep_checkpoints, s.checkpoint_every, before_save=log.sync)
    return Trainer(algorithm, regime, keeper, log, s, World())


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    trainer = _trainer(tmp_path, w=0.0)
    with pytest.raises(UserError, match=r"meta-gradient norm is inf at iteration 1 \(split train\)"):
        trainer.fit()
    assert trainer.model.w.item() == 0.0  # no Adam step with an infinite gradient
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def test_clip_grad_norm_bounds_the_meta_gradient():
    w = torch.nn.Parameter(torch.tensor(1e-6))
    optimizer = torch.optim.SGD([w], lr=1.0)
    torch.sqrt(w).backward()  # d/dw sqrt(w) = 500 at w = 1e-6
    apply_gradient(optimizer, [w], clip=0.5, iteration=1)
    assert torch.isclose(w.grad, torch.tensor(0.5))
    assert torch.isclose(w.detach(), torch.tensor(1e-6 - 0.5))


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
    trainer = _trainer(tmp_path, 1.0, ShapeRecorder, Sinusoid(shots=2, query=4), query=query)
    trainer.regime.step(1)
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

    def step(iteration):
        seen.append(trainer.regime.update.optimizer.param_groups[0]["lr"])
        return real(iteration)

    real, trainer.regime.step = trainer.regime.step, step
    trainer.fit()
    assert seen == pytest.approx(expected)


def test_state_dict_round_trip_continues_exactly(tmp_path):
    """Training 4 iterations equals training 2, restoring the state in a new Trainer, and
    training 2 more: the state is all a checkpoint needs."""
    settings = {"val_every": 2, "checkpoint_every": 2, "log_every": 1}
    straight = _trainer(tmp_path / "a", w=1.0, iterations=4, **settings)
    straight.fit()
    first = _trainer(tmp_path / "b", w=1.0, iterations=2, **settings)
    first.fit()
    second = _trainer(tmp_path / "b", w=0.5, iterations=4, **settings)
    second.load_state_dict(first.state_dict())
    second.fit()
    assert torch.equal(second.model.w, straight.model.w)
    assert second.best == straight.best

    def rows(run):  # timing columns aside
        return [line.split(",")[:4] for line in (run / "metrics.csv").read_text().splitlines()]

    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    last = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert last["iteration"] == 4 and torch.equal(last["algorithm"]["w"], straight.model.w.detach())
