"""The run's own log (Hydra's `<run dir>/<command>.log`) holds what the terminal showed: the
one-line errors and warnings, the stop message and the result table, besides the log lines.

These are printed, not logged (a log line on the console would carry a timestamp prefix and
go to stdout); `show` prints them and writes them into the log files alone.
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO

#: (log file, text) pairs already written: a warning the pre-flight printed is written once,
#: when the job repeats it with its log file open.
_written: set[tuple[str, str]] = set()


def to_log_file(text: str, level: int = logging.INFO) -> None:
    """`text` into every log file of the root logger (Hydra's job log), not to the console;
    nothing outside a job (no file handler yet)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) or level < handler.level:
            continue
        key = (handler.baseFilename, text)
        if level == logging.WARNING and key in _written:
            continue
        _written.add(key)
        handler.handle(logging.LogRecord("meta_cli", level, __file__, 0, text, None, None))


def show(text: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Print `text` (stdout unless `stream`) and write it into the run's log."""
    print(text, file=stream or sys.stdout, flush=True)
    to_log_file(text, level)
