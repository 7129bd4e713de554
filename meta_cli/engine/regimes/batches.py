"""Learning from mini-batches of (image, class) over every training class (pretrain), then
meta-tested on episodes as the episodic learners are."""
from __future__ import annotations

from typing import TYPE_CHECKING

from meta_cli.engine.regimes.base import StepResult
from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.errors import UserError

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec
    from meta_cli.engine.settings import TrainSettings


class Batches(Episodes):
    """Step i is mini-batch i - 1 of `TaskSource.batch` (shuffled epochs, a pure function of
    the seed and the index), its images split across processes as episodes are."""

    name = "batches"

    @classmethod
    def check_training(cls, spec: "TrainSpec") -> None:
        size = spec.train.batch_size
        if size is None:
            raise UserError(f"algorithm {spec.algorithm.__name__} trains on mini-batches: set "
                            f"train.batch_size, e.g. train.batch_size=128.")
        spec.source.check_batch("train", size)

    @classmethod
    def check_world(cls, train: "TrainSettings", size: int) -> None:
        if size > 1 and train.batch_size < size:
            raise UserError(f"train.batch_size={train.batch_size} has fewer images than the {size} processes "
                            f"that share each batch; use fewer processes (distributed.processes) or a larger "
                            f"train.batch_size.")

    def step(self, iteration: int) -> StepResult:
        size = self.settings.batch_size
        images, labels = self.source.batch("train", iteration - 1, self.seed, size)
        share = self.world.share(size)
        images, labels = images[share.start:share.stop], labels[share.start:share.stop]

        def backward() -> tuple[float, float]:
            with self.update.autocast():
                loss, accuracy = self.model.batch_loss(images, labels)  # means over the share
            (loss if len(share) == size else loss * (len(share) / size)).backward()
            return loss.item() * len(share), accuracy.item() * len(share)

        loss_sum, accuracy_sum = self.update(iteration, backward)
        return StepResult(loss_sum / size, accuracy_sum / size, size)
