"""MetaOptNet-SVM (Lee et al., 2019) with learn2learn's differentiable `SVClassifier` (qpth)."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode
from meta_cli.params import Ge, Gt


class MetaOptNet(Algorithm):
    """A shared embedding; per episode a multi-class linear SVM (Crammer-Singer dual, solved
    by qpth's differentiable QP) is fitted to the support embeddings, and its scores on the
    query embeddings, times a learned scale (Lee et al.'s temperature), are the logits."""

    embeds_once = True  # eval.cache: each image embedded once per split

    tasks = ("classification",)

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        C_reg: Annotated[float, Gt(0)] = 0.1,
        max_iters: Annotated[int, Ge(1)] = 15,
        normalize: bool = False,
        scale: Annotated[float, Gt(0)] = 10.0,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.C_reg, self.max_iters, self.normalize = C_reg, max_iters, normalize
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) scaled SVM scores."""
        support, query = self.embed(episode)
        with full_precision(support):
            svm = l2l.nn.SVClassifier(support=support, labels=episode.support_labels, ways=episode.ways,
                                      normalize=self.normalize, C_reg=self.C_reg, max_iters=self.max_iters)
            return self.scale * svm(query)
