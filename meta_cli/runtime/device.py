"""The device config group: auto, cpu, cuda."""
from __future__ import annotations

from typing import Literal

import torch

from meta_cli.errors import UserError


def pick_device(kind: Literal["auto", "cpu", "cuda"] = "auto") -> torch.device:
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto.")
    return torch.device(kind)
