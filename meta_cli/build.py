"""Compose the run's objects from a config, checking it first.

Used by the CLI before anything starts (so a bad sweep fails before its first job), by
`train` and by `eval` (with the config stored in a checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from meta_cli import workers
from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import TaskSource
from meta_cli.errors import UserError
from meta_cli.evaluation import EvalSettings
from meta_cli.loop import TrainSettings
from meta_cli.validation import check_keys, check_node

GROUPS = ("algorithm", "dataset", "backbone", "device")
TRAIN_KEYS = {*GROUPS, "train", "eval", "seed", "resume", "logger"}


def instantiate(node: dict[str, Any], **kwargs: Any) -> Any:
    """hydra.utils.instantiate that lets a constructor's UserError through unwrapped."""
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Resolve interpolations into a plain dict; a failing interpolation is a UserError."""
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot resolve the config: {str(exc).splitlines()[0]}")


@dataclass
class Run:
    config: dict[str, Any]
    source: TaskSource
    algorithm: Algorithm
    device: torch.device


def build_model(config: dict[str, Any], source: TaskSource) -> Algorithm:
    get_object(config["algorithm"]["_target_"]).check_task(source.task)  # before the backbone
    backbone = instantiate(config["backbone"], input_shape=source.input_shape)
    outputs = source.ways if source.task == "classification" else 1
    return instantiate(config["algorithm"], backbone=backbone, task=source.task, outputs=outputs)


def build(config: dict[str, Any], splits: dict[str, list[str]] | None = None) -> Run:
    """Check every group node and cross-constraint, then instantiate (data stays lazy)."""
    for group in GROUPS:
        check_node(config[group], group)
    device = instantiate(config["device"])
    source: TaskSource = instantiate(config["dataset"], splits=splits)
    algorithm = build_model(config, source)
    return Run(config, source, algorithm, device)


def check_seed(config: dict[str, Any]) -> int:
    check_keys(config, TRAIN_KEYS, "")
    missing = sorted(TRAIN_KEYS - set(config))
    if missing:
        raise UserError(f"config key '{missing[0]}' is missing (removed with ~?); it is required.")
    seed = config["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be an integer >= 0; got {seed!r}.")
    return seed


def build_train(cfg: DictConfig | dict[str, Any]) -> tuple[Run, TrainSettings, EvalSettings]:
    config = plain(cfg)
    check_seed(config)
    check_node(config["train"], "train")
    check_node(config["eval"], "eval")
    check_node(config["logger"], "logger")
    run = build(config)
    source = run.source
    settings: TrainSettings = instantiate(config["train"])
    if settings.ways is not None:
        if source.task != "classification":
            raise UserError("train.ways applies to classification only; leave it null.")
        if run.algorithm.fixed_ways and settings.ways != source.ways:
            raise UserError(f"train.ways={settings.ways} but {type(run.algorithm).__name__}'s output "
                            f"layer has dataset.ways={source.ways} outputs; leave train.ways null.")
    if settings.ways is not None or settings.query is not None:
        source.check("train", settings.ways or source.ways, source.shots, settings.query or source.query,
                     prefix="train.")
    source.check("train", source.ways, source.shots, source.query, prefix="dataset.")
    source.check("val", source.ways, source.shots, source.query, prefix="dataset.")
    workers.resolve(settings.workers, run.algorithm, settings.meta_batch_size, run.device.type)  # checks
    evaluation: EvalSettings = instantiate(config["eval"])
    evaluation.settings(run.algorithm, run.source)
    return run, settings, evaluation
