"""Prototypical Networks (Snell et al., 2017) with learn2learn's PrototypicalClassifier."""
from __future__ import annotations

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode


class ProtoNet(Algorithm):
    """Logits = -squared Euclidean distance from each query embedding to each class mean
    of the support embeddings. No inner loop: any number of ways works at test time."""

    embeds_once = True  # eval.cache: each image embedded once per split

    tasks = ("classification",)

    def __init__(self, backbone: nn.Module, task: Task, outputs: int) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) logits: -squared distance to the prototype of each support label,
        in the order of the sorted distinct labels."""
        support, query = self.embed(episode)
        with full_precision(support):
            classifier = l2l.nn.PrototypicalClassifier(support=support, labels=episode.support_labels)
            return classifier(query)
