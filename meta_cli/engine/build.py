"""A config checked once into a `TrainSpec`, the spec built into a run, a checkpoint restored.

`check_train` is the whole check of a training job: the config's keys and types
(`meta_cli.config.validation`), the data against the episode settings, the regime's own checks
(`Regime.check`), `init=`; it builds no model and decodes no image. The pre-flight calls it
for every job of a command line; the job finds its spec already checked when it runs in the
same process (and checks it then when it runs in a process of its own: a launcher's worker, a
SLURM task). `build` trusts the spec. `restore` rebuilds a checkpoint's model for `eval` and
`predict`.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from torch import nn

from meta_cli.rundir import checkpoint
from meta_cli.rundir.checkpointer import restore_weights
from meta_cli.runtime.distributed import DistributedSettings, World, check_backend
from meta_cli.engine import cross_domain
from meta_cli.engine.instantiate import instantiate
from meta_cli.engine.regimes.base import Regime, regime_of
from meta_cli.errors import UserError
from meta_cli.evaluation.episodes import EvalSettings, with_test_time
from meta_cli.engine.settings import TrainSettings, uses_bf16
from meta_cli.config.validation import check_config


@dataclass
class TrainSpec:
    """A training job's config, checked: what `build` trusts."""

    config: dict[str, Any]  # resolved, as checkpoints store it
    source: Any  # the opened dataset (a TaskSource, or an RL task source)
    algorithm: type  # the algorithm's class
    regime: type[Regime]
    train: TrainSettings
    evaluation: EvalSettings
    distributed: DistributedSettings
    device: torch.device


#: Specs checked in this process, by config: the pre-flight's, found again by the job.
_CHECKED: dict[str, TrainSpec] = {}


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def check_train(config: dict[str, Any], sources: dict[str, Any] | None = None) -> TrainSpec:
    """The checked spec of a training job's resolved config; UserError on the first fault.

    `sources` caches the opened datasets by their config across the jobs of a sweep: each is
    opened once (its file listing read, its images decoded into the cache at most once).
    """
    key = config_key(config)
    if key in _CHECKED:
        return _CHECKED[key]
    check_config("train", config)
    sources = {} if sources is None else sources
    data_key = config_key(config["dataset"])
    if data_key not in sources:
        sources[data_key] = instantiate(config["dataset"])
    algorithm = get_object(config["algorithm"]["_target_"])
    source = cross_domain.fit_source(sources[data_key], config["backbone"])
    spec = TrainSpec(config, source, algorithm, regime_of(algorithm), instantiate(config["train"]),
                     instantiate(config["eval"]), instantiate(config["distributed"]),
                     instantiate(config["device"]))
    algorithm.check_task(spec.source.task)  # first: the task decides what else can be said
    spec.regime.check(spec)
    check_backend(spec.distributed.backend, spec.device.type)
    if config.get("init") is not None:
        from meta_cli.rundir import transfer

        transfer.read(config["init"], config["backbone"])
    _CHECKED[key] = spec
    return spec


@dataclass
class Run:
    """A built training job: the model and the data on the job's device, and its regime."""

    spec: TrainSpec
    model: nn.Module
    source: Any
    regime: Regime


def build(spec: TrainSpec, world: World) -> Run:
    """The model (seed first: its initial weights depend on the seed alone), the data and the
    regime ready to train on `spec.device`."""
    spec.regime.prepare_process()
    model = spec.regime.build(spec.config, spec.source).to(spec.device)
    source = spec.source.to(spec.device)
    regime = spec.regime(model, source, world, spec.device)
    regime.start(spec.train, spec.config["seed"], uses_bf16(spec.train.precision, spec.device.type),
                 spec.evaluation.threads)
    return Run(spec, model, source, regime)


@dataclass
class DataShape:
    """What a model is built for when there is no dataset to open (predict): the task, one
    input's shape and the ways, as a TaskSource gives them."""

    task: str
    input_shape: tuple[int, ...]
    ways: int


@dataclass
class Restored:
    """A checkpoint's model, rebuilt and loaded (on the CPU)."""

    path: Path
    payload: dict[str, Any]
    config: dict[str, Any]  # the trained config, with the test-time keys given
    model: nn.Module
    regime: type[Regime]
    data: Any  # the opened dataset (eval) or its DataShape (predict)


def restore(path: str | Path, test_time: dict[str, Any] | None = None, data_root: str | None = None,
            open_data: bool = True) -> Restored:
    """Load the checkpoint at `path` (verified, tensors only) and rebuild its model.

    `test_time`: algorithm keys that change only how the model adapts at test time (MAML's
    `test_adaptation_steps`, pretrain's `head`); `data_root`: where its dataset's files are
    now. `open_data`: open the dataset with the checkpoint's class splits (eval); else build
    from the stored image transform alone (predict, which needs no training data).
    """
    path = Path(path).expanduser().resolve()
    payload = checkpoint.load(path)
    config = copy.deepcopy(payload["config"])
    config["algorithm"] = with_test_time(config["algorithm"], test_time)
    if config.get("backbone", {}).get("weights") is not None:  # the checkpoint holds them (timm)
        config["backbone"]["weights"] = None
    if data_root is None and open_data and getattr(get_object(config["dataset"]["_target_"]), "under_data_root", True):
        data_root = os.environ.get("META_CLI_DATA")  # as train's dataset.root; not an image folder's
    if data_root is not None and "root" in config["dataset"]:  # sinusoid has no files
        config["dataset"]["root"] = data_root
    regime = regime_of(config["algorithm"]["_target_"])
    data = (cross_domain.fit_source(instantiate(config["dataset"], splits=payload.get("splits") or None),
                                    config["backbone"]) if open_data
            else _shape(config, payload, path))
    model = regime.build(config, data, classes=payload.get("classes"))
    restore_weights(model, payload["algorithm"], path)
    return Restored(path, payload, config, model, regime, data)


def _shape(config: dict[str, Any], payload: dict[str, Any], path: Path) -> DataShape:
    from meta_cli.data.transform import ImageTransform

    dataset = get_object(config["dataset"]["_target_"])
    if dataset.task != "classification":
        raise UserError(f"checkpoint {path} is a {dataset.task} model ({dataset.__name__}); predict (as eval "
                        f"dataset=NAME) labels images and needs a classification checkpoint (e.g. one trained "
                        f"with dataset=omniglot).")
    if "transform" not in payload:
        raise UserError(f"checkpoint {path} records no image transform; it was written by a meta-cli "
                        f"older than 0.1.0: train it again to predict with it.")
    try:
        transform = ImageTransform.from_dict(payload["transform"])
    except ValueError as exc:
        raise UserError(f"checkpoint {path} records an image transform predict cannot apply ({exc}): "
                        f"{payload['transform']}.") from None
    ways = config["dataset"].get("ways")
    if ways is None:
        import inspect

        ways = inspect.signature(dataset).parameters["ways"].default
    return DataShape(dataset.task, transform.shape, ways)
