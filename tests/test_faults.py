"""Faults of the world around a run: read-only or full disks, damaged data, foreign checkpoints.

Each one gives one line that says what is wrong and what to do, exit 1, no traceback, and
leaves no partial checkpoint. Read-only and full file systems are real ones, mounted in a
private user + mount namespace (`unshare -rm`), so root cannot write through them either.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from meta_cli.rundir import checkpoint

SINUSOID = ["dataset=sinusoid", "train.iterations=120", "train.val_every=40",
            "train.checkpoint_every=20", "train.val_episodes=20", "train.progress=false",
            "eval.episodes=50"]


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("meta-cli: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _namespaces_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(),
                                      reason="unshare -rm (user + mount namespaces) unavailable")


def _in_namespace(setup: str, args: list[str], after: str, tmp_path: Path, data_root, cache_dir):
    """Run `setup; meta-cli ARGS; after` in a private namespace; returns meta-cli's result."""
    exe = Path(sys.executable).with_name("meta-cli")
    script = (f"{setup}\nrc=0\n{shlex.join([str(exe), *args])} >out.txt 2>err.txt || rc=$?\n"
              f"echo $rc >rc.txt\n{after}\n")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    subprocess.run(["unshare", "-rm", "sh", "-ec", script], cwd=tmp_path, env=env, check=True)
    return subprocess.CompletedProcess(args, int((tmp_path / "rc.txt").read_text()),
                                       (tmp_path / "out.txt").read_text(),
                                       (tmp_path / "err.txt").read_text())


@needs_namespaces
def test_run_dir_without_write_permission(tmp_path, data_root, cache_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    result = _in_namespace(f"mount --bind {locked} {locked}; mount -o remount,bind,ro {locked}",
                           ["train", *SINUSOID, f"hydra.run.dir={locked}/run"], "", tmp_path,
                           data_root, cache_dir)
    line = _one_error_line(result)
    assert f"cannot write the run dir {locked}/run" in line and "hydra.run.dir=" in line
    assert list(locked.iterdir()) == []


def test_run_dir_under_a_file(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_error_line(cli("train", *SINUSOID, "hydra.run.dir=file/run"))
    assert "cannot write the run dir" in line and "hydra.run.dir=PATH" in line


@pytest.mark.slow
@needs_namespaces
def test_full_disk_while_saving(tmp_path, data_root, cache_dir):
    """A 128 KiB file system fills up at the second checkpoint of a real run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = _in_namespace(f"mount -t tmpfs -o size=128k tmpfs {disk}",
                           ["train", *SINUSOID, f"hydra.run.dir={disk}/run"],
                           f"cp -a {disk}/run {tmp_path}/copy", tmp_path, data_root, cache_dir)
    line = _one_error_line(result)
    assert "No space left on device" in line and line.endswith(f"then resume with: meta-cli train resume={disk}/run")
    ckpts = tmp_path / "copy" / "checkpoints"
    assert not list(ckpts.glob(".*.part"))
    path, payload = checkpoint.latest_valid(ckpts)
    assert payload["iteration"] >= 20
    # With space again, the run resumes from its last good checkpoint and finishes.
    exe = Path(sys.executable).with_name("meta-cli")
    resumed = subprocess.run([str(exe), "train", f"resume={tmp_path / 'copy'}"], cwd=tmp_path,
                             capture_output=True, text=True,
                             env={**os.environ, "META_CLI_DATA": str(data_root)})
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "copy" / "accuracy.csv").is_file()


@pytest.mark.slow
@needs_namespaces
def test_full_disk_before_the_first_checkpoint_says_to_start_again(tmp_path, data_root, cache_dir, cli):
    """A 48 KiB file system has no room for the first checkpoint: there is nothing to resume,
    and both the error and resume= give the command that starts the run again, which works."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = _in_namespace(f"mount -t tmpfs -o size=48k tmpfs {disk}",
                           ["train", *SINUSOID, f"hydra.run.dir={disk}/run"],
                           f"cp -a {disk}/run {tmp_path}/copy", tmp_path, data_root, cache_dir)
    line = _one_error_line(result)
    command = "meta-cli train " + " ".join(SINUSOID)
    assert "No space left on device" in line and "no checkpoint was committed yet" in line
    assert line.endswith(f"then start the run again: {command}"), line
    refused = cli("train", f"resume={tmp_path / 'copy'}")
    assert refused.returncode == 1 and refused.stderr.strip().endswith(f"start it again: {command}"), refused.stderr
    again = cli(*command.split()[1:])
    assert again.returncode == 0, again.stderr[-3000:]


def _damaged_omniglot(data_root: Path, target: Path, damage) -> Path:
    """A copy of the minimal zips with one image of small2 replaced by `damage(bytes)`."""
    folder = target / "omniglot"
    folder.mkdir(parents=True)
    shutil.copy(data_root / "omniglot" / "images_background_small1.zip", folder)
    source = data_root / "omniglot" / "images_background_small2.zip"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(folder / source.name, "w") as dst:
        victim = sorted(n for n in src.namelist() if n.endswith(".png"))[7]
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, damage(data) if info.filename == victim else data)
    return Path(victim)


