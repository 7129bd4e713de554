"""ANML (Beaulieu et al., ECAI 2020, "Learning to Continually Learn").

A neuromodulatory network sees the same input as the prediction network and gates the
prediction network's representation element-wise, sigmoid(NM(x)) * f(x), before its linear
head. The prediction network learns one image at a time: its batch norms keep their affine
part only (no statistics of a batch: `online_twin`), so an image's output never depends on the
others of its batch. The neuromodulatory network and the prediction network's initialisation (backbone and
head) are meta-learned; only the prediction network adapts in the inner loop, one image per SGD
step, as OML's head does. Meta-training, `first_order` and the remember images: as OML's.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.base import Task
from meta_cli.algorithms.continual import ContinualMetaLearner, Params, online, online_twin, reset_rows
from meta_cli.errors import UserError

PREFIX = "prediction."


class ANML(ContinualMetaLearner):
    """Prediction network: `backbone` + linear head (adapted in the inner loop); neuromodulatory
    network: a second backbone of the same config + a linear layer to the backbone's
    `out_features` gates (fixed in the inner loop). Both meta-learned."""

    def __init__(self, backbone: nn.Module, task: Task, outputs: int, classes: int, **config: Any) -> None:
        super().__init__(backbone, task, outputs, classes, **config)
        # Its own weights: deepcopy copies the backbone's initial draw, then it is re-drawn so
        # that the two networks do not start equal.
        self.neuromodulator = copy.deepcopy(backbone)
        for module in self.neuromodulator.modules():
            if hasattr(module, "reset_parameters") and module is not self.neuromodulator:
                module.reset_parameters()
        self.gate = nn.Linear(backbone.out_features, backbone.out_features)

    @classmethod
    def check(cls, task: Task, vmap_blocker: str | None = None, **config: object) -> None:
        super().check(task, vmap_blocker, **config)
        if vmap_blocker:  # the continual protocol maps the prediction network over streams
            raise UserError(f"algorithm=anml runs its prediction network under torch.func (a functional twin, "
                            f"vmapped over streams) and cannot with a backbone with {vmap_blocker}.")

    def _twin(self) -> nn.Module:
        """The prediction network's body as `functional_call` runs it (`online_twin`: batch norm
        reduced to its affine part, no channels-last layout). Not a submodule: its weights are
        never used, nor saved."""
        if not hasattr(self, "_functional"):
            object.__setattr__(self, "_functional", online_twin(self.backbone))
        return self._functional  # type: ignore[attr-defined]

    def stream_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> the images themselves (the prediction network adapts on them) and
        their gates (N, D) in (0, 1) from the neuromodulatory network."""
        dtype = self.head.weight.dtype
        return images, torch.sigmoid(self.gate(self.neuromodulator(images).to(dtype)))

    def _prediction(self) -> Params:
        return {PREFIX + n: p for n, p in self.backbone.named_parameters()}

    def stream_start(self, classes: int) -> Params:
        """The meta-learned prediction network with a zero head of `classes` rows."""
        weight = self.head.weight
        return {**self._prediction(), "weight": weight.new_zeros(classes, weight.shape[1]),
                "bias": weight.new_zeros(classes)}

    def meta_start(self, rows: torch.Tensor) -> Params:
        weight, bias = reset_rows(self.head.weight, self.head.bias, rows)
        return {**self._prediction(), "weight": weight, "bias": bias}

    def stream_logits(self, params: Params, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(n, classes) logits: the head on the gated representation of the prediction network
        `params` (its backbone's parameters under PREFIX, the head's as weight, bias)."""
        images, gates = features
        body = {n[len(PREFIX):]: p for n, p in params.items() if n.startswith(PREFIX)}
        representation = online(self._twin(), body, images).to(params["weight"].dtype)
        return F.linear(representation * gates, params["weight"], params["bias"])
