"""Siamese networks (Koch, Zemel & Salakhutdinov, 2015): a learned "same class?" verifier.

Twin embedding (one backbone, shared weights), the component-wise L1 distance of two
embeddings, and a sigmoid head (Koch et al., eq. 1 and section 3.1):

    p(x1, x2) = sigma( sum_j alpha_j |h(x1)_j - h(x2)_j| + b )

Meta-training: every pair of the episode's images (support and query together, i.e. the
`ways` meta-training classes of this episode), same-class and different-class pairs weighted
to half of the loss each (`pair_loss`): balanced without sampling, so a step is a deterministic
function of the episode and the weights. Koch's random affine distortions are the dataset's
`dataset.augment` (drawn from the episode's own seed).

Test time (Koch et al., section 4.3, averaged over the K shots): a query is given the class
whose support images have the highest mean "same" probability; `query_logits` returns
log(mean probability) per class, so eval, predict and the report use it as any logits.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode
from meta_cli.params import Ge


def pair_logits(head: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (n, D), b (m, D) embeddings -> (n, m) logits of "same class": alpha . |a_i - b_j| + bias."""
    return head((a[:, None, :] - b[None, :, :]).abs()).squeeze(-1)


def pair_loss(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Balanced binary cross-entropy over pairs: logits (P,), same (P,) bool ->
    1/2 mean over same-class pairs + 1/2 mean over different-class pairs (an episode has far
    more different pairs: 5-way with 6 images per class has 75 same and 360 different)."""
    losses = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
    return 0.5 * losses[same].mean() + 0.5 * losses[~same].mean()


def class_scores(logits: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """logits (n_query, n_support) of "same", labels (n_support,) in 0..ways-1 ->
    (n_query, ways) log of the mean "same" probability over each class's support images:
    log (1/K_c sum_{s: y_s = c} sigma(z_qs)), computed stably as a log-sum-exp of log-sigmoids."""
    log_p = F.logsigmoid(logits)  # (n_query, n_support)
    one_hot = F.one_hot(labels, ways).to(log_p.dtype)  # (n_support, ways)
    # log sum_s [y_s = c] p_qs: -inf where a class has no support image.
    masked = log_p[:, :, None] + torch.log(one_hot)[None, :, :]  # (n_query, n_support, ways)
    return torch.logsumexp(masked, dim=1) - torch.log(one_hot.sum(0))


class Siamese(Algorithm):
    """Backbone -> optional fully-connected sigmoid layer (Koch's 4096-unit one, `hidden` wide;
    0: none) -> L1 distance -> sigmoid head. Classification only; any number of ways."""

    embeds_once = True  # eval.cache: each image embedded once per split

    tasks = ("classification",)

    def __init__(self, backbone: nn.Module, task: Task, outputs: int,
                 hidden: Annotated[int, Ge(0)] = 0) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        width = hidden or backbone.out_features
        #: Koch et al.'s last layer: sigmoid(W conv + b), the features the L1 distance compares.
        self.features = nn.Sequential(nn.Linear(backbone.out_features, hidden), nn.Sigmoid()) if hidden else nn.Identity()
        self.head = nn.Linear(width, 1)

    def embed(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_support, D) and (n_query, D) float32 embeddings after Koch's last layer."""
        support, query = super().embed(episode)
        with full_precision(support):
            return self.features(support.float()), self.features(query.float())

    def scores(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int) -> torch.Tensor:
        with full_precision(support):
            return class_scores(pair_logits(self.head, query, support), labels, ways)

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways): log of the mean "same" probability of each query with each class's
        support images; the argmax is Koch et al.'s one-shot decision."""
        support, query = self.embed(episode)
        return self.scores(support, episode.support_labels, query, episode.ways)

    def meta_objective(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The balanced pair loss over all pairs of the episode's labelled images (objective
        and reported loss), and the episode's N-way query accuracy from the same embeddings."""
        support, query = self.embed(episode)
        images = torch.cat([support, query])
        labels = torch.cat([episode.support_labels, episode.query_labels])
        first, second = torch.triu_indices(len(images), len(images), offset=1, device=images.device)
        with full_precision(images):
            logits = self.head((images[first] - images[second]).abs()).squeeze(-1)
            loss = pair_loss(logits, labels[first] == labels[second])
            accuracy = self.accuracy(self.scores(support, episode.support_labels, query, episode.ways),
                                     episode.query_labels)
        return loss, loss, accuracy

