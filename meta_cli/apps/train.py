"""`meta-cli train`: meta-train, keep the best checkpoint, meta-test it into accuracy.csv."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from meta_cli import __version__, checkpoint, resume
from meta_cli.apps.common import test_rows, write_results
from meta_cli.build import build_train, check_train, instantiate
from meta_cli.errors import UserError
from meta_cli.job import guarded, run_dir
from meta_cli.loop import Trainer
from meta_cli.seeding import seed_everything
from meta_cli.validation import check_seed, plain

log = logging.getLogger("meta_cli.train")


def train(cfg: DictConfig) -> float | None:
    """Returns the best meta-validation accuracy (loss for regression), for sweepers."""
    # Seed before building: the initial weights depend on the seed alone.
    seed_everything(check_seed(plain(cfg).get("seed")))
    run, settings, evaluation = build_train(cfg)
    out = run_dir()
    resumed = resume.find(run.config["resume"], out)
    source = run.source.to(run.device)
    algorithm = run.algorithm.to(run.device)
    described = source.describe()
    choices = {g: HydraConfig.get().runtime.choices.get(g) for g in ("algorithm", "dataset", "backbone")}
    saved: dict[str, Any] = {"config": run.config, "choices": choices,
                             "meta_cli_version": __version__, **described}
    trainer = Trainer(algorithm, source, settings, out, run.config["seed"], saved,
                      lambda start: instantiate(run.config["logger"], run_dir=out, start_iteration=start))
    if resumed is not None:
        path, payload = resumed
        resume.check_config(payload, run.config, path)
        if payload.get("splits") != described["splits"]:
            raise UserError(f"checkpoint {path} was trained on other class splits than "
                            f"{run.config['dataset'].get('root')} gives now; use the same data.")
        resume.load_weights(algorithm, payload["algorithm"], path)
        trainer.restore(payload)
        log.info("resuming %s from iteration %d (%s)", out, trainer.iteration, path.name)
    else:
        (out / "splits.json").write_text(json.dumps(described["splits"], indent=1))
        log.info("run dir %s on %s", out, run.device)
    best = trainer.fit()
    log.info("best %s %.4f at iteration %s", best["metric"], best["value"], best["iteration"])

    best_path = (out / "checkpoints" / "best.pt").resolve()
    payload = checkpoint.load(best_path, require_manifest=True)
    resume.load_weights(algorithm, payload["algorithm"], best_path)
    rows = test_rows(algorithm, source, evaluation, choices, run.config["seed"], best_path)
    write_results(out, rows)
    return best["value"]


def precheck(configs: list[dict[str, Any]]) -> None:
    """Everything each job checks before its first step (the CLI's pre-flight, every job)."""
    sources: dict[str, Any] = {}
    for config in configs:
        check_train(config, sources)
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
