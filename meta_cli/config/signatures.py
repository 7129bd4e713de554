"""Constructor signatures read from source, without importing the module.

The config is checked against the constructors it maps onto (`meta_cli.config.validation`): every
key a parameter, every value of the parameter's type and range. Importing those constructors
means importing torch (2.5 s here) and learn2learn (several seconds more), too slow for a
command line that must reject a misspelled key at once. So the signature of a `_target_` is
read from its module's source with `ast`: the parameters of `__init__` (or the fields of a
dataclass, or the parameters of a function), which have defaults, their annotations rebuilt
as typing objects (`Annotated[int, Ge(2)]`, `Literal[...]`, unions, lists), and the class's
`injected` names (arguments the engine passes, not config keys), following base classes.

Only names from `typing`, builtins, `meta_cli.params` and module-level aliases (`Task =
Literal[...]`, also imported from other meta_cli modules) are resolved; any other annotation
(`nn.Module`, `torch.device`) reads as `Any`. Whatever cannot be read this way (a target
outside the project, an unusual class) is imported and inspected instead, which is slower but
the same answer: tests/test_validation.py checks both ways agree for every `_target_` in conf/.
"""
from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meta_cli import params

_SAFE_BUILTINS = {name: getattr(builtins, name) for name in
                  ("int", "float", "bool", "str", "list", "tuple", "dict", "set", "object", "type")}
_TYPING = {name: getattr(typing, name) for name in
           ("Annotated", "Literal", "Union", "Optional", "Any", "Sequence")}
_PARAMS = {"Gt": params.Gt, "Ge": params.Ge}


class Unreadable(Exception):
    """The source does not say enough: inspect the imported object instead."""


@dataclass(frozen=True)
class Parameter:
    name: str
    hint: Any  # a typing object; Any when the annotation is absent or not resolvable
    required: bool


@dataclass(frozen=True)
class Signature:
    """The config-settable parameters of a `_target_` (injected ones left out)."""

    target: str
    parameters: dict[str, Parameter]
    injected: tuple[str, ...]


@functools.lru_cache(maxsize=None)
def _module_ast(module: str) -> tuple[ast.Module, str]:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise Unreadable(f"no module {module}") from exc
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise Unreadable(f"no source for {module}")
    path = Path(spec.origin)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return ast.parse(path.read_text(), filename=str(path)), package


def _imports(tree: ast.Module, package: str) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) of the module's `from X import Y` statements."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found[alias.asname or alias.name] = (base, alias.name)
    return found


def _top_level(tree: ast.Module, name: str) -> ast.AST | None:
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node
    return None


class _Namespace(dict):
    """Names an annotation may use: typing, builtins, range markers, and module aliases,
    resolved on first use (an alias may name another alias, here or in another module)."""

    def __init__(self, module: str) -> None:
        super().__init__(_SAFE_BUILTINS | _TYPING | _PARAMS)
        self.module = module

    def __missing__(self, key: str) -> Any:
        value = _resolve_name(self.module, key)
        self[key] = value
        return value


def _resolve_name(module: str, name: str, depth: int = 0) -> Any:
    if depth > 8:
        raise Unreadable(f"alias chain too long at {module}.{name}")
    tree, package = _module_ast(module)
    node = _top_level(tree, name)
    if isinstance(node, ast.Assign) and node.value is not None:
        return _evaluate(node.value, module)
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return _evaluate(node.value, module)
    imported = _imports(tree, package).get(name)
    if imported and imported[0] == "typing" and imported[1] in _TYPING:
        return _TYPING[imported[1]]
    if imported and imported[0] == "meta_cli.params":
        return _PARAMS[imported[1]]
    if imported and imported[0].startswith("meta_cli"):
        submodule = f"{imported[0]}.{imported[1]}"
        if _is_module(submodule):  # `from meta_cli.algorithms import heads`: heads.Head
            return _ModuleRef(submodule)
        return _resolve_name(imported[0], imported[1], depth + 1)
    raise Unreadable(f"{module}.{name} is not an alias of typing objects")


def _is_module(name: str) -> bool:
    """Whether name is a module, found on disk: importing it (or find_spec, which imports
    its parent) would load torch into the pre-flight."""
    parent, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False  # the parent is a module: name is an attribute of it
    return any((Path(folder) / f"{leaf}.py").is_file() or (Path(folder) / leaf / "__init__.py").is_file()
               for folder in spec.submodule_search_locations)


class _ModuleRef:
    """A project module named in an annotation (`heads.Head`): its aliases, resolved on access."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Any:
        return _resolve_name(self.module, name)


def _evaluate(node: ast.expr, module: str) -> Any:
    code = compile(ast.Expression(node), f"<annotation in {module}>", "eval")
    return eval(code, {"__builtins__": {}}, _Namespace(module))  # noqa: S307 - names limited above


def _hint(node: ast.expr | None, module: str) -> Any:
    if node is None:
        return Any
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        node = ast.parse(node.value, mode="eval").body
    try:
        return _evaluate(node, module)
    except Exception:  # torch.device, nn.Module, ...: any value is accepted
        return Any


def _class(module: str, name: str) -> tuple[ast.ClassDef, str]:
    tree, package = _module_ast(module)
    node = _top_level(tree, name)
    if isinstance(node, ast.ClassDef):
        return node, module
    imported = _imports(tree, package).get(name)
    if imported and imported[0].startswith("meta_cli"):
        return _class(*imported)
    raise Unreadable(f"{module}.{name} is not a class defined in meta_cli")


def _is_dataclass(node: ast.ClassDef) -> bool:
    def name(d: ast.expr) -> str:
        d = d.func if isinstance(d, ast.Call) else d
        return d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
    return any(name(d) == "dataclass" for d in node.decorator_list)


def _bases(node: ast.ClassDef, module: str) -> list[tuple[ast.ClassDef, str]]:
    """The project's own base classes (nn.Module, abc.ABC and the like end the search)."""
    out = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            try:
                out.append(_class(module, base.id))
            except Unreadable:
                continue
    return out


