"""Learning to learn continually (OML, ANML): each outer step is a meta-batch of online
trajectories through a few classes of the meta-training split, each with its outer loss on
fresh images of those classes and on "remember" images of the whole split."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from meta_cli.data.base import DATASET_KEYS
from meta_cli.engine.regimes.base import StepResult
from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.errors import UserError

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec


def algorithm_key(spec: "TrainSpec", key: str) -> Any:
    """The algorithm's `key`, from the config or its constructor's default."""
    node = spec.config["algorithm"]
    return node[key] if key in node else inspect.signature(spec.algorithm).parameters[key].default


class Stream(Episodes):
    """Trajectory `(iteration - 1) * meta_batch_size + t` is task t of a step: episode number
    that of the training split with train.ways classes (default dataset.ways), the algorithm's
    `trajectory_shots` images of each learned online in class order (the episode's support, one
    SGD step per image) and train.query fresh images of each (its query); the remember images
    are mini-batch number that of the split (`TaskSource.batch`, `remember` images). Labels are
    the split's class ids (`Episode.classes`), the rows of the model's head. Both are pure
    functions of (seed, number): a resumed run draws what the first run drew.

    Validation and the meta-test are the episodic ones of every supervised regime (the model
    learns each support set online), or the continual protocol (eval.protocol=continual)."""

    name = "stream"
    #: A trajectory is one sequential computation; its gradient could be split by trajectory,
    #: but the remember batches and the head's rows would then need their own sharing rules.
    single_process = ("a continual meta-training step (oml, anml) runs its online trajectories in one "
                      "process: the Stream regime does not split them between processes")

    @classmethod
    def check_training(cls, spec: "TrainSpec") -> None:
        train, source = spec.train, spec.source
        name = spec.algorithm.__name__
        if train.batch_size is not None:
            raise UserError(f"train.batch_size does not apply to {name}, which meta-trains on online "
                            f"trajectories: its remember images are algorithm.remember; leave train.batch_size null.")
        shots = algorithm_key(spec, "trajectory_shots")
        keys = {**DATASET_KEYS, "shots": "algorithm.trajectory_shots",
                **{k: f"train.{k}" for k in ("ways", "query") if getattr(train, k) is not None}}
        source.check("train", train.ways or source.ways, shots, train.query or source.query,
                     keys=keys, use="meta-training trajectories")
        remember = algorithm_key(spec, "remember")
        if remember:
            source.check_batch("train", remember, key="algorithm.remember")

    def step(self, iteration: int) -> StepResult:
        s, source, model = self.settings, self.source, self.model
        batch = s.meta_batch_size
        ways, query = s.ways or source.ways, s.query or source.query
        tasks = [self._trajectory((iteration - 1) * batch + t, ways, query) for t in range(batch)]

        def backward() -> tuple[float, float]:
            loss_sum = accuracy_sum = 0.0
            with self.update.autocast():
                for task in tasks:  # one trajectory's graph at a time, freed after its backward
                    loss, accuracy = model.trajectory_objective(*task)
                    (loss / batch).backward()
                    loss_sum += loss.item()
                    accuracy_sum += accuracy.item()
            return loss_sum, accuracy_sum

        loss_sum, accuracy_sum = self.update(iteration, backward)
        return StepResult(loss_sum / batch, accuracy_sum / batch, batch)

    def _trajectory(self, index: int, ways: int, query: int) -> tuple[torch.Tensor, ...]:
        """Trajectory `index`: its images (T, C, H, W) in class order and their classes (T,),
        the outer loss's images (M, C, H, W) and classes (M,): fresh images of its classes,
        then the remember images."""
        source, model = self.source, self.model
        episode = source.episode("train", index, self.seed, ways, model.trajectory_shots, query)
        if episode.classes is None:
            raise UserError(f"dataset {type(source).__name__} does not number the classes of its episodes; "
                            f"{type(model).__name__} needs a classification dataset of image classes.")
        targets, labels = episode.query, episode.classes[episode.query_labels]
        if model.remember:
            images, classes = source.batch("train", index, self.seed, model.remember)
            targets, labels = torch.cat([targets, images]), torch.cat([labels, classes])
        return episode.support, episode.classes[episode.support_labels], targets, labels
