"""`meta-cli eval checkpoint=PATH`: rebuild model and data from a checkpoint and meta-test it;
with `dataset=NAME`, meta-test it on another dataset (`meta_cli.engine.cross_domain`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig

from meta_cli.runtime import distributed
from meta_cli.engine import cross_domain
from meta_cli.engine.build import Restored, config_key, restore
from meta_cli.engine.instantiate import instantiate
from meta_cli.errors import UserError
from meta_cli.runtime.distributed import check_backend
from meta_cli.evaluation.cached import check_cache
from meta_cli.evaluation.episodes import EvalSettings, describe_test_time
from meta_cli.rundir.job import guarded, run_dir
from meta_cli.config.validation import check_config, plain

log = logging.getLogger("meta_cli.eval")


@dataclass
class EvalSpec:
    """An eval job, checked: the restored checkpoint and what to meta-test it on."""

    restored: Restored
    evaluation: EvalSettings
    config: dict[str, Any]  # the eval command's own config
    eval_dataset: str  # what accuracy.csv's eval_dataset names


#: Eval jobs checked in this process, by config: the pre-flight's, found again by the job.
_CHECKED: dict[str, EvalSpec] = {}


def check_eval(cfg: DictConfig | dict[str, Any]) -> EvalSpec:
    """Check the eval config and the checkpoint; return the restored model and its data."""
    config = plain(cfg)
    key = config_key(config)
    if key not in _CHECKED:
        _CHECKED[key] = _check(config)
    return _CHECKED[key]


def _check(config: dict[str, Any]) -> EvalSpec:
    check_config("eval", config)
    if not isinstance(config["checkpoint"], str):
        raise UserError("checkpoint must be a path, e.g. checkpoint=outputs/<run>/checkpoints/best.pt.")
    node = config.get("dataset")
    cross_domain.check_plain(node, config["data_root"])
    foreign = cross_domain.given(node)
    restored = restore(config["checkpoint"], config["algorithm"], config["data_root"], open_data=not foreign)
    if foreign:
        model = cross_domain.model_transform(restored.payload, restored.path)
        restored.data = cross_domain.open_dataset(node, restored.config["dataset"], model)
        eval_dataset = cross_domain.describe(node)
    else:
        eval_dataset = restored.payload["choices"]["dataset"]
    evaluation: EvalSettings = instantiate(config["eval"])
    if evaluation.split == "all" and getattr(restored.data, "task", None) != "classification":
        raise UserError("eval.split=all meta-tests on every class of a classification dataset; "
                        f"{restored.payload['choices']['dataset']} has no classes.")
    evaluation.fill_from(restored.data)
    check_backend(instantiate(config["distributed"]).backend, instantiate(config["device"]).type)
    restored.regime.check_eval(restored.config["algorithm"], restored.data, evaluation,
                               getattr(restored.model, "outputs", 1))
    if evaluation.cache:
        check_cache(restored.config["algorithm"], restored.config["backbone"], restored.data, evaluation.split)
    return EvalSpec(restored, evaluation, config, eval_dataset)


def evaluate_checkpoint(cfg: DictConfig) -> float:
    spec = check_eval(cfg)
    device = instantiate(spec.config["device"])
    world = distributed.init(instantiate(spec.config["distributed"]), device.type)
    restored = spec.restored
    restored.regime.prepare_process()
    regime = restored.regime(restored.model.to(device), restored.data.to(device), world, device)
    identity = {**restored.payload["choices"], "eval_dataset": spec.eval_dataset,
                "seed": restored.config["seed"], "checkpoint": str(restored.path),
                "test_settings": describe_test_time(spec.config["algorithm"])}
    log.info("run dir %s: meta-testing %s on %s%s", run_dir(), restored.path, device,
             f", {world.size} processes" if world.size > 1 else "")
    return regime.meta_test(spec.evaluation, identity, run_dir())


def precheck(config: dict[str, Any], cache: dict[str, Any], processes: int = 1) -> None:
    """Everything a job checks before its first step (the CLI's pre-flight, for every job)."""
    check_eval(config)


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return guarded(lambda: evaluate_checkpoint(cfg))


if __name__ == "__main__":
    main()
