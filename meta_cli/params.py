"""Range markers for constructor type hints, read by `meta_cli.config.validation`.

A config node maps onto a constructor through `_target_`; its parameters carry their
allowed range in the hint, e.g. ``fast_lr: Annotated[float, Gt(0)]``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gt:
    """Value must be strictly greater than `bound`."""

    bound: float

    def ok(self, value: float) -> bool:
        return value > self.bound

    def __str__(self) -> str:
        return f"> {self.bound:g}"


@dataclass(frozen=True)
class Ge:
    """Value must be greater than or equal to `bound`."""

    bound: float

    def ok(self, value: float) -> bool:
        return value >= self.bound

    def __str__(self) -> str:
        return f">= {self.bound:g}"
