"""ANIL (Raghu et al., 2020): MAML's inner loop on the head only, on learn2learn's MAML."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.algorithms.maml import adapt
from meta_cli.data.base import Episode
from meta_cli.params import Ge, Gt


class ANIL(Algorithm):
    """Almost No Inner Loop: the backbone embeds support and query once per episode and is
    meta-learned by the outer loop only; a linear head (wrapped in `l2l.algorithms.MAML`) is
    adapted on the support embeddings. Second order through the head's steps by default."""

    fixed_ways = True

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        fast_lr: Annotated[float, Gt(0)] = 0.1,
        adaptation_steps: Annotated[int, Ge(1)] = 5,
        test_adaptation_steps: Annotated[int, Ge(0)] = 10,
        first_order: bool = False,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.head = l2l.algorithms.MAML(nn.Linear(backbone.out_features, outputs), lr=fast_lr,
                                        first_order=first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps
        self.first_order = first_order

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, outputs): the adapted head on the query embeddings."""
        steps = self.adaptation_steps if training else self.test_adaptation_steps
        # One forward for both sets, as learn2learn's anil_fc100 example (batch norm sees both).
        support, query = (e.float() for e in self.embed(episode))
        # Under train.precision=bf16 only the body is autocast: the head's small inner loop
        # (and its second-order terms) stays float32.
        with full_precision(support), torch.enable_grad():  # gradients also when meta-testing
            head = self.head.clone()
            for _ in range(steps):
                adapt(head, self.loss(head(support), episode.support_labels),
                      first_order=self.first_order or not training)
            return head(query)
