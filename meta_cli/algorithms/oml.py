"""OML (Javed & White, NeurIPS 2019, "Meta-Learning Representations for Continual Learning").

The representation network (the backbone) is fixed while a stream is learned; the prediction
network (a linear head over every meta-training class) learns it one image per SGD step. A
meta-training step (the Stream regime) resets the head rows of a few classes, learns their
images online, class after class, then takes the loss on fresh images of those classes plus
"remember" images of the whole training split, and backpropagates through the trajectory into
the backbone and the head's initialisation: second order unless `first_order` (the inner
gradient keeps its graph; OML's public code dropped it by mistake, kjaved0/mrcl #15).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from meta_cli.algorithms.continual import ContinualMetaLearner, Params, reset_rows


class OML(ContinualMetaLearner):
    """Backbone (meta-learned, fixed in the inner loop) + linear head (its initialisation
    meta-learned, adapted in the inner loop); see `ContinualMetaLearner` for the keys."""

    def stream_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) representations in the head's precision (float32 under bf16
        autocast: the online steps stay full precision)."""
        return self.backbone(images).to(self.head.weight.dtype)

    def stream_start(self, classes: int) -> Params:
        """A zero head of `classes` rows: new classes start from nothing."""
        weight = self.head.weight
        return {"weight": weight.new_zeros(classes, weight.shape[1]), "bias": weight.new_zeros(classes)}

    def meta_start(self, rows: torch.Tensor) -> Params:
        weight, bias = reset_rows(self.head.weight, self.head.bias, rows)
        return {"weight": weight, "bias": bias}

    def stream_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        """(n, D) representations -> (n, classes) logits of the head `params`."""
        return F.linear(features, params["weight"], params["bias"])
