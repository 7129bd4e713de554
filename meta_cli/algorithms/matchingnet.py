"""Matching Networks (Vinyals et al., 2016), without full-context embeddings."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.base import Algorithm, Task, cosine_similarities, full_precision
from meta_cli.data.base import Episode
from meta_cli.params import Gt


def matching_log_probs(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                       ways: int, scale: torch.Tensor | float) -> torch.Tensor:
    """support (n_support, D), labels (n_support,) in 0..ways-1, query (n_query, D) ->
    (n_query, ways) log p(y | x) = log sum_i a(x, x_i) [y_i = y], with attention a the softmax
    over the support of scale * cosine(x, x_i)."""
    attention = torch.softmax(scale * cosine_similarities(query, support), dim=1)
    probs = attention @ F.one_hot(labels, ways).to(attention.dtype)
    return torch.log(probs.clamp_min(1e-12))


class MatchingNet(Algorithm):
    """A shared embedding; each query is labelled by cosine attention over the support
    embeddings. The embeddings are not conditioned on the whole support set (no full-context
    embeddings, no LSTM). The attention's softmax has a learned scale: unscaled cosines in
    [-1, 1] give near-uniform attention."""

    embeds_once = True  # eval.cache: each image embedded once per split

    tasks = ("classification",)

    def __init__(self, backbone: nn.Module, task: Task, outputs: int,
                 scale: Annotated[float, Gt(0)] = 10.0) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) log-probabilities (cross-entropy on them is Matching Networks' NLL)."""
        support, query = self.embed(episode)
        with full_precision(support):
            return matching_log_probs(support, episode.support_labels, query, episode.ways, self.scale)
