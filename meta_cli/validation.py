"""Config validation against the constructors the config maps onto.

Each config node with a `_target_` is checked against that callable's signature: every key
must be a parameter (else: unknown key, with the allowed keys listed), every value must
match the parameter's type hint, and `Annotated` range markers (`meta_cli.params`) must
hold. Constructor arguments supplied at run time (a backbone module, the number of
outputs) are listed in the target's `injected` attribute and are not config keys.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

from hydra.utils import get_object

from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt

_NUMBER_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(hint: Any) -> str:
    """Human words for a type hint, e.g. 'an integer >= 2' or 'one of: cpu, cuda'."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *markers = typing.get_args(hint)
        bounds = " and ".join(str(m) for m in markers if isinstance(m, (Gt, Ge)))
        return f"{_describe(base)} {bounds}".strip()
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if hint is type(None):
        return "null"
    return _NUMBER_KINDS.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Annotated:
        base, *markers = typing.get_args(hint)
        return _matches(value, base) and all(
            m.ok(value) for m in markers if isinstance(m, (Gt, Ge))
        )
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and (
            not args or all(_matches(v, args[0]) for v in value)
        )
    if hint is type(None):
        return value is None
    if hint is float:  # YAML writes 1 for 1.0; a bool is not a number
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def constructor_hints(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The config-settable parameters of `target` and their type hints."""
    func = target.__init__ if inspect.isclass(target) else target
    injected = set(getattr(target, "injected", ()))
    params = {
        name: p
        for name, p in inspect.signature(func).parameters.items()
        if name != "self" and name not in injected
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return params, typing.get_type_hints(func, include_extras=True)


def check_node(node: dict[str, Any], path: str) -> None:
    """Validate one config node against its `_target_`; raise UserError on the first fault."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise UserError(f"'{path}' must be a config group node with a _target_, got {node!r}.")
    target = get_object(node["_target_"])
    params, hints = constructor_hints(target)
    allowed = ", ".join(sorted(params))
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in params:
            raise UserError(
                f"Unknown config key '{path}.{key}'. Allowed keys of {path}: {allowed}."
            )
        hint = hints.get(key, Any)
        if not _matches(value, hint):
            raise UserError(f"{path}.{key} must be {_describe(hint)}; got {value!r}.")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in node:
            raise UserError(f"Missing config key '{path}.{name}' ({_describe(hints.get(name, Any))}).")


def check_keys(node: dict[str, Any], allowed: set[str], path: str) -> None:
    """Reject keys outside `allowed` (for nodes without a constructor, like the top level)."""
    unknown = sorted(set(node) - allowed)
    if unknown:
        where = f"'{path}.{unknown[0]}'" if path else f"'{unknown[0]}'"
        raise UserError(
            f"Unknown config key {where}. Allowed keys{' of ' + path if path else ''}: "
            f"{', '.join(sorted(allowed))}."
        )
