"""train.workers: a meta-batch split across CPU processes gives the one-process meta-step."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from meta_cli.build import build_train
from meta_cli.errors import UserError
from meta_cli.loop import Trainer
from meta_cli.seeding import seed_everything
from meta_cli.workers import Helpers, shares


@pytest.fixture(autouse=True)
def _data(data_root, cache_dir, monkeypatch):
    # Set in os.environ, so the helper processes (spawned) find the same files.
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


def _trainer(tmp_path, overrides: list[str]) -> Trainer:
    with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["train.progress=false", *overrides])
    seed_everything(0)  # the same initial weights for every trainer
    run, settings, _ = build_train(cfg)
    saved = {"config": run.config, **run.source.describe()}
    return Trainer(run.algorithm, run.source, settings, tmp_path, seed=0, saved=saved)


def _run(trainer: Trainer, iterations: int) -> Trainer:
    try:
        for iteration in range(1, iterations + 1):
            trainer.meta_step(iteration)
    finally:
        if trainer.helpers is not None:
            trainer.helpers.close()
    return trainer


def _gradient(trainer: Trainer) -> list[torch.Tensor]:
    """The meta-gradient of one step (Adam leaves .grad in place)."""
    return [p.grad.clone() for p in _run(trainer, 1).algorithm.parameters()]


def test_shares_are_contiguous_and_cover_the_meta_batch():
    assert shares(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert shares(list(range(4)), 3) == [[0, 1], [2], [3]]


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_two_workers_give_the_one_process_meta_gradient(tmp_path, algorithm):
    """Second-order MAML and first-order, 4 tasks split 2 + 2: the meta-gradient of the one
    process up to float rounding (the same episodes, summed in another order), and not the
    gradient of the training process's 2 tasks alone.

    The reference runs on one thread, as each worker does: a convolution's sums split over two
    threads round differently, and one of these tasks' second-order gradients amplifies that to
    0.13 (measured; 1e-5 on the other tasks)."""
    common = [f"algorithm={algorithm}", "algorithm.backend=l2l"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _gradient(_trainer(tmp_path / "one", [*common, "train.meta_batch_size=4"]))
        half = _gradient(_trainer(tmp_path / "half", [*common, "train.meta_batch_size=2"]))
    finally:
        torch.set_num_threads(threads)
    two = _gradient(_trainer(tmp_path / "two", [*common, "train.meta_batch_size=4", "train.workers=2"]))
    for a, b in zip(one, two):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
    assert max((a - h).abs().max().item() for a, h in zip(one, half)) > 1e-2


def test_random_ops_in_helpers_repeat_from_the_seed(tmp_path):
    """Reptile shuffles its minibatches with torch's RNG; a helper seeds it per (seed, step)."""
    overrides = ["algorithm=reptile", "train.meta_batch_size=2", "train.workers=2"]
    first = list(_run(_trainer(tmp_path / "a", overrides), iterations=2).algorithm.parameters())
    again = list(_run(_trainer(tmp_path / "b", overrides), iterations=2).algorithm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # The outer step updated the very tensors the helper reads (shared memory, in place).
    assert all(p.is_shared() for p in first)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm=protonet", "train.workers=2"], "train.meta_batch_size=1 has fewer"),
    (["algorithm=maml", "algorithm.backend=vmap", "train.workers=2"], "algorithm.backend=vmap already"),
    (["algorithm=fomaml", "backbone=resnet12", "train.workers=2"], "backbone.running_stats=false"),
])
def test_settings_that_cannot_split_a_meta_batch_are_refused(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        _trainer(tmp_path, overrides)


def test_auto_is_one_process_per_core_where_splitting_applies(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert _trainer(tmp_path, ["algorithm=fomaml", "train.workers=auto"]).workers == 3
    assert _trainer(tmp_path, ["algorithm=fomaml", "train.workers=auto", "train.meta_batch_size=2"]).workers == 2
    assert _trainer(tmp_path, ["algorithm=maml", "train.workers=auto"]).workers == 1  # vmap
    assert _trainer(tmp_path, ["algorithm=protonet", "train.workers=auto"]).workers == 1  # 1 task


def test_a_dead_helper_is_an_error_not_a_hang(tmp_path):
    trainer = _trainer(tmp_path, ["algorithm=fomaml", "train.meta_batch_size=2", "train.workers=2"])
    helpers = Helpers(trainer.algorithm, trainer.saved, workers=2, seed=0)
    try:
        helpers.processes[0].kill()
        helpers.processes[0].join()
        with pytest.raises(RuntimeError, match="helper 1 died"):
            helpers.collect()
    finally:
        helpers.close()


def test_sigterm_to_the_process_group_stops_cleanly_and_resumes_exactly(tmp_path, data_root, cache_dir):
    """`timeout`, SLURM and Ctrl-C signal every process of the group: the helpers outlive the
    signal, the training process commits its step and exits 143, and the resumed run ends
    bit for bit where an uninterrupted two-worker run ends."""
    run = ["dataset=sinusoid", "algorithm.backend=l2l", "train.workers=2", "train.iterations=120",
           "train.val_every=40", "train.checkpoint_every=20", "train.val_episodes=20", "train.progress=false",
           "eval.episodes=50"]
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    whole = subprocess.run([str(exe), "train", *run, "hydra.run.dir=whole"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([str(exe), "train", *run, "hydra.run.dir=cut"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = tmp_path / "cut" / "checkpoints" / "step-0000020.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    resumed = subprocess.run([str(exe), "train", "resume=cut"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    def state(name: str) -> tuple[list, list]:
        metrics = [row[:4] for row in csv.reader(open(tmp_path / name / "metrics.csv"))]
        accuracy = [{k: v for k, v in row.items() if k != "checkpoint"}
                    for row in csv.DictReader(open(tmp_path / name / "accuracy.csv"))]
        return metrics, accuracy

    assert state("cut") == state("whole")
