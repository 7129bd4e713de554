"""meta-cli: command-line experiment runner for meta-learning."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meta_cli.apps.learner import Learner

__version__ = "0.1.0"


def load(checkpoint: Any, device: Any = "auto", **test_time: Any) -> "Learner":
    """The learner saved in `checkpoint` (a .pt written by `meta-cli train`), ready for
    `.predict(support, support_labels, query)`; see `meta_cli.apps.learner`. `test_time`: the
    algorithm's test-time settings, as eval's algorithm.KEY=VALUE (e.g. head="logistic").

    Imported on first use: `import meta_cli` stays free of torch and Hydra.
    """
    from meta_cli.apps.learner import load as _load

    return _load(checkpoint, device, **test_time)
