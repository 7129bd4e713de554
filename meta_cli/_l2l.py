"""learn2learn, loaded one module at a time.

learn2learn's package `__init__` imports all of learn2learn: torchvision's model zoo, cvxpy
(through qpth), gym (which prints a deprecation notice to stderr). That took 7 s on this
project's 2-core machine, at every start of every command, of which meta-cli needs a few
modules (MAML, MetaSGD, the prototype and SVM heads, the vision backbones): 0.1 s.

So `learn2learn` and the subpackages meta-cli reaches into are registered as packages over
their real folders without running their `__init__`. A name meta-cli uses (`MAML`,
`ConvBase`, ...) imports just the module that defines it. Any other name (another program's
`learn2learn.data.MetaDataset`, `learn2learn.vision.datasets`) runs that package's real
`__init__` into it, once, so the whole of learn2learn stays available in this process.
When learn2learn was already imported the usual way, it is used as it is.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
from typing import Any

#: package -> {name: the submodule that defines it}: what meta-cli uses, importable alone.
LIGHT: dict[str, dict[str, str]] = {
    "learn2learn": {},
    "learn2learn.algorithms": {"MAML": "maml", "MetaSGD": "meta_sgd", "maml": "maml", "meta_sgd": "meta_sgd"},
    "learn2learn.nn": {"PrototypicalClassifier": "protonet", "SVClassifier": "metaoptnet",
                       "Lambda": "misc", "Flatten": "misc", "Scale": "misc", "freeze": "misc",
                       "unfreeze": "misc"},
    "learn2learn.vision": {},
    "learn2learn.vision.models": {"ConvBase": "cnn4", "ConvBlock": "cnn4", "CNN4Backbone": "cnn4",
                                  "OmniglotCNN": "cnn4", "cnn4": "cnn4", "ResNet12Backbone": "resnet12",
                                  "resnet12": "resnet12", "WRN28Backbone": "wrn28", "wrn28": "wrn28"},
}


class _Package(types.ModuleType):
    """A learn2learn package whose `__init__` runs only when a name outside LIGHT is asked for."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        light = LIGHT.get(self.__name__, {})
        if name in light:
            module = importlib.import_module(f"{self.__name__}.{light[name]}")
            value = module if name == light[name] else getattr(module, name)
        else:
            _run_init(self)
            value = object.__getattribute__(self, name)  # AttributeError if truly absent
        setattr(self, name, value)
        return value


def _run_init(package: _Package) -> None:
    if package.__dict__.get("_meta_cli_full"):
        raise AttributeError
    package.__dict__["_meta_cli_full"] = True
    code = package.__spec__.loader.get_code(package.__name__)  # type: ignore[union-attr]
    with contextlib.redirect_stderr(io.StringIO()):  # gym's notice
        exec(code, package.__dict__)  # noqa: S102 - learn2learn's own __init__


def _register() -> types.ModuleType:
    if "learn2learn" in sys.modules:
        return sys.modules["learn2learn"]
    for name in LIGHT:  # parents first
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(f"learn2learn is not installed (no {name}); run scripts/setup.sh")
        package = _Package(name)
        package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
        package.__file__, package.__package__ = spec.origin, name
        package.__loader__ = spec.loader
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)
    return sys.modules["learn2learn"]


l2l = _register()

__all__ = ["l2l"]