@pytest.mark.parametrize("damage", [lambda d: b"not a png", lambda d: d[: len(d) // 3]],
                         ids=["garbage", "truncated"])
def test_corrupt_image_file_is_named(cli, tmp_path, data_root, damage):
    victim = _damaged_omniglot(data_root, tmp_path / "data", damage)
    result = cli("train", "algorithm=protonet", f"dataset.root={tmp_path / 'data'}",
                 "train.iterations=2", env={"META_CLI_CACHE": str(tmp_path / "cache")})
    line = _one_error_line(result)
    assert "cannot decode image" in line and str(victim) in line


def _trained_checkpoint(cli, tmp_path) -> Path:
    result = cli("train", *SINUSOID, "train.iterations=40", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    return tmp_path / "run" / "checkpoints" / "best.pt"


def test_checkpoint_from_another_backbone(cli, tmp_path):
    """Weights of a 1-40-40-1 MLP under a config that says 1-64-1: the keys are named."""
    path = _trained_checkpoint(cli, tmp_path)
    payload = checkpoint.load(path)
    payload["config"]["backbone"]["hidden"] = [64]
    other = tmp_path / "other" / "best.pt"
    checkpoint.save({k: v for k, v in payload.items() if k != "format"}, other)
    line = _one_error_line(cli("eval", f"checkpoint={other}"))
    assert "does not fit the model" in line and "shape" in line and "vs" in line


def test_resume_with_another_backbone_names_the_key(cli, tmp_path):
    _trained_checkpoint(cli, tmp_path)
    line = _one_error_line(cli("train", "resume=run", "backbone.hidden=[64]"))
    assert "backbone.hidden (checkpoint: [40, 40], now: [64])" in line


def test_checkpoint_that_is_not_a_checkpoint_with_manifest(cli, tmp_path):
    path = _trained_checkpoint(cli, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    line = _one_error_line(cli("eval", f"checkpoint={path}"))
    assert "best.pt is truncated" in line


def test_malicious_checkpoint_through_the_cli(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": checkpoint.FORMAT, "config": Payload()}, evil)
    line = _one_error_line(cli("eval", f"checkpoint={evil}",
                               env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}))
    assert "refused" in line and "evil.pt" in line
    assert not marker.exists()


@needs_namespaces
def test_report_of_a_read_only_folder_prints_the_table_and_one_line(cli, tmp_path, data_root, cache_dir):
    assert cli("train", *SINUSOID, "train.iterations=20", "hydra.run.dir=run").returncode == 0
    run = tmp_path / "run"
    result = _in_namespace(f"mount --bind {run} {run}; mount -o remount,bind,ro {run}",
                           ["report", str(run)], "", tmp_path, data_root, cache_dir)
    line = _one_error_line(result)
    assert line.startswith("meta-cli: error: cannot write the report files") and "--out DIR" in line
    assert "test MSE" in result.stdout  # the table came first
    assert not (run / "summary.csv").exists()
    elsewhere = cli("report", str(run), "--out", str(tmp_path / "elsewhere"))
    assert elsewhere.returncode == 0 and (tmp_path / "elsewhere" / "summary.csv").is_file()


@needs_namespaces
def test_unwritable_cache_is_one_line_before_the_run_dir(tmp_path, data_root):
    cache = tmp_path / "cache"
    cache.mkdir()
    result = _in_namespace(f"mount --bind {cache} {cache}; mount -o remount,bind,ro {cache}",
                           ["train", "train.iterations=2"], "", tmp_path, data_root, cache)
    line = _one_error_line(result)
    assert "META_CLI_CACHE" in line and str(cache) in line
    assert not (tmp_path / "outputs").exists()


def test_a_failed_download_leaves_no_folder_behind(cli, tmp_path):
    """Offline (a proxy that refuses every connection), a download that fails removes the
    dataset folder it made; eval with a wrong data_root likewise."""
    offline = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    data = tmp_path / "data"
    line = _one_error_line(cli("train", "dataset=mini_imagenet", f"dataset.root={data}", env=offline))
    assert "download failed" in line and "mini-imagenet" in line
    assert not data.exists()
    omniglot = cli("train", "train.iterations=2", "train.val_every=2", "train.val_episodes=2",
                   "eval.episodes=2", "hydra.run.dir=omni")
    assert omniglot.returncode == 0, omniglot.stderr
    line = _one_error_line(cli("eval", f"checkpoint={tmp_path / 'omni' / 'checkpoints' / 'best.pt'}",
                               f"data_root={tmp_path / 'nowhere'}", env=offline))
    assert "data_root=" in line and "META_CLI_DATA" in line
    assert not (tmp_path / "nowhere").exists()
    # eval honours META_CLI_DATA as train does (over the checkpoint's own dataset.root)
    line = _one_error_line(cli("eval", f"checkpoint={tmp_path / 'omni' / 'checkpoints' / 'best.pt'}",
                               env={**offline, "META_CLI_DATA": str(tmp_path / "elsewhere")}))
    assert str(tmp_path / "elsewhere" / "omniglot") in line
    assert not (tmp_path / "elsewhere").exists()
