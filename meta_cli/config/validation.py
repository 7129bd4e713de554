"""Config validation: every node against the constructor it maps onto, the top level against
the command's keys.

Each config node with a `_target_` is checked against that callable's signature: every key
must be a parameter (else: unknown key, with the allowed keys listed), every value must
match the parameter's type hint, and `Annotated` range markers (`meta_cli.params`) must
hold. Constructor arguments supplied at run time (a backbone module, the number of
outputs) are listed in the target's `injected` attribute and are not config keys.

Nothing here imports torch: signatures are read from source (`meta_cli.config.signatures`), so a
misspelled key or a value out of range is refused within a second, for every job of a sweep,
before anything is built. Checks that need the data or the other components (ways against a
split's classes, an algorithm against the dataset's task) are `meta_cli.engine.build.check_train`'s.
"""
from __future__ import annotations

import functools
import json
import types
import typing
from importlib import resources
from typing import Any, Literal, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from meta_cli.errors import UserError, shown
from meta_cli.params import Ge, Gt
from meta_cli.config.signatures import signature

_NUMBER_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

#: The top-level keys of each command's config.
TRAIN_GROUPS = ("algorithm", "dataset", "backbone", "device")
COMMAND_KEYS = {
    "train": {*TRAIN_GROUPS, "train", "eval", "seed", "resume", "init", "logger", "distributed"},
    # eval's dataset: another one to meta-test on (dataset=NAME); its backbone only the
    # dataset group's default body, which eval ignores (the checkpoint fixes the model).
    "eval": {"checkpoint", "data_root", "algorithm", "eval", "device", "distributed", "dataset", "backbone"},
    "predict": {"checkpoint", "support", "query", "algorithm", "device"},
}
#: Nodes of each command checked against their constructors.
COMMAND_NODES = {
    "train": (*TRAIN_GROUPS, "train", "eval", "logger", "distributed"),
    "eval": ("eval", "device", "distributed"),
    "predict": ("device",),
}
#: Keys a command cannot run without, and an example of each.
REQUIRED = {
    "eval": {"checkpoint": "meta-cli eval checkpoint=outputs/<date>/<time>/checkpoints/best.pt"},
    "predict": {k: "meta-cli predict checkpoint=PATH support=DIR query=DIR"
                for k in ("checkpoint", "support", "query")},
}


def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Resolve interpolations into a plain dict; a failing interpolation is a UserError."""
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot resolve the config: {str(exc).splitlines()[0]}")


def describe(hint: Any) -> str:
    """Human words for a type hint, e.g. 'an integer >= 2' or 'one of: cpu, cuda'."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *markers = typing.get_args(hint)
        bounds = " and ".join(str(m) for m in markers if isinstance(m, (Gt, Ge)))
        return f"{describe(base)} {bounds}".strip()
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if hint is type(None):
        return "null"
    return _NUMBER_KINDS.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Annotated:
        base, *markers = typing.get_args(hint)
        return matches(value, base) and all(m.ok(value) for m in markers if isinstance(m, (Gt, Ge)))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if hint is type(None):
        return value is None
    if hint is float:  # YAML writes 1 for 1.0; a bool is not a number
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_node(node: dict[str, Any], path: str) -> None:
    """Validate one config node against its `_target_`; raise UserError on the first fault."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise UserError(f"'{path}' must be a config group node with a _target_, got {shown(node)}.")
    params = signature(node["_target_"]).parameters
    allowed = ", ".join(sorted(params))
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in params:
            owners = [name for name, keys in _options_of(path).items() if key in keys]
            where = f" It is an option of {path}={', '.join(owners)}." if owners else ""
            if not allowed:  # an empty list would read as a glitch
                option = next((n for n, t in _targets_of(path).items() if t == node["_target_"]), None)
                raise UserError(f"Unknown config key '{path}.{key}'.{where} "
                                f"{f'{path}={option}' if option else node['_target_']} has no keys to set.")
            raise UserError(f"Unknown config key '{path}.{key}'.{where} Allowed keys of {path}: {allowed}.")
        if not matches(value, params[key].hint):
            raise UserError(f"{path}.{key} must be {describe(params[key].hint)}; got {shown(value)}.")
    for name, p in params.items():
        if p.required and name not in node:
            raise UserError(f"Missing config key '{path}.{name}' ({describe(p.hint)}).")


@functools.lru_cache(maxsize=None)
def _options_of(group: str) -> dict[str, frozenset[str]]:
    """Option name -> its keys, for each option of a config group (conf/<group>/*.yaml): an
    unknown key is often another option's (algorithm.head is pretrain's)."""
    folder = resources.files("meta_cli.conf") / group
    if not folder.is_dir():
        return {}
    options = {}
    for file in folder.iterdir():
        if file.name.endswith(".yaml"):
            node = yaml.safe_load(file.read_text()) or {}
            options[file.name[:-5]] = frozenset(k for k in node if not k.startswith("_") and k != "defaults")
    return options


@functools.lru_cache(maxsize=None)
def _targets_of(group: str) -> dict[str, str]:
    """Option name -> its _target_, for each option of a config group."""
    folder = resources.files("meta_cli.conf") / group
    if not folder.is_dir():
        return {}
    return {file.name[:-5]: (yaml.safe_load(file.read_text()) or {}).get("_target_")
            for file in folder.iterdir() if file.name.endswith(".yaml")}


def option_of(group: str, target: str) -> str | None:
    """The option of `group` (conf/<group>/<option>.yaml) whose _target_ is `target`."""
    return next((name for name, t in sorted(_targets_of(group).items()) if t == target), None)


def check_keys(node: dict[str, Any], allowed: set[str], path: str) -> None:
    """Reject keys outside `allowed` (for nodes without a constructor, like the top level)."""
    unknown = sorted(set(node) - allowed)
    if unknown:
        where = f"'{path}.{unknown[0]}'" if path else f"'{unknown[0]}'"
        raise UserError(f"Unknown config key {where}. Allowed keys{' of ' + path if path else ''}: "
                        f"{', '.join(sorted(allowed))}.")


def check_seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be an integer >= 0; got {shown(seed)}.")
    return seed


#: Configs that passed `check_config` in this process: the pre-flight's, met again by the job.
_PASSED: set[str] = set()


def check_config(command: str, config: dict[str, Any]) -> None:
    """Every check of one job's composed config that needs neither data nor torch; once per
    config and process."""
    key = json.dumps([command, config], sort_keys=True, default=str)
    if key in _PASSED:
        return
    _check_config(command, config)
    _PASSED.add(key)


def _check_config(command: str, config: dict[str, Any]) -> None:
    keys = COMMAND_KEYS[command]
    check_keys(config, keys, "")
    for key, example in REQUIRED.get(command, {}).items():
        if config.get(key) in (None, "???"):
            raise UserError(f"{key}= is required: {example}")
    if command == "train":
        missing = sorted(keys - set(config))
        if missing:
            raise UserError(f"config key '{missing[0]}' is missing (removed with ~?); it is required.")
        check_seed(config["seed"])
    for path in COMMAND_NODES[command]:
        check_node(config[path], path)
