"""Compose the run's objects from a config, checking it first.

`check_train` is the pre-flight of one training job: the data's splits against the episode
settings, each component's own `check` against the config (`Algorithm.check`,
`Backbone.check`), all without building a model or decoding a dataset. `build_train` runs
the same checks in the job and then instantiates. `eval` builds from a checkpoint's config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig

from meta_cli.algorithms.base import Algorithm, Task
from meta_cli.data.base import DATASET_KEYS, TaskSource
from meta_cli.distributed import World
from meta_cli.errors import UserError
from meta_cli.evaluation import EpisodeValidation, EvalSettings
from meta_cli.loop import Trainer, schedule
from meta_cli.outputs import RunOutputs
from meta_cli.settings import TrainSettings, uses_bf16
from meta_cli.steps import BatchStep, EpisodeStep, RolloutStep
from meta_cli.validation import TRAIN_GROUPS, check_config, check_node, plain


def trainer(run: Run, settings: TrainSettings, world: World, outputs: RunOutputs) -> Trainer:
    """The Trainer of a built run: the step its algorithm learns by, its validation, outputs."""
    algorithm, source, seed = run.algorithm, run.source, run.config["seed"]
    if source.task == "rl":  # the algorithm samples and updates itself (TRPO's line search)
        from meta_cli.rl.evaluation import OuterOptimizer, RLValidation

        return Trainer(algorithm, RolloutStep(algorithm, source, settings, seed),
                       RLValidation(algorithm, source, settings.val_episodes, seed), outputs, settings,
                       world, OuterOptimizer(algorithm))
    optimizer = algorithm.meta_optimizer(settings.meta_lr)
    bf16 = uses_bf16(settings.precision, run.device.type)
    step_kind = BatchStep if algorithm.learns_from == "batches" else EpisodeStep
    step = step_kind(algorithm, source, settings, seed, optimizer, world, bf16)
    validate = EpisodeValidation(algorithm, source, settings.val_episodes, seed, world,
                                 run.config.get("eval", {}).get("threads", 1))
    return Trainer(algorithm, step, validate, outputs, settings, world, optimizer,
                   schedule(optimizer, settings.lr_schedule, settings.iterations))


def instantiate(node: dict[str, Any], **kwargs: Any) -> Any:
    """hydra.utils.instantiate that lets a constructor's UserError through unwrapped."""
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


@dataclass
class Run:
    config: dict[str, Any]
    source: TaskSource
    algorithm: Algorithm
    device: torch.device


def _arguments(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not k.startswith("_")}


def outputs_of(task: Task, ways: int) -> int:
    return ways if task == "classification" else 1


def check_model(config: dict[str, Any], task: Task, input_shape: tuple[int, ...] | None) -> None:
    """The algorithm's and the backbone's own checks, on the config alone. The task decides
    first: meta-RL (no input shape) needs no backbone."""
    algorithm = get_object(config["algorithm"]["_target_"])
    algorithm.check_task(task)
    if task == "rl":
        return
    backbone = get_object(config["backbone"]["_target_"])
    get_object(config["algorithm"]["_target_"]).check(  # first: the task decides the rest
        task, vmap_blocker=backbone.vmap_blocker(**_arguments(config["backbone"])), **_arguments(config["algorithm"]))
    backbone.check(input_shape, **_arguments(config["backbone"]))


def build_model(config: dict[str, Any], task: Task, input_shape: tuple[int, ...], ways: int,
                classes: int | None = None) -> Algorithm:
    """The algorithm on its backbone, for data of `task` and `input_shape` with `ways` ways
    (`classes`: the training split's classes, for an algorithm that classifies all of them)."""
    check_model(config, task, input_shape)
    backbone = instantiate(config["backbone"], input_shape=input_shape)
    extra = {"classes": classes} if "classes" in get_object(config["algorithm"]["_target_"]).injected else {}
    return instantiate(config["algorithm"], backbone=backbone, task=task, outputs=outputs_of(task, ways), **extra)