def _injected(node: ast.ClassDef, module: str) -> tuple[str, ...]:
    for statement in node.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value else [])
        if any(isinstance(t, ast.Name) and t.id == "injected" for t in targets):
            return tuple(ast.literal_eval(statement.value))
    for base, base_module in _bases(node, module):
        found = _injected(base, base_module)
        if found:
            return found
    return ()


def _function_parameters(function: ast.FunctionDef, module: str, skip_self: bool,
                         forwards: bool = False) -> list[Parameter]:
    """Its parameters; `forwards`: a `**kwargs` is allowed (a constructor passing the rest on)."""
    args = function.args
    if args.vararg or (args.kwarg and not forwards):
        raise Unreadable("*args/**kwargs")
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out = [Parameter(a.arg, _hint(a.annotation, module), d is None) for a, d in zip(positional, defaults)]
    out += [Parameter(a.arg, _hint(a.annotation, module), d is None)
            for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return out[1:] if skip_self else out


def _class_parameters(node: ast.ClassDef, module: str) -> list[Parameter]:
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "__init__":
            own = _function_parameters(statement, module, skip_self=True, forwards=True)
            if statement.args.kwarg is None:
                return own
            # `**kwargs` passes the rest on to the base: its parameters the subclass does not name.
            bases = _bases(node, module)
            if not bases:
                raise Unreadable(f"{node.name}.__init__ forwards **kwargs to no meta_cli base")
            names = {p.name for p in own}
            return own + [p for p in _class_parameters(*bases[0]) if p.name not in names]
    if _is_dataclass(node):
        inherited = [p for base, m in _bases(node, module) for p in _class_parameters(base, m)]
        own = [Parameter(s.target.id, _hint(s.annotation, module), s.value is None)
               for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
               and not (isinstance(s.annotation, ast.Name) and s.annotation.id == "ClassVar")]
        names = {p.name for p in own}
        return [p for p in inherited if p.name not in names] + own
    for base, base_module in _bases(node, module):
        return _class_parameters(base, base_module)
    raise Unreadable(f"no __init__ found for {node.name}")


def _from_source(target: str) -> Signature:
    module, _, name = target.rpartition(".")
    if not module.startswith("meta_cli"):
        raise Unreadable("outside the project")
    tree, _ = _module_ast(module)
    node = _top_level(tree, name)
    if isinstance(node, ast.FunctionDef):
        parameters, injected = _function_parameters(node, module, skip_self=False), ()
    else:
        cls, cls_module = _class(module, name)
        parameters, injected = _class_parameters(cls, cls_module), _injected(cls, cls_module)
    return Signature(target, {p.name: p for p in parameters if p.name not in injected}, injected)


def parameters_of(obj: Any) -> list[tuple[inspect.Parameter, Any]]:
    """An imported callable's parameters (self aside) with their type hints, by inspect. A class
    whose `__init__` takes `**kwargs` passes them on to the next `__init__` of its MRO: its
    parameters are its own, then that one's it does not name (and so on)."""
    if not inspect.isclass(obj):
        hints = typing.get_type_hints(obj, include_extras=True)
        return [(p, hints.get(p.name, Any)) for p in inspect.signature(obj).parameters.values()]
    found: list[tuple[inspect.Parameter, Any]] = []
    for cls in obj.__mro__:
        if "__init__" not in vars(cls):
            continue
        function = vars(cls)["__init__"]
        hints = typing.get_type_hints(function, include_extras=True)
        names = {p.name for p, _ in found}
        forwards = False
        for name, p in inspect.signature(function).parameters.items():
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif name != "self" and name not in names and p.kind is not p.VAR_POSITIONAL:
                found.append((p, hints.get(name, Any)))
        if not forwards:
            break
    return found


def from_object(target: str, obj: Any) -> Signature:
    """The signature of an imported callable, by inspect (the reference for `_from_source`)."""
    injected = tuple(getattr(obj, "injected", ()))
    out = {}
    for p, hint in parameters_of(obj):
        if p.name in injected or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        out[p.name] = Parameter(p.name, hint, p.default is inspect.Parameter.empty)
    return Signature(target, out, injected)


@functools.lru_cache(maxsize=None)
def signature(target: str) -> Signature:
    """The signature of `target` ('package.module.Name'), from source when it can be read."""
    try:
        return _from_source(target)
    except (Unreadable, OSError, SyntaxError, ValueError):
        from hydra.utils import get_object  # the slow, always-right way

        return from_object(target, get_object(target))
