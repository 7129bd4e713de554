"""`meta-cli train`: meta-train, keep the best checkpoint, meta-test it into the run dir."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from meta_cli.rundir.job import guarded, run_dir

log = logging.getLogger("meta_cli.train")


def train(cfg: DictConfig) -> float | None:
    """Returns the best meta-validation metric, for sweepers."""
    # Imported here: `meta-cli train --help` loads this module, and needs none of them.
    from meta_cli import __version__
    from meta_cli.config import presets
    from meta_cli.config.validation import plain
    from meta_cli.engine.budget import TimeBudget, parse_duration
    from meta_cli.engine.build import build, check_train
    from meta_cli.engine.instantiate import instantiate
    from meta_cli.engine.trainer import Trainer
    from meta_cli.errors import UserError
    from meta_cli.rundir.checkpointer import Checkpointer
    from meta_cli.rundir.outputs import MetricsLog
    from meta_cli.runtime import distributed
    from meta_cli.runtime.seeding import seed_everything

    config = plain(cfg)
    hydra_config = HydraConfig.get()
    try:
        spec = check_train(config)  # checked by the pre-flight already when it ran in this process
    except UserError as exc:  # as in the pre-flight: a key the preset set is named as the preset's
        raise presets.blame(exc, hydra_config.runtime.choices.get("preset"), list(hydra_config.overrides.task)) from None
    world = distributed.init(spec.distributed, spec.device.type)
    distributed.check_same_config(world, config)
    # The pre-flight checked this for launches it knows the size of; a SLURM job's ranks learn it here.
    spec.regime.check_world(spec.train, world.size)
    seed_everything(config["seed"])  # before building: the initial weights depend on the seed alone
    run = build(spec, world)
    out = run_dir()
    choices = {g: hydra_config.runtime.choices.get(g) for g in ("algorithm", "dataset", "backbone")}
    choices["preset"] = presets.applied(hydra_config.runtime.choices.get("preset")) or "none"
    saved: dict[str, Any] = {"config": config, "choices": choices, "meta_cli_version": __version__,
                             **run.source.describe()}
    if run.source.task == "classification":
        saved["classes"] = run.source.num_classes("train")  # what a classifier over them was built for
    metrics = MetricsLog(lambda **kw: instantiate(config["logger"], run_dir=out, **kw),
                         run.regime.metrics_columns(), writes=world.main)
    keeper = Checkpointer(out, saved, spec.train.keep_checkpoints, spec.train.checkpoint_every,
                          writes=world.main, before_save=metrics.sync)
    trainer = Trainer(run.model, run.regime, keeper, metrics, spec.train, world)
    if spec.train.time_budget is not None:  # the final meta-test's items per validation item
        tests = run.regime.meta_test_size(spec.evaluation)
        trainer.use_budget(TimeBudget(parse_duration(spec.train.time_budget), spec.train,
                                      tests / spec.train.val_episodes))
    keeper.start(trainer, run.model, config)
    if trainer.iteration == 0:
        log.info("run dir %s on %s%s; preset %s", out, spec.device,
                 f", {world.size} processes" if world.size > 1 else "",
                 f"{choices['preset']} (conf/preset/{choices['preset']}.yaml)" if choices["preset"] != "none" else "none")
    best = trainer.fit()
    log.info("best %s %.4f at iteration %s", best["metric"], best["value"], best["iteration"])

    world.barrier()  # best.pt is rank 0's
    best_path = keeper.load_best(run.model)
    identity = {**choices, "eval_dataset": choices["dataset"], "seed": config["seed"], "checkpoint": str(best_path)}
    run.regime.meta_test(spec.evaluation, identity, out)
    return best["value"]


def precheck(config: dict[str, Any], sources: dict[str, Any], processes: int = 1) -> None:
    """Everything a job checks before its first step (the CLI's pre-flight, for every job);
    `sources` keeps the datasets opened for earlier jobs of the sweep; `processes` will share it."""
    from meta_cli.engine.build import check_train
    from meta_cli.rundir import checkpointer

    spec = check_train(config, sources)
    spec.regime.check_world(spec.train, processes)
    given = config["resume"]
    if given is not None:  # a resume= that is no path: find() names the fault
        resumed = checkpointer.find(given, checkpointer.run_of(given) if isinstance(given, str) else Path())
        if resumed is not None:
            checkpointer.check_compatible(resumed[1], config, resumed[0])


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(lambda: train(cfg), trains=True)


if __name__ == "__main__":
    main()