def build(config: dict[str, Any], splits: dict[str, list[str]] | None = None,
          source: TaskSource | None = None) -> Run:
    """Check every group node, then instantiate (data stays lazy); `source`: already opened."""
    for group in TRAIN_GROUPS:
        check_node(config[group], group)
    device = instantiate(config["device"])
    if source is None:
        source = instantiate(config["dataset"], splits=splits)
    if source.task == "rl":  # the policy network is the algorithm's own; rollouts are NumPy
        check_model(config, source.task, None)
        if config["device"]["kind"] == "cuda":
            raise UserError("meta-RL runs on the CPU (its environments step in NumPy and its policies are "
                            "small): use device=cpu or device=auto.")
        return Run(config, source, instantiate(config["algorithm"], source=source), torch.device("cpu"))
    needs_classes = "classes" in get_object(config["algorithm"]["_target_"]).injected
    algorithm = build_model(config, source.task, source.input_shape, source.ways,
                            source.num_classes("train") if needs_classes else None)
    return Run(config, source, algorithm, device)


def check_train(config: dict[str, Any], sources: dict[str, TaskSource] | None = None) -> tuple[TrainSettings, EvalSettings]:
    """Everything a training job checks before its first step, without building a model.

    `sources` caches the datasets by config across the jobs of a sweep: each is opened once
    (its file listing read, its images decoded into the cache at most once).
    """
    check_config("train", config)
    sources = {} if sources is None else sources
    key = json.dumps(config["dataset"], sort_keys=True)
    if key not in sources:
        sources[key] = instantiate(config["dataset"])
    source = sources[key]
    instantiate(config["device"])  # device=cuda without a GPU
    check_model(config, source.task, None if source.task == "rl" else source.input_shape)
    settings: TrainSettings = instantiate(config["train"])
    evaluation: EvalSettings = instantiate(config["eval"])
    if source.task == "rl":
        for key, value in (("ways", settings.ways), ("query", settings.query), ("batch_size", settings.batch_size)):
            if value is not None:
                raise UserError(f"train.{key} does not apply to meta-RL; leave it null.")
        evaluation.check_applies(source.task)
        return settings, evaluation
    if settings.ways is not None and source.task != "classification":
        raise UserError("train.ways applies to classification only; leave it null.")
    algorithm = get_object(config["algorithm"]["_target_"])
    if algorithm.learns_from == "batches":
        if settings.batch_size is None:
            raise UserError(f"algorithm {algorithm.__name__} trains on mini-batches: set train.batch_size, "
                            f"e.g. train.batch_size=128.")
        source.check_batch("train", settings.batch_size)
    elif settings.batch_size is not None:
        raise UserError(f"train.batch_size applies to algorithms trained on mini-batches (pretrain); "
                        f"{algorithm.__name__} trains on meta-batches of episodes (train.meta_batch_size): "
                        f"leave train.batch_size null.")
    if config.get("init") is not None:
        from meta_cli import init

        init.read(config["init"], config["backbone"])
    asked = {"train.ways": [settings.ways] if settings.ways is not None else [],
             "eval.ways": list(evaluation.ways) if isinstance(evaluation.ways, list)
             else [evaluation.ways] if evaluation.ways is not None else []}
    check_ways(config["algorithm"], outputs_of(source.task, source.ways), asked)
    training = {"ways": "train.ways" if settings.ways is not None else "dataset.ways",
                "shots": "dataset.shots",
                "query": "train.query" if settings.query is not None else "dataset.query"}
    source.check("train", settings.ways or source.ways, source.shots, settings.query or source.query,
                 keys=training, use="meta-training")
    source.check("val", source.ways, source.shots, source.query, keys=DATASET_KEYS, use="validation")
    evaluation.settings(source)
    return settings, evaluation


def check_ways(node: dict[str, Any], outputs: int, asked: dict[str, list[int]]) -> None:
    """The algorithm's own limits on the ways each setting asks of it (`Algorithm.check_ways`)."""
    algorithm = get_object(node["_target_"])
    for key, values in asked.items():
        for ways in values:
            algorithm.check_ways(ways, key, outputs, **_arguments(node))


def build_train(cfg: DictConfig | dict[str, Any]) -> tuple[Run, TrainSettings, EvalSettings]:
    config = plain(cfg)
    sources: dict[str, TaskSource] = {}
    settings, evaluation = check_train(config, sources)
    run = build(config, source=next(iter(sources.values())))
    return run, settings, evaluation
