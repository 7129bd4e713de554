"""Config nodes into objects: Hydra's `instantiate`, with meta-cli's errors left whole."""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from meta_cli.errors import UserError


def instantiate(node: dict[str, Any], **kwargs: Any) -> Any:
    """hydra.utils.instantiate that lets a constructor's UserError through unwrapped."""
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


def arguments(node: dict[str, Any]) -> dict[str, Any]:
    """A config node's constructor arguments (its keys but `_target_` and the like)."""
    return {k: v for k, v in node.items() if not k.startswith("_")}
