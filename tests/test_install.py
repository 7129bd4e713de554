"""The stack scripts/setup.sh installs (numpy 2, pandas 3) runs every algorithm.

qpth 0.0.18's metadata caps numpy<2, so setup.sh installs qpth and learn2learn without
their dependencies; these tests are what shows that their code works here: one training
step of each algorithm in conf/algorithm/ (learn2learn's MAML and MetaSGD, qpth through
SVClassifier), and learn2learn's compiled MetaDataset and Taskset.
"""
from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from packaging.version import Version

from meta_cli.data.base import Episode, episode_rng
from meta_cli.engine.regimes.base import regime_of
from meta_cli.data.sampler import Affine, ClassSampler

CONF = REPO / "conf"
ALGORITHMS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy 2-core machine two
    threads waited on each other: 21 s against 1.8 s for the eight steps (load average 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _node(path: Path, **overrides: object) -> dict:
    """A group's YAML as instantiate takes it: without its Hydra defaults list."""
    node = OmegaConf.to_container(OmegaConf.load(path))
    node.pop("defaults", None)
    return {**node, **overrides}


def test_setup_installs_the_numpy_2_stack():
    assert Version(np.__version__).major >= 2, np.__version__
    assert Version(pd.__version__).major >= 3, pd.__version__
    assert importlib.metadata.version("learn2learn") == "0.2.0"
    # The one requirement setup.sh overrides, still declared: when qpth lifts it, drop --no-deps.
    assert any("numpy<2" in r.replace(" ", "") for r in importlib.metadata.requires("qpth"))


def _classification_episode(ways: int = 3, shots: int = 2, query: int = 2) -> Episode:
    """An Omniglot-shaped episode from the project's own sampler (numpy 2 draws, rotations,
    augmentation) over random 28x28 stroke images of 6 classes."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(6 * 4, 1, 28, 28, generator=generator) > 0.8).float()
    sampler = ClassSampler(images, [np.arange(c * 4, c * 4 + 4) for c in range(6)],
                           rotations=True, augment=Affine())
    return sampler.sample(episode_rng(0, "train", 0), ways, shots, query)


def _train_one_step(algorithm: torch.nn.Module, episode: Episode) -> None:
    """The engine's step: meta-objective, backward, the algorithm's own outer optimizer."""
    before = [p.detach().clone() for p in algorithm.parameters()]
    optimizer = algorithm.meta_optimizer(1e-3)
    regime = regime_of(type(algorithm)).name
    if regime == "batches":  # pretrain: a mini-batch of (image, class)
        loss, accuracy = algorithm.batch_loss(episode.support, episode.support_labels)
        objective = loss
    elif regime == "stream":  # OML, ANML: the support learned online, the query as the outer loss
        classes = episode.classes
        objective = loss = algorithm.trajectory_objective(episode.support, classes[episode.support_labels],
                                                          episode.query, classes[episode.query_labels])[0]
        accuracy = None
    else:
        objective, loss, accuracy = algorithm.meta_objective(episode)
    objective.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert accuracy is None or 0.0 <= accuracy.item() <= 1.0
    assert any(not torch.equal(b, p) for b, p in zip(before, algorithm.parameters()))
    with torch.no_grad():  # as evaluation calls it
        test_loss, _ = algorithm.episode_loss(episode, training=False)
    assert math.isfinite(test_loss.item())


def test_conf_names_every_algorithm():
    assert len(ALGORITHMS) >= 8 and {"maml", "protonet", "metaoptnet"} <= set(ALGORITHMS)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_trains_one_step(name):
    torch.manual_seed(0)
    node = _node(CONF / "algorithm" / f"{name}.yaml")
    cls = get_class(node["_target_"])
    if "classification" in cls.tasks:
        episode = _classification_episode()
        backbone = instantiate(_node(CONF / "backbone" / "conv4_pool.yaml", hidden=8), input_shape=(1, 28, 28))
        # A classifier over every training class: the sampler's 6 characters x 4 turns.
        extra = {"classes": 24} if "classes" in cls.injected else {}
        _train_one_step(instantiate(node, backbone=backbone, task="classification", outputs=3,
                                    _convert_="all", **extra), episode)
    if "rl" in cls.tasks:  # one meta-step on two short navigation tasks
        source = instantiate(_node(CONF / "dataset" / "navigation2d.yaml", horizon=10, trajectories=2))
        algorithm = instantiate(node, source=source, _convert_="all")
        metrics = algorithm.meta_step(source.tasks("train", range(2), 0), 0, 0)
        assert all(math.isfinite(metrics[k]) for k in ("return_pre", "return_post"))
    if "regression" in cls.tasks:
        source = instantiate(_node(CONF / "dataset" / "sinusoid.yaml"))
        episode = source.episode("train", 0, 0, 1, 5, 5)
        backbone = instantiate(_node(CONF / "backbone" / "mlp.yaml"), input_shape=source.input_shape)
        _train_one_step(instantiate(node, backbone=backbone, task="regression", outputs=1,
                                    _convert_="all"), episode)


def test_learn2learn_compiled_meta_dataset_samples_tasks():
    """learn2learn.data's Cython MetaDataset and Taskset (built by setup.sh) under numpy 2.
    MetaDataset's labels_to_indices is checked against a dict built here; each sampled task
    against the labels of the items it drew."""
    from learn2learn.data import meta_dataset, task_dataset, transforms

    from meta_cli._l2l import l2l  # noqa: F401 - registers learn2learn without its heavy __init__

    assert Path(meta_dataset.__file__).suffix == ".so" and Path(task_dataset.__file__).suffix == ".so"
    labels = [2, 0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 3]
    # Each input encodes its index, so a task's items can be traced back to their labels.
    dataset = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.tensor(labels))
    meta = meta_dataset.MetaDataset(dataset)
    expected = {label: [i for i, y in enumerate(labels) if y == label] for label in set(labels)}
    assert {int(k): sorted(v) for k, v in meta.labels_to_indices.items()} == expected

    tasks = task_dataset.Taskset(meta, task_transforms=[
        transforms.NWays(meta, 2), transforms.KShots(meta, 3), transforms.LoadData(meta),
        transforms.RemapLabels(meta)], num_tasks=4)
    for index in range(4):
        inputs, remapped = tasks[index]
        assert inputs.shape == (6,) and sorted(remapped.tolist()) == [0, 0, 0, 1, 1, 1]
        originals = [labels[i] for i in inputs.tolist()]
        assert len(set(originals)) == 2 and len(set(inputs.tolist())) == 6
        # one original class per new label, and back
        assert len({(o, r) for o, r in zip(originals, remapped.tolist())}) == 2
