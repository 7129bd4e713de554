"""Presets (conf/preset/<algorithm>_<dataset>_<backbone>.yaml): which one a job applies, what
it sets, and whose value a failing key was.

conf/train.yaml selects the preset of the job's pairing in its defaults list; this module only
reads the files, to say what happened: at the start of a run, in status.json, and in the one
line of an error about a key the preset set rather than the user.
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from meta_cli.errors import UserError


def _file(name: str):  # noqa: ANN202 - an importlib Traversable
    return resources.files("meta_cli.conf") / "preset" / f"{name}.yaml"


def available() -> list[str]:
    """The presets conf/preset/ ships, by name."""
    folder = resources.files("meta_cli.conf") / "preset"
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))


def check_named(name: str) -> None:
    """A preset the user names (`preset=NAME`) must exist: the defaults entry is optional so
    that pairings without a preset run, which would drop a misspelled name silently."""
    if name != "none" and not _file(name).is_file():
        raise UserError(f"Unknown preset '{name}'. Available preset options: {', '.join(available())}.")


def applied(choice: str | None) -> str | None:
    """The preset a job with this `preset` choice applies: its name, or None (none, or no file
    for the pairing)."""
    if not choice or choice == "none" or not _file(choice).is_file():
        return None
    return choice


@functools.lru_cache(maxsize=None)
def values(name: str) -> dict[str, Any]:
    """The keys the preset sets, flattened ('train.iterations': 2300, ...)."""
    node = yaml.safe_load(_file(name).read_text()) or {}
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = value

    walk({k: v for k, v in node.items() if k != "defaults"}, "")
    return out


def blame(exc: UserError, choice: str | None, overrides: list[str]) -> UserError:
    """`exc`, naming the preset when the key it is about was set by the preset: a preset that
    does not fit the user's other choices gets one line naming both."""
    name = applied(choice)
    if name is None:
        return exc
    message = str(exc)
    set_here = [k for k in values(name) if k in message and not any(o.split("=", 1)[0].lstrip("+") == k
                                                                     for o in overrides)]
    if not set_here:
        return exc
    key = max(set_here, key=len)
    yours = " ".join(o for o in overrides if not o.startswith("hydra")) or "the defaults"
    return UserError(f"{message.rstrip('.')}. {key}={values(name)[key]} comes from the preset {name} "
                     f"(conf/preset/{name}.yaml), which does not fit your {yours}: override {key}, or "
                     f"set preset=none.")
