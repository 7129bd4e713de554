"""`meta-cli predict checkpoint=PATH support=DIR query=DIR`: label your own images.

support=DIR holds one subfolder per class, named by its label; query= is a folder of images,
one image, or a list of them. Writes predictions.csv (path, predicted_class, score) into the
run dir and prints it. Everything (files, checkpoint, number of classes, every image) is
checked by `precheck` before Hydra creates the run dir.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from meta_cli.engine.instantiate import instantiate
from meta_cli.data.image_files import IMAGE_EXTENSIONS, list_images
from meta_cli.errors import UserError, shown
from meta_cli.rundir.outputs import PREDICTION_COLUMNS as COLUMNS
from meta_cli.apps.learner import Learner, restore
from meta_cli.config.validation import check_config, plain
from meta_cli.rundir.job import guarded, run_dir
from meta_cli.rundir.outputs import text_table, write_csv
from meta_cli.runlog import show


@dataclass
class Job:
    learner: Learner
    support: torch.Tensor  # (k, C, H, W) preprocessed support images, class by class
    labels: list[str]  # k class names, one per support image
    query_paths: list[Path]
    query: torch.Tensor  # (n, C, H, W) preprocessed query images


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _path(value: Any, key: str) -> Path:
    if value == "???" or value is None:
        raise UserError(f"{key}= is required: meta-cli predict checkpoint=PATH support=DIR query=DIR.")
    if not isinstance(value, str):
        raise UserError(f"{key} must be a path; got {shown(value)}.")
    return Path(value).expanduser()


def support_set(value: Any) -> tuple[list[Path], list[str]]:
    """support=DIR -> image paths and their class names (the subfolder names), sorted."""
    folder = _path(value, "support")
    if not folder.is_dir():
        raise UserError(f"support={folder}: no such directory; give a folder with one subfolder "
                        f"of images per class.")
    classes = [p for p in _visible(folder) if p.is_dir()]
    if not classes:
        raise UserError(f"support={folder} has no class subfolders; put each class's images in "
                        f"a subfolder named after the class (support/<class>/<image>.png).")
    paths, labels = [], []
    for c in classes:
        images = list_images(c)  # the image files image_folder trains on
        if not images:
            raise UserError(f"support class folder {c} holds no images "
                            f"({' '.join(IMAGE_EXTENSIONS)}).")
        paths += images
        labels += [c.name] * len(images)
    return paths, labels


def query_set(value: Any) -> list[Path]:
    """query=DIR (its images, sorted), query=FILE or query=[FILE,...] -> image paths."""
    if isinstance(value, list):
        paths = [_path(v, "query") for v in value]
        if not paths:
            raise UserError("query=[] names no images.")
        for p in paths:
            if not p.is_file():
                raise UserError(f"query image {p} does not exist (or is not a file).")
        return paths
    path = _path(value, "query")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"query={path}: no such directory or image file.")
    paths = list_images(path)
    if not paths:
        raise UserError(f"query={path} holds no images ({' '.join(IMAGE_EXTENSIONS)}).")
    return paths


def prepare(cfg: DictConfig | dict[str, Any]) -> Job:
    """Check the files, the checkpoint, the number of classes and decode every image."""
    config = plain(cfg)
    check_config("predict", config)
    learner = restore(_path(config["checkpoint"], "checkpoint"), instantiate(config["device"]), config["algorithm"])
    support_paths, labels = support_set(config["support"])
    query_paths = query_set(config["query"])
    learner.check_classes(len(set(labels)))
    support = learner.preprocess(support_paths, "support")
    query = learner.preprocess(query_paths, "query")
    return Job(learner, support, labels, query_paths, query)


def rows_of(job: Job) -> list[dict[str, str]]:
    result = job.learner.predict(job.support, job.labels, job.query)
    return [{"path": str(p), "predicted_class": label, "score": f"{score:.6f}"}
            for p, label, score in zip(job.query_paths, result.labels, result.scores.tolist())]


def predict_images(cfg: DictConfig) -> int:
    """Returns the number of labelled query images."""
    rows = rows_of(prepare(cfg))
    write_csv(run_dir() / "predictions.csv", COLUMNS, rows)
    show(text_table(rows, COLUMNS))
    show(f"meta-cli: wrote {run_dir() / 'predictions.csv'}", sys.stderr)  # stdout: the table alone
    return len(rows)


def precheck(config: dict[str, Any], cache: dict[str, Any], processes: int = 1) -> None:
    """Everything a job checks before its first step (the CLI's pre-flight, for every job)."""
    prepare(config)


@hydra.main(version_base="1.3", config_path="pkg://meta_cli.conf", config_name="predict")
def main(cfg: DictConfig) -> int | None:
    return guarded(lambda: predict_images(cfg))


if __name__ == "__main__":
    main()
