"""Checkpoints are committed by a manifest, verified by sha256 and read only as tensors."""
from __future__ import annotations

import errno
import json
import pathlib

import pytest
import torch

from meta_cli import atomic
from meta_cli.rundir import checkpoint
from meta_cli.errors import UserError


class _Payload:
    """Unpickling this would create a file: the code a hostile checkpoint could run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _saved(tmp_path, name="best.pt", iteration=3):
    path = tmp_path / "checkpoints" / name
    checkpoint.save({"iteration": iteration, "algorithm": {"w": torch.arange(1000.0)}}, path)
    return path


def test_save_then_load_round_trip(tmp_path):
    path = _saved(tmp_path)
    loaded = checkpoint.load(path, require_manifest=True)
    assert loaded["iteration"] == 3 and torch.equal(loaded["algorithm"]["w"], torch.arange(1000.0))
    assert loaded["format"] == checkpoint.FORMAT
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.json", "best.pt"]  # no temp file
    manifest = json.loads((path.parent / "best.json").read_text())
    assert manifest["bytes"] == path.stat().st_size and manifest["iteration"] == 3
    assert torch.load(path, weights_only=True)["iteration"] == 3  # a plain torch file


@pytest.mark.parametrize("with_manifest", [False, True])
def test_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch, with_manifest):
    # The switch that turns weights_only off for torch.load calls that do not pass it.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "algorithm": _Payload(marker)}, path)
    if with_manifest:  # whoever crafts the file can write a matching manifest too
        import hashlib
        data = path.read_bytes()
        (tmp_path / "evil.json").write_text(json.dumps(
            {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(UserError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80", b"hello", b"PK\x03\x04 truncated"])
def test_not_a_checkpoint_is_one_clear_error(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="x.pt"):
        checkpoint.load(path)


def test_truncated_checkpoint_is_caught_by_its_manifest(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=r"truncated: 500 bytes, its manifest says \d+"):
        checkpoint.load(path)


def test_truncated_checkpoint_without_manifest(tmp_path):
    path = _saved(tmp_path)
    checkpoint.manifest_path(path).unlink()
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        checkpoint.load(path)


def test_checkpoint_without_manifest_loads_with_a_warning(tmp_path, capsys):
    path = _saved(tmp_path)
    checkpoint.manifest_path(path).unlink()
    assert checkpoint.load(path)["iteration"] == 3
    assert "no manifest best.json" in capsys.readouterr().err


def test_bit_flip_is_caught_before_loading(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt: its sha256"):
        checkpoint.load(path)


def test_unreadable_manifest(tmp_path):
    path = _saved(tmp_path)
    checkpoint.manifest_path(path).write_text("{not json")
    with pytest.raises(UserError, match="manifest .*best.json.* unreadable"):
        checkpoint.load(path)


def test_uncommitted_checkpoint_is_not_resumed_from(tmp_path):
    path = _saved(tmp_path, checkpoint.step_name(5))
    checkpoint.manifest_path(path).unlink()
    with pytest.raises(UserError, match="never committed"):
        checkpoint.load(path, require_manifest=True)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="not a meta-cli checkpoint"):
        checkpoint.load(path)


def test_latest_valid_falls_back_with_a_warning(tmp_path, capsys):
    for it in (10, 20, 30):
        newest = _saved(tmp_path, checkpoint.step_name(it), it)
    newest.write_bytes(newest.read_bytes()[:100])
    path, payload = checkpoint.latest_valid(newest.parent)
    assert payload["iteration"] == 20 and path.name == "step-0000020.pt"
    err = capsys.readouterr().err
    assert "step-0000030.pt is truncated" in err and "falling back to step-0000020.pt" in err
    assert "Use another checkpoint" not in err  # the fallback is the other checkpoint


def test_prune_keeps_the_newest(tmp_path):
    for it in (1, 2, 3, 4):
        _saved(tmp_path, checkpoint.step_name(it), it)
    checkpoint.prune(tmp_path / "checkpoints", keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000003.json", "step-0000003.pt", "step-0000004.json", "step-0000004.pt"]


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(UserError, match="No space left on device.*free disk space"):
        checkpoint.save({"iteration": 4, "algorithm": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    # The old file is whole; without its manifest it is no longer vouched for, never half-new.
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.part"))


def test_a_failed_write_names_the_command_that_goes_on(tmp_path, monkeypatch):
    """resume= needs a committed step checkpoint: before the first one, the message gives the
    run's own command (from .hydra/overrides.yaml) instead; after it, resume= of the run dir."""
    from meta_cli.rundir.loggers import CsvLogger

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- dataset=sinusoid\n- train.iterations=5\n- dataset.root=/my data\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    first = tmp_path / "checkpoints" / checkpoint.step_name(5)
    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(UserError) as caught:
        checkpoint.save({"iteration": 5, "algorithm": {"w": torch.zeros(3)}}, first)
    monkeypatch.undo()
    assert "no checkpoint was committed yet" in str(caught.value)
    assert str(caught.value).endswith("then start the run again: meta-cli train dataset=sinusoid "
                                      "train.iterations=5 'dataset.root=/my data'")
    _saved(tmp_path, checkpoint.step_name(5), 5)
    logger = CsvLogger(tmp_path, ["iteration", "split", "loss"])
    assert str(logger._error(OSError(errno.ENOSPC, "No space left on device"))).endswith(
        f"(the newest: step-0000005.pt): fix the disk, then resume with: meta-cli train resume={tmp_path}")
    logger.close()
