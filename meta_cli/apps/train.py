"""`meta-cli train`: meta-train, keep the best checkpoint, meta-test it into accuracy.csv."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from meta_cli import __version__, build, checkpoint, distributed, init, launch, presets, resume
from meta_cli.apps.common import meta_test
from meta_cli.budget import TimeBudget, parse_duration
from meta_cli.device import pick_device
from meta_cli.errors import UserError
from meta_cli.job import guarded, run_dir
from meta_cli.outputs import METRICS_COLUMNS, RL_METRICS_COLUMNS, RunOutputs
from meta_cli.seeding import seed_everything
from meta_cli.validation import check_seed, plain

log = logging.getLogger("meta_cli.train")


def train(cfg: DictConfig) -> float | None:
    """Returns the best meta-validation accuracy (loss for regression), for sweepers."""
    config = plain(cfg)
    world = distributed.init(build.instantiate(config["distributed"]), pick_device(config["device"]["kind"]).type)
    # Seed before building: the initial weights depend on the seed alone.
    seed_everything(check_seed(config.get("seed")))
    try:
        run, settings, evaluation = build.build_train(config)
    except UserError as exc:  # as in the pre-flight: a key the preset set is named as the preset's
        hydra = HydraConfig.get()
        raise presets.blame(exc, hydra.runtime.choices.get("preset"), list(hydra.overrides.task)) from None
    distributed.check_same_config(world, config)
    if run.source.task == "rl":
        if world.size > 1:
            raise UserError("meta-RL runs in one process (its outer step is TRPO's line search over the "
                            "whole meta-batch); set distributed.processes=1.")
        # Its small matrix products gain nothing from threads, and a run repeats bit for bit
        # only at the thread count it started with.
        torch.set_num_threads(1)
    # The pre-flight checked this for launches it knows the size of; a SLURM job's ranks learn it here.
    launch.check_world([config], world.size)
    out = run_dir()
    resumed = resume.find(config["resume"], out)
    source, algorithm = run.source.to(run.device), run.algorithm.to(run.device)
    described = source.describe()
    choices = {g: HydraConfig.get().runtime.choices.get(g) for g in ("algorithm", "dataset", "backbone")}
    choices["preset"] = presets.applied(HydraConfig.get().runtime.choices.get("preset")) or "none"
    saved: dict[str, Any] = {"config": config, "choices": choices, "meta_cli_version": __version__, **described}
    if source.task == "classification":
        saved["classes"] = source.num_classes("train")  # what a classifier over them was built for
    columns = RL_METRICS_COLUMNS if source.task == "rl" else METRICS_COLUMNS
    outputs = RunOutputs(out, columns, saved, settings.keep_checkpoints,
                         lambda **kw: build.instantiate(config["logger"], run_dir=out, **kw), writes=world.main)
    trainer = build.trainer(run, settings, world, outputs)
    if settings.time_budget is not None:  # the final meta-test's items per validation item
        tests = evaluation.tasks if source.task == "rl" else evaluation.episodes * len(evaluation.settings(source))
        trainer.use_budget(TimeBudget(parse_duration(settings.time_budget), settings, tests / settings.val_episodes))
    if resumed is not None:
        path, payload = resumed
        resume.check_config(payload, config, path)
        if payload.get("splits") != described["splits"]:
            raise UserError(f"checkpoint {path} was trained on other class splits than "
                            f"{config['dataset'].get('root')} gives now; use the same data.")
        resume.load_weights(algorithm, payload["algorithm"], path)
        trainer.load_state_dict(payload)
        log.info("resuming %s from iteration %d (%s)", out, trainer.iteration, path.name)
    else:
        if config["init"] is not None:  # transfer: the backbone from another run, the rest new
            saved["init"] = init.load_backbone(algorithm, config["init"], config["backbone"])
            log.info("backbone from %s (sha256 %s)", saved["init"]["path"], saved["init"]["sha256"][:12])
        if world.main:
            (out / "splits.json").write_text(json.dumps(described["splits"], indent=1))
        log.info("run dir %s on %s%s; preset %s", out, run.device,
                 f", {world.size} processes" if world.size > 1 else "",
                 f"{choices['preset']} (conf/preset/{choices['preset']}.yaml)" if choices["preset"] != "none" else "none")
    best = trainer.fit()
    log.info("best %s %.4f at iteration %s", best["metric"], best["value"], best["iteration"])

    world.barrier()  # best.pt is rank 0's
    best_path = (out / "checkpoints" / "best.pt").resolve()
    payload = checkpoint.load(best_path, require_manifest=True)
    resume.load_weights(algorithm, payload["algorithm"], best_path)
    meta_test(algorithm, source, evaluation, choices, config["seed"], best_path, world, out)
    return best["value"]


def precheck(config: dict[str, Any], sources: dict[str, Any]) -> None:
    """Everything a job checks before its first step (the CLI's pre-flight, for every job);
    `sources` keeps the datasets opened for earlier jobs of the sweep."""
    build.check_train(config, sources)
    given = config["resume"]
    if given is not None:
        resumed = resume.find(given, resume.run_of(given) if isinstance(given, str) else Path())
        if resumed is not None:
            resume.check_config(resumed[1], config, resumed[0])


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(lambda: train(cfg), trains=True)


if __name__ == "__main__":
    main()
