"""Checkpoints are written whole and read only as tensors and plain data."""
from __future__ import annotations

import pathlib

import pytest
import torch

from meta_cli import checkpoint
from meta_cli.errors import UserError


class _Payload:
    """Unpickling this would create a file: the code a hostile checkpoint could run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "best.pt"
    checkpoint.save({"iteration": 3, "algorithm": {"w": torch.ones(2)}, "config": {"seed": 0}}, path)
    loaded = checkpoint.load(path)
    assert loaded["iteration"] == 3 and torch.equal(loaded["algorithm"]["w"], torch.ones(2))
    assert loaded["format"] == checkpoint.FORMAT
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left
    assert torch.load(path, weights_only=True)["config"] == {"seed": 0}


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "algorithm": _Payload(marker)}, path)
    with pytest.raises(UserError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80", b"hello", b"PK\x03\x04 truncated"])
def test_not_a_checkpoint_is_one_clear_error(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="x.pt"):
        checkpoint.load(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save({"algorithm": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        checkpoint.load(path)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="not a meta-cli checkpoint"):
        checkpoint.load(path)
