"""`meta-cli train`: meta-train, keep the best checkpoint, meta-test it into accuracy.csv."""
from __future__ import annotations

import json
import logging
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from meta_cli import __version__, checkpoint
from meta_cli.apps.common import test_rows, write_results
from meta_cli.build import build_train, check_seed, plain
from meta_cli.job import guarded, run_dir
from meta_cli.loop import Trainer
from meta_cli.seeding import seed_everything

log = logging.getLogger("meta_cli.train")


def train(cfg: DictConfig) -> float | None:
    """Returns the best meta-validation accuracy (loss for regression), for sweepers."""
    # Seed before building: the initial weights depend on the seed alone.
    seed_everything(check_seed(plain(cfg)))
    run, settings, evaluation = build_train(cfg)
    out = run_dir()
    source = run.source.to(run.device)
    algorithm = run.algorithm.to(run.device)
    described = source.describe()
    (out / "splits.json").write_text(json.dumps(described["splits"], indent=1))
    choices = {g: HydraConfig.get().runtime.choices.get(g) for g in ("algorithm", "dataset", "backbone")}
    saved: dict[str, Any] = {"config": run.config, "choices": choices,
                             "meta_cli_version": __version__, **described}
    log.info("run dir %s on %s", out, run.device)
    best = Trainer(algorithm, source, settings, out, run.config["seed"], saved).fit()
    log.info("best %s %.4f at iteration %s", best["metric"], best["value"], best["iteration"])

    best_path = (out / "checkpoints" / "best.pt").resolve()
    payload = checkpoint.load(best_path)
    algorithm.load_state_dict(payload["algorithm"])
    rows = test_rows(algorithm, source, evaluation, choices, run.config["seed"], best_path)
    write_results(out, rows)
    return best["value"]


def precheck(cfg: DictConfig) -> None:
    """Everything the job checks before its first step (run by the CLI for every job)."""
    build_train(cfg)


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(lambda: train(cfg))


if __name__ == "__main__":
    main()
