"""The config is checked against the constructors it maps onto without importing them, and the
YAML files and the constructors say the same defaults (one source of truth)."""
from __future__ import annotations

import inspect
import math

import pytest
import yaml
from conftest import REPO
from hydra.utils import get_object

from meta_cli.config import signatures


def _nodes() -> list[tuple[str, str, dict]]:
    """(file, path, node) of every node with a meta_cli `_target_` in conf/."""
    found = []

    def walk(node, file, path):
        if isinstance(node, dict):
            if str(node.get("_target_", "")).startswith("meta_cli.") and "SweepCallback" not in node["_target_"]:
                found.append((file, path, node))
            for key, value in node.items():
                walk(value, file, f"{path}.{key}" if path else key)

    for file in sorted((REPO / "conf").rglob("*.yaml")):
        walk(yaml.safe_load(file.read_text()) or {}, str(file.relative_to(REPO)), "")
    return found


TARGETS = sorted({node["_target_"] for _, _, node in _nodes()})


@pytest.mark.parametrize("target", TARGETS)
def test_signatures_read_from_source_are_what_inspect_gives(target):
    assert signatures._from_source(target) == signatures.from_object(target, get_object(target))


def _canonical() -> list[tuple[str, str, dict]]:
    """The option that defines each constructor's defaults: conf/<group>/<module>.yaml (maml.yaml
    for algorithms/maml.py; fomaml.yaml and conv4_pool.yaml are variants), and train.yaml's nodes."""
    chosen = []
    for file, path, node in _nodes():
        module = node["_target_"].split(".")[-2]
        if file.endswith(f"/{module}.yaml") and path == "" or file in ("conf/train.yaml", "conf/eval.yaml"):
            chosen.append((file, path, node))
    return chosen


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


@pytest.mark.parametrize("file, path, node", _canonical(), ids=lambda v: v if isinstance(v, str) else "")
def test_yaml_defaults_are_the_constructors(file, path, node):
    """Every key of the canonical option is a parameter with that default, and every parameter
    is in the file: what a newcomer reads there is what Python would do without it."""
    target = get_object(node["_target_"])
    injected = set(getattr(target, "injected", ()))
    params = {p.name: p for p, _ in signatures.parameters_of(target) if p.name not in injected}
    keys = {k for k in node if not k.startswith("_") and k != "defaults"}
    assert keys == set(params), (file, path, keys ^ set(params))
    for key in keys:
        value, default = node[key], params[key].default
        if isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation: the environment decides (dataset.root)
        if default is inspect.Parameter.empty:
            assert value is None, (file, path, key)  # required: the user gives it (image_folder's root)
            continue
        assert _same(value, default), (file, path, key, value, default)


def test_the_configuration_reference_is_current():
    """docs/configuration.md's key tables are what scripts/config_reference.py makes of conf/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert reference.generate() in (REPO / "docs" / "configuration.md").read_text(), \
        "run: .venv/bin/python scripts/config_reference.py --write"
