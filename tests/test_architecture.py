"""The packages of meta_cli import downwards only: the layers below are the architecture, and
this test reads every import (module level and inside functions) to keep them so."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

#: Top to bottom; a package may import its own layer and those below, never one above.
LAYERS: list[set[str]] = [
    {"cli"},  # the command line: dispatcher, pre-flight, resume=, relaunch
    {"apps"},  # the Hydra entry points and the prediction library
    {"engine"},  # build, the Trainer, the regimes
    {"evaluation", "report"},  # meta-testing and its files; report tables and plots
    {"rundir"},  # the run folder: checkpoints and their owner, metrics, the lock, status.json
    {"algorithms", "models", "data", "rl"},  # the components configs name by _target_
    {"config", "runtime"},  # configs against signatures; the process and its peers
    {"errors", "params", "atomic", "runlog", "_l2l"},  # leaves
]


def layer(module: str) -> int | None:
    """The layer of `meta_cli.<package>...`; None outside meta_cli (or its top package)."""
    parts = module.split(".")
    if parts[0] != "meta_cli" or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def imports(path: Path, base: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in the file (a module under `base`)."""
    package = ".".join(path.relative_to(base).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found += [(f"{base}.{alias.name}" if base == "meta_cli" else base, node.lineno)
                      for alias in node.names]
    return found


def violations(base: Path) -> list[str]:
    """Every import of a module under `base`/meta_cli that points up the layers."""
    found = []
    for path in sorted((base / "meta_cli").rglob("*.py")):
        own = layer(".".join(path.relative_to(base).with_suffix("").parts))
        if own is None:
            continue
        for imported, line in imports(path, base):
            other = layer(imported)
            if other is not None and other < own:
                found.append(f"{path.relative_to(base)}:{line} imports {imported} (a layer above)")
    return found


def test_every_package_has_a_layer():
    packages = {p.stem for p in (REPO / "meta_cli").iterdir()
                if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem not in
                                                                       ("__init__", "__main__"))}
    placed = {name for names in LAYERS for name in names}
    assert packages - {"conf"} <= placed, sorted(packages - placed)


def test_imports_point_down_the_layers():
    assert violations(REPO) == []


def test_an_upward_import_is_caught(tmp_path):
    """The check fails on a forbidden import: an algorithm reaching up into the engine, also
    from inside a function and by a relative import."""
    folder = tmp_path / "meta_cli" / "algorithms"
    folder.mkdir(parents=True)
    (folder / "probe.py").write_text("from meta_cli.data.base import Episode\n\n\ndef f():\n"
                                     "    from meta_cli.engine.build import build\n"
                                     "    from ..rundir import checkpointer\n")
    assert violations(tmp_path) == [
        "meta_cli/algorithms/probe.py:5 imports meta_cli.engine.build (a layer above)",
        "meta_cli/algorithms/probe.py:6 imports meta_cli.rundir (a layer above)"]
