"""`meta-cli eval checkpoint=PATH`: rebuild model and data from a checkpoint and meta-test it."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from meta_cli import build as builder
from meta_cli import checkpoint, distributed
from meta_cli.apps.common import meta_test
from meta_cli.build import Run, build, instantiate
from meta_cli.device import pick_device
from meta_cli.errors import UserError
from meta_cli.evaluation import EvalSettings, describe_test_time, with_test_time
from meta_cli.job import guarded, run_dir
from meta_cli.resume import load_weights
from meta_cli.validation import check_config, plain

log = logging.getLogger("meta_cli.eval")


def prepare(cfg: DictConfig | dict[str, Any]) -> tuple[Run, EvalSettings, dict[str, Any], Path]:
    """Check the eval config and the checkpoint; return the restored run."""
    config = plain(cfg)
    check_config("eval", config)
    if not isinstance(config["checkpoint"], str):
        raise UserError("checkpoint must be a path, e.g. checkpoint=outputs/<run>/checkpoints/best.pt.")
    path = Path(config["checkpoint"]).expanduser().resolve()
    payload = checkpoint.load(path)
    trained = copy.deepcopy(payload["config"])
    # test-time settings only: the weights fix everything else
    trained["algorithm"] = with_test_time(trained["algorithm"], config["algorithm"])
    if config["data_root"] is not None and "root" in trained["dataset"]:  # sinusoid has no files
        trained["dataset"]["root"] = config["data_root"]
    trained["device"] = config["device"]
    run = build(trained, splits=payload.get("splits") or None)
    load_weights(run.algorithm, payload["algorithm"], path)
    evaluation: EvalSettings = instantiate(config["eval"])
    evaluation.check_applies(run.source.task)
    if run.source.task != "rl":  # meta-RL tests eval.tasks tasks, of no ways or shots
        evaluation.settings(run.source)
        eval_ways = evaluation.ways if isinstance(evaluation.ways, list) else [evaluation.ways]
        builder.check_ways(trained["algorithm"], run.algorithm.outputs, {"eval.ways": [w for w in eval_ways if w]})
    return run, evaluation, payload, path


def evaluate_checkpoint(cfg: DictConfig) -> float:
    config = plain(cfg)
    world = distributed.init(instantiate(config["distributed"]), pick_device(config["device"]["kind"]).type)
    run, evaluation, payload, path = prepare(config)
    source = run.source.to(run.device)
    algorithm = run.algorithm.to(run.device)
    if source.task == "rl":
        torch.set_num_threads(1)  # as in training: the returns repeat at one thread count
    log.info("run dir %s: meta-testing %s on %s%s", run_dir(), path, run.device,
             f", {world.size} processes" if world.size > 1 else "")
    return meta_test(algorithm, source, evaluation, payload["choices"], run.config["seed"], path, world, run_dir(),
                     describe_test_time(config["algorithm"]))


def precheck(config: dict[str, Any], cache: dict[str, Any]) -> None:
    """Everything a job checks before its first step (the CLI's pre-flight, for every job)."""
    prepare(config)


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return guarded(lambda: evaluate_checkpoint(cfg))


if __name__ == "__main__":
    main()
