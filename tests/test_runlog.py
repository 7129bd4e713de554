"""The run's log file holds the printed lines too (meta_cli.runlog), each warning once."""
from __future__ import annotations

import logging

from meta_cli import errors
from meta_cli.runlog import show


def test_printed_lines_and_warnings_reach_the_log_file_once(tmp_path, capsys):
    handler = logging.FileHandler(tmp_path / "train.log")
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        errors.warn("an early warning, as the pre-flight gives it")  # printed here, logged once
        errors.warn("an early warning, as the pre-flight gives it")
        show("algorithm  loss\nmaml       0.5")
    finally:
        root.removeHandler(handler)
        handler.close()
    printed = capsys.readouterr()
    assert printed.err.count("meta-cli: warning: an early warning") == 1
    assert printed.out == "algorithm  loss\nmaml       0.5\n"
    assert (tmp_path / "train.log").read_text() == (
        "[meta_cli][WARNING] - meta-cli: warning: an early warning, as the pre-flight gives it\n"
        "[meta_cli][INFO] - algorithm  loss\nmaml       0.5\n")
