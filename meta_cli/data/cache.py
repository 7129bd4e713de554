"""Where decoded datasets are cached: $META_CLI_CACHE, else ~/.cache/meta-cli.

Never beside the data, which may be shared or read-only. The folder is created and probed
for writing when a dataset is opened, in the pre-flight, so an unwritable cache is one line
naming the variable before any run dir exists.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from meta_cli.data.download import one_line
from meta_cli.errors import UserError


def root() -> Path:
    return Path(os.environ.get("META_CLI_CACHE", "~/.cache/meta-cli")).expanduser()


def cache_dir(name: str) -> Path:
    """`<cache root>/<name>`, created and writable; UserError naming META_CLI_CACHE if not."""
    folder = root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the dataset cache {folder} ({one_line(exc)}); set META_CLI_CACHE "
                        f"to a writable folder (decoded datasets are cached there).") from None
    return folder
