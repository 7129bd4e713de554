"""What the regimes of labelled data share: a backbone under an algorithm, checked against
the dataset's shapes, validated and meta-tested on seeded episodes (accuracy.csv)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_object
from torch import nn

from meta_cli.engine.regimes.base import Regime
from meta_cli.engine.instantiate import arguments, instantiate
from meta_cli.errors import UserError
from meta_cli.evaluation import continual, instances
from meta_cli.evaluation.cached import check_cache
from meta_cli.evaluation.episodes import (EpisodeValidation, EvalSettings, intra_op_threads, test_rows,
                                          write_results)

if TYPE_CHECKING:
    from meta_cli.engine.build import TrainSpec


def outputs_of(task: str, ways: int) -> int:
    """The model's outputs: one per way for classification, one value for regression."""
    return ways if task == "classification" else 1


def check_model(config: dict[str, Any], task: str, input_shape: tuple[int, ...]) -> None:
    """The algorithm's and the backbone's own checks, on the config alone (the task first:
    it decides what else can be said)."""
    algorithm = get_object(config["algorithm"]["_target_"])
    algorithm.check_task(task)
    backbone = get_object(config["backbone"]["_target_"])
    algorithm.check(task, vmap_blocker=backbone.vmap_blocker(**arguments(config["backbone"])),
                    **arguments(config["algorithm"]))
    backbone.check(input_shape, **arguments(config["backbone"]))


def check_ways(node: dict[str, Any], outputs: int, asked: dict[str, list[int]]) -> None:
    """The algorithm's own limits on the ways each setting asks of it (`Algorithm.check_ways`)."""
    algorithm = get_object(node["_target_"])
    for key, values in asked.items():
        for ways in values:
            algorithm.check_ways(ways, key, outputs, **arguments(node))


class Supervised(Regime):
    """A regime of labelled data (episodes, mini-batches): the model is the algorithm on a
    backbone, validated and meta-tested on episodes."""

    @classmethod
    def check(cls, spec: "TrainSpec") -> None:
        source, train, config = spec.source, spec.train, spec.config
        check_model(config, source.task, source.input_shape)
        if train.ways is not None and source.task != "classification":
            raise UserError("train.ways applies to classification only; leave it null.")
        outputs = outputs_of(source.task, source.ways)
        check_ways(config["algorithm"], outputs, {"train.ways": [train.ways] if train.ways else []})
        cls.check_training(spec)
        source.check("val", source.ways, source.shots, source.query, use="validation")
        cls.check_eval(config["algorithm"], source, spec.evaluation, outputs)
        freeze = config["backbone"].get("freeze", False)
        if freeze is not False and not get_object(config["algorithm"]["_target_"]).embeds_once:
            raise UserError(f"backbone.freeze={str(freeze).lower()} applies to learners that do not adapt the body "
                            f"in an episode (protonet, matchingnet, siamese, metaoptnet, pretrain); "
                            f"{get_object(config['algorithm']['_target_']).__name__} differentiates through every "
                            f"body weight: use backbone.freeze=false (and train.body_lr_scale to slow the body).")
        if spec.evaluation.cache:
            check_cache(config["algorithm"], config["backbone"], source, spec.evaluation.split)

    @classmethod
    def check_training(cls, spec: "TrainSpec") -> None:
        """What the regime's training steps need of the data and of `train.*`."""

    @classmethod
    def check_eval(cls, algorithm: dict[str, Any], source: Any, evaluation: EvalSettings,
                   outputs: int) -> None:
        if evaluation.protocol == "continual":
            evaluation.check_applies(source.task)
            continual.check(algorithm, source, evaluation)
            return
        if evaluation.protocol == "instances":  # sequences of max(eval.instances) presentations per class
            evaluation.check_applies(source.task)
            instances.check(get_object(algorithm["_target_"]), source, evaluation)
        else:
            evaluation.settings(source)  # the data can give every (ways, shots, query) asked
        check_ways(algorithm, outputs, {"eval.ways": evaluation.ways or []})

    @classmethod
    def build(cls, config: dict[str, Any], source: Any, classes: int | None = None) -> nn.Module:
        backbone = instantiate(config["backbone"], input_shape=source.input_shape)
        algorithm = get_object(config["algorithm"]["_target_"])
        extra = {}
        if "classes" in algorithm.injected:  # a classifier over every training class (pretrain)
            extra["classes"] = classes if classes is not None else source.num_classes("train")
        return instantiate(config["algorithm"], backbone=backbone, task=source.task,
                           outputs=outputs_of(source.task, source.ways), **extra)

    @property
    def _validation(self) -> EpisodeValidation:
        if not hasattr(self, "_episodes"):
            self._episodes = EpisodeValidation(self.model, self.source, self.settings.val_episodes,
                                               self.seed, self.world, self.threads)
        return self._episodes

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "val_accuracy" if self.source.task == "classification" else "val_loss"

    def better(self, value: float, best: float) -> bool:
        return self._validation.better(value, best)

    def validate(self, iteration: int) -> tuple[float, dict[str, float | None]]:
        return self._validation(iteration)

    def meta_test_size(self, evaluation: EvalSettings) -> int:
        if evaluation.protocol == "continual":
            return evaluation.streams * len(evaluation.classes) * (2 if len(evaluation.lr) > 1 else 1)
        if evaluation.protocol == "instances":
            return evaluation.episodes * len(evaluation.ways or [self.source.ways])
        return evaluation.episodes * len(evaluation.settings(self.source))

    def meta_test(self, evaluation: EvalSettings, identity: dict[str, Any], out: Path) -> float:
        if evaluation.protocol == "continual":
            with intra_op_threads(evaluation.threads):
                rows = continual.continual_rows(self.model, self.source, evaluation, identity)
            if self.world.main:
                continual.write_results(out, rows)
            return continual.headline(rows)
        if evaluation.protocol == "instances":
            return instances.meta_test(self.model, self.source, evaluation, identity, out, self.world)
        rows = test_rows(self.model, self.source, evaluation, identity, self.world)
        if self.world.main:
            write_results(out, rows)
        return rows[0]["accuracy"] if self.source.task == "classification" else rows[0]["loss"]
