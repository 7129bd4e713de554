"""Learning from episodes: each outer step is a meta-batch of numbered episodes (MAML, ProtoNet,
Reptile, MANN, ...)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meta_cli.data.base import DATASET_KEYS
from meta_cli.engine.regimes.base import GradientUpdate, StepResult, schedule
from meta_cli.engine.regimes.supervised import Supervised
from meta_cli.errors import UserError

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec
    from meta_cli.engine.settings import TrainSettings


class Episodes(Supervised):
    """Episode `(iteration - 1) * meta_batch_size + t` is task t of a step. Each process takes
    its contiguous share of those numbers (all of them in one process) and backpropagates its
    share of the mean objective: task by task through `Algorithm.meta_objective`, or at once
    through `Algorithm.meta_batch_loss` when the algorithm runs its meta-batch batched. However
    many processes share it, a step draws the same episodes and sums the same per-task
    gradients, so the run is one process's up to the order of float additions."""

    name = "episodes"

    @classmethod
    def check_training(cls, spec: "TrainSpec") -> None:
        train, source = spec.train, spec.source
        if train.batch_size is not None:
            raise UserError(f"train.batch_size applies to algorithms trained on mini-batches (pretrain); "
                            f"{spec.algorithm.__name__} trains on meta-batches of episodes "
                            f"(train.meta_batch_size): leave train.batch_size null.")
        keys = {**DATASET_KEYS, **{k: f"train.{k}" for k in ("ways", "query") if getattr(train, k) is not None}}
        source.check("train", train.ways or source.ways, source.shots, train.query or source.query,
                     keys=keys, use="meta-training")

    def start(self, settings: "TrainSettings", seed: int, bf16: bool, threads: int | None = 1) -> None:
        super().start(settings, seed, bf16, threads)
        optimizer = self.model.meta_optimizer(settings.meta_lr, settings.body_lr_scale)
        self.update = GradientUpdate(self.model, optimizer, schedule(optimizer, settings.lr_schedule,
                                                                     settings.iterations),
                                     self.world, settings.clip_grad_norm, bf16)

    def reschedule(self, iterations: int | None, done: int = 0) -> None:
        self.update.reschedule(self.settings.lr_schedule, iterations, done)

    def state_dict(self) -> dict[str, Any]:
        return self.update.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update.load_state_dict(state)

    def step(self, iteration: int) -> StepResult:
        s, source = self.settings, self.source
        batch = s.meta_batch_size
        ways, query = s.ways or source.ways, s.query or source.query
        # Drawn before the first forward: sampling between one task's backward and the next
        # task's forward measured ~3 % slower (docs/benchmarks.md).
        episodes = [source.episode("train", (iteration - 1) * batch + t, self.seed, ways, source.shots, query)
                    for t in self.world.share(batch)]
        loss_sum, accuracy_sum = self.update(iteration, lambda: self._backward(episodes, batch))
        classification = source.task == "classification"
        return StepResult(loss_sum / batch, accuracy_sum / batch if classification else None, batch)

    def _backward(self, episodes: list, batch: int) -> tuple[float, float]:
        """Backpropagates this share's part of the mean objective; returns the sums of its
        tasks' query losses and accuracies."""
        with self.update.autocast():
            return self._backward_share(episodes, batch)

    def _backward_share(self, episodes: list, batch: int) -> tuple[float, float]:
        if self.model.batched:
            loss, accuracy = self.model.meta_batch_loss(episodes)  # means over the share
            share = len(episodes)
            (loss if share == batch else loss * (share / batch)).backward()
            return loss.item() * share, (accuracy.item() * share if accuracy is not None else 0.0)
        loss_sum = accuracy_sum = 0.0
        for episode in episodes:  # one task's graph at a time, freed after its backward
            objective, loss, accuracy = self.model.meta_objective(episode)
            (objective / batch).backward()
            loss_sum += loss.item()
            accuracy_sum += accuracy.item() if accuracy is not None else 0.0
        return loss_sum, accuracy_sum
