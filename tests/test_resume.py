"""Killed at any moment and resumed, a run ends exactly where an uninterrupted one ends.

The CLI runs in a subprocess; a `sitecustomize` put on its PYTHONPATH SIGKILLs it at a chosen
point: the n-th `os.replace` of a file whose path contains a marker (the rename that commits a
checkpoint's temp file or its manifest), or once a file matching a glob has n lines.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

RUN = ["dataset=sinusoid", "train.iterations=120", "train.val_every=40", "train.checkpoint_every=20",
       "train.val_episodes=20", "train.progress=false", "eval.episodes=50"]

KILLER = '''
import glob, os, signal, threading
spec = os.environ.get("KILL_AT")
if spec:
    kind, marker, n = spec.split(":")
    if kind == "rows":  # once the file has n lines, at whatever the run is doing then
        def watch():
            while True:
                for path in glob.glob(marker):
                    try:
                        if open(path).read().count("\\n") >= int(n):
                            os.kill(os.getpid(), signal.SIGKILL)
                    except OSError:
                        pass
        threading.Thread(target=watch, daemon=True).start()
    else:  # replace: SIGKILL at the n-th rename onto marker; sigint2: press Ctrl-C twice there
        real, calls = os.replace, [0]
        def replace(src, dst, *a, **k):
            if marker in str(dst):
                calls[0] += 1
                if calls[0] == int(n):
                    if kind == "sigint2":
                        os.kill(os.getpid(), signal.SIGINT)
                        os.kill(os.getpid(), signal.SIGINT)
                    else:
                        os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)
        os.replace = replace
'''


@pytest.fixture(scope="session")
def killer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("killer")
    (folder / "sitecustomize.py").write_text(KILLER)
    return folder


def _state(run: Path, last_iteration: int = 120) -> dict:
    """Everything that must match bit for bit (timing columns of metrics.csv aside)."""
    metrics = [row[:4] for row in csv.reader(open(run / "metrics.csv"))]
    accuracy = [{k: v for k, v in row.items() if k != "checkpoint"}
                for row in csv.DictReader(open(run / "accuracy.csv"))]
    ckpts = run / "checkpoints"
    best = torch.load(ckpts / "best.pt", weights_only=True)
    last = torch.load(ckpts / f"step-{last_iteration:07d}.pt", weights_only=True)
    return {"metrics": metrics, "accuracy": accuracy, "best": best, "last": last,
            "splits": (run / "splits.json").read_text()}


def _assert_same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["accuracy"] == b["accuracy"]
    assert a["splits"] == b["splits"]
    for name in ("best", "last"):
        x, y = a[name], b[name]
        assert x["iteration"] == y["iteration"] and x["best"] == y["best"]
        for k in x["algorithm"]:
            assert torch.equal(x["algorithm"][k], y["algorithm"][k]), (name, k)
        for i, s in x["optimizer"]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, y["optimizer"]["state"][i][k]), (name, i, k)
        assert torch.equal(x["rng"]["torch"], y["rng"]["torch"]) and x["rng"]["python"] == y["rng"]["python"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data_root, cache_dir) -> dict:
    folder = tmp_path_factory.mktemp("reference")
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    subprocess.run([str(exe), "train", *RUN, "hydra.run.dir=ref"], cwd=folder, env=env,
                   check=True, capture_output=True)
    return _state(folder / "ref")


# (where to kill, how to resume)
KILLS = [
    ("replace:step-0000040.pt:1", "resume=run"),    # checkpoint temp file written, not renamed
    ("replace:step-0000060.json:1", "resume=run"),  # checkpoint renamed, its manifest not yet
    ("replace:best.pt:2", "hydra.run.dir=run"),     # while writing best.pt; then a requeue
    ("replace:accuracy.csv:1", "resume=run/checkpoints/step-0000120.pt"),  # during the meta-test
    ("rows:run/metrics.csv:9", "resume=run"),       # between checkpoints (after row 8)
]


@pytest.mark.slow
@pytest.mark.parametrize("kill,how", KILLS, ids=[k for k, _ in KILLS])
def test_sigkill_then_resume_equals_uninterrupted(cli, tmp_path, killer, reference, kill, how):
    env = {"PYTHONPATH": str(killer), "KILL_AT": kill}
    killed = cli("train", *RUN, "hydra.run.dir=run", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "run" / "accuracy.csv").exists()
    if how.startswith("resume="):
        resumed = cli("train", how)
    else:  # the same command again, as a SLURM requeue re-launches it
        resumed = cli("train", *RUN, how)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    _assert_same(_state(tmp_path / "run"), reference)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.part"))
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))) == 3  # keep_checkpoints


@pytest.mark.slow
def test_conv_network_on_omniglot_resumes_bit_for_bit(cli, tmp_path, killer):
    """Convolutions and batch norm on real Omniglot, ProtoNet: the same after a kill."""
    run = ["algorithm=protonet", "train.iterations=30", "train.val_every=15", "train.ways=5",
           "train.checkpoint_every=10", "train.val_episodes=10", "train.progress=false",
           "eval.episodes=20"]
    assert cli("train", *run, "hydra.run.dir=ref").returncode == 0
    killed = cli("train", *run, "hydra.run.dir=run",
                 env={"PYTHONPATH": str(killer), "KILL_AT": "replace:step-0000020.pt:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "resume=run")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_state(tmp_path / "run", 30), _state(tmp_path / "ref", 30))


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(cli, tmp_path, killer, reference):
    killed = cli("train", *RUN, "hydra.run.dir=run",
                 env={"PYTHONPATH": str(killer), "KILL_AT": "replace:step-0000100.pt:1"})
    assert killed.returncode == -signal.SIGKILL
    newest = tmp_path / "run" / "checkpoints" / "step-0000080.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    resumed = cli("train", "resume=run")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-0000080.pt is corrupt" in resumed.stderr and "falling back to step-0000060.pt" in resumed.stderr
    assert resumed.stderr.count("is corrupt") == 1  # once, not from each reader of the dir
    _assert_same(_state(tmp_path / "run"), reference)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_then_exit(tmp_path, data_root, cache_dir, reference, sig, code):
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    proc = subprocess.Popen([str(exe), "train", *RUN, "hydra.run.dir=run"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "run" / "checkpoints" / "step-0000020.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name} after iteration" in err and "resume=" in err
    assert "Traceback" not in err
    stop_line = next(line for line in err.splitlines() if line.startswith("meta-cli: stopped by"))
    assert stop_line in (tmp_path / "run" / "train.log").read_text()  # the run's log holds it too
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*.json"))[-1]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "stopped" and status["signal"] == sig.name
    assert status["iteration"] == int(saved.stem.split("-")[1]) and status["checkpoint"].endswith(".pt")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(rows[-1]["iteration"]) <= int(saved.stem.split("-")[1])
    resumed = subprocess.run([str(exe), "train", "resume=run"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_state(tmp_path / "run"), reference)


def test_resume_with_other_settings_names_the_keys(cli, tmp_path, reference):
    assert cli("train", *RUN, "hydra.run.dir=run").returncode == 0
    before = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    result = cli("train", "resume=run", "algorithm.fast_lr=0.1", "train.meta_batch_size=5")
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("meta-cli: error: checkpoint") and "\n" not in line
    assert "algorithm.fast_lr (checkpoint: 0.01, now: 0.1)" in line
    assert "train.meta_batch_size (checkpoint: 25, now: 5)" in line
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == before


def test_resume_of_a_finished_run_only_retests(cli, tmp_path, reference):
    assert cli("train", *RUN, "hydra.run.dir=run").returncode == 0
    again = cli("train", "resume=run")
    assert again.returncode == 0, again.stderr
    _assert_same(_state(tmp_path / "run"), reference)


@pytest.mark.parametrize("value,words", [
    ("nowhere", ["resume=", "nowhere", "no such run dir"]),
    (".", ["not a meta-cli run dir", "overrides.yaml"]),
])
def test_resume_bad_paths(cli, tmp_path, value, words):
    result = cli("train", f"resume={value}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli, tmp_path):
    result = cli("train", "dataset=sinusoid", "train.meta_lr=1e8", "train.checkpoint_every=1",
                 "train.progress=false", "hydra.run.dir=run")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("meta-cli: error")]
    assert len(errors) == 1 and "at iteration 2 (split train)" in errors[0], result.stderr
    from meta_cli.rundir import checkpoint
    path, payload = checkpoint.latest_valid(tmp_path / "run" / "checkpoints")
    assert payload["iteration"] == 1 and all(torch.isfinite(v).all() for v in payload["algorithm"].values())


def test_a_second_ctrl_c_waits_for_the_checkpoint_commit(cli, tmp_path, killer, reference):
    """Two SIGINTs arrive while step 40's checkpoint is renamed into place, its manifest not yet
    written: the commit finishes first, then the run stops (130) and resumes exactly."""
    result = cli("train", *RUN, "hydra.run.dir=run",
                 env={"PYTHONPATH": str(killer), "KILL_AT": "sigint2:step-0000040.pt:1"})
    assert result.returncode == 130, result.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "step-0000040.json").is_file()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "stopped"
    assert "Traceback" not in result.stderr
    resumed = cli("train", "resume=run")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_state(tmp_path / "run"), reference)


@pytest.mark.slow
def test_a_run_dir_with_only_an_uncommitted_checkpoint_says_what_to_do(cli, tmp_path, killer, reference):
    result = cli("train", *RUN, "hydra.run.dir=run",
                 env={"PYTHONPATH": str(killer), "KILL_AT": "replace:step-0000020.json:1"})
    assert result.returncode == -signal.SIGKILL
    step = tmp_path / "run" / "checkpoints" / "step-0000020.pt"
    assert step.is_file() and not step.with_suffix(".json").exists()
    refused = cli("train", "resume=run")
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "has no manifest" in line and f"resume={step.resolve()}" in line and "start a new run" in line
    resumed = cli("train", f"resume={step}")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_state(tmp_path / "run"), reference)


@pytest.mark.slow
def test_overrides_are_not_repeated_by_resuming(cli, tmp_path, reference):
    assert cli("train", *RUN, "hydra.run.dir=run").returncode == 0
    setting = json.loads((tmp_path / "run" / "status.json").read_text())["overrides"]
    for _ in range(2):
        again = cli("train", "resume=run", "train.progress=false", "device=cpu")
        assert again.returncode == 0, again.stderr
    stored = yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    keys = [o.split("=", 1)[0] for o in stored]
    assert len(keys) == len(set(keys)), stored
    # The keys a resume may change are not part of the setting: report keeps a resumed job
    # with its sweep's other seeds.
    assert json.loads((tmp_path / "run" / "status.json").read_text())["overrides"] == setting
    assert not any(o.startswith(("resume=", "device=", "hydra.")) for o in setting), setting


def test_a_run_dir_that_still_trains_is_locked(cli, tmp_path, data_root, cache_dir):
    """resume= into a run dir another process trains in stops with one line naming it, before
    touching anything; eval beside it works; a SIGKILLed holder leaves no stale lock."""
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    run = tmp_path / "run"
    proc = subprocess.Popen([str(exe), "train", "dataset=sinusoid", "train.iterations=1000000",
                             "train.checkpoint_every=20", "train.keep_checkpoints=1000000", "train.val_every=1000000",
                             "train.progress=false",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = run / "checkpoints" / "step-0000020.json"
        deadline = time.time() + 120
        while not first.exists() and time.time() < deadline:
            time.sleep(0.05)
        watched = [run / ".hydra" / "overrides.yaml", run / ".hydra" / "config.yaml", run / "status.json"]
        before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched}
        refused = cli("train", "resume=run")
        assert refused.returncode == 1
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("meta-cli: error: run dir") and "is in use" in line
        assert f"PID {proc.pid} on host {socket.gethostname()}" in line
        # A relaunch of several processes is refused by its rank 0 the same way, with one line.
        refused = cli("train", "resume=run", "distributed.processes=2")
        assert refused.returncode == 1, refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert "is in use" in line and f"PID {proc.pid}" in line
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched} == before
        beside = cli("eval", f"checkpoint={run / 'checkpoints' / 'step-0000020.pt'}", "eval.episodes=5")
        assert beside.returncode == 0, beside.stderr
        assert proc.poll() is None  # still training
    finally:
        proc.kill()
        proc.wait()
    from meta_cli.rundir import lock
    assert not lock.held(run)
    lock.acquire(run)
    lock.release(run)
