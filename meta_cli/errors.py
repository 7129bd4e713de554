"""Errors a user can fix, and warnings: the CLI prints each as one line, without a traceback."""
from __future__ import annotations

import logging
import sys
from typing import Any

import yaml


def shown(value: Any) -> str:
    """A config value as a user writes it in an override (YAML flow style): true, null, foo,
    [1, a], '0.1' (a string that would read as a number keeps its quotes); not Python's repr."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    except yaml.YAMLError:
        return str(value)
    return text.strip().removesuffix("...").strip()


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message says what is wrong and what to do."""


_warned: set[str] = set()


def warn(message: str) -> None:
    """`meta-cli: warning: <message>` on stderr, once per process: the pre-flight and the job
    both load a checkpoint, and its warning must not be printed twice. The run's log gets it
    once too (meta_cli.runlog), also when only the pre-flight printed it."""
    from meta_cli.runlog import to_log_file

    line = f"meta-cli: warning: {message}"
    if message not in _warned:
        _warned.add(message)
        print(line, file=sys.stderr, flush=True)
    to_log_file(line, logging.WARNING)
