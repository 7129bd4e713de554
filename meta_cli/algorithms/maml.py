"""MAML (Finn et al., 2017) through learn2learn's `l2l.algorithms.MAML`."""
from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms import vectorized
from meta_cli.algorithms.base import Algorithm, Task
from meta_cli.data.base import Episode
from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt


def adapt(learner: l2l.algorithms.MAML, loss: torch.Tensor, first_order: bool) -> None:
    """One inner step. learn2learn's adapt() prints an autograd error and then fails with a
    misleading UnboundLocalError; surface the real cause instead."""
    try:
        learner.adapt(loss, first_order=first_order)
    except UnboundLocalError as exc:
        raise RuntimeError(
            "MAML inner-loop gradient failed (learn2learn hid the autograd error printed "
            "above): a parameter of the model is unused or does not require grad."
        ) from exc


class MAML(Algorithm):
    """Model = backbone + linear head; inner loop: SGD on the support loss from a clone.

    Meta-training backpropagates through the inner steps (second order unless
    first_order=true). At test time the inner loop runs `test_adaptation_steps` first-order
    steps: the meta-gradient is not needed there.
    """

    fixed_ways = True

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        fast_lr: Annotated[float, Gt(0)] = 0.4,
        adaptation_steps: Annotated[int, Ge(1)] = 1,
        test_adaptation_steps: Annotated[int, Ge(0)] = 3,
        first_order: bool = False,
        backend: Literal["l2l", "vmap"] = "l2l",
        compile: bool = False,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.check(task, backend=backend, compile=compile)
        head = nn.Linear(backbone.out_features, outputs)
        if task == "classification":  # learn2learn's OmniglotCNN head initialisation
            head.weight.data.normal_()
            head.bias.data.zero_()
        self.maml = self.wrap(nn.Sequential(backbone, head), fast_lr, first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps
        self.first_order = first_order
        #: l2l: learn2learn's clone/adapt, task by task. vmap: the meta-batch at once with
        #: torch.func (same meta-gradient; algorithms/vectorized.py). Test time is l2l either way.
        self.backend = backend
        # Not a registered submodule: checkpoints hold the model once, whatever the backend.
        object.__setattr__(self, "_twin", vectorized.functional_twin(self.maml.module) if backend == "vmap" else None)
        # compile: the meta-batch function through torch.compile (training only; test time runs
        # learn2learn's loop).
        object.__setattr__(self, "_meta_batch", vectorized.compiled(vectorized.maml_meta_batch) if compile
                           else vectorized.maml_meta_batch)

    @classmethod
    def check(cls, task: Task, backend: str = "l2l", compile: bool = False, vmap_blocker: str | None = None,
              **config: Any) -> None:
        super().check(task)
        if backend == "vmap" and vmap_blocker:
            raise UserError(f"algorithm.backend=vmap cannot vectorise a backbone with {vmap_blocker}; "
                            f"or use algorithm.backend=l2l.")
        if compile and backend != "vmap":
            raise UserError("algorithm.compile=true compiles the vectorised meta-batch: set "
                            "algorithm.backend=vmap as well, or algorithm.compile=false.")

    def wrap(self, model: nn.Module, fast_lr: float, first_order: bool) -> nn.Module:
        """learn2learn's learner with clone() and adapt(loss, first_order)."""
        return l2l.algorithms.MAML(model, lr=fast_lr, first_order=first_order)

    def meta_batch_loss(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """backend=vmap: mean query loss and accuracy of a meta-batch, one vectorised pass."""
        return self._meta_batch(
            self.maml.module, self._twin, vectorized.stack(episodes), self.maml.lr,
            self.adaptation_steps, self.first_order, self.loss, self.task == "classification")

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, outputs) output of a clone adapted on the support set; the meta-parameters
        are left as they are."""
        steps = self.adaptation_steps if training else self.test_adaptation_steps
        # The inner loop needs gradients even under no_grad (meta-testing, prediction).
        with torch.enable_grad():
            learner = self.maml.clone()
            for _ in range(steps):
                support_loss = self.loss(learner(episode.support), episode.support_labels)
                adapt(learner, support_loss, first_order=self.first_order or not training)
        return learner(episode.query)
