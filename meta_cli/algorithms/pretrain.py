"""Pre-training on all meta-training classes, then a new head per episode (transfer learning).

Baseline and Baseline++ (Chen et al., 2019, "A Closer Look at Few-shot Classification"),
RFS (Tian et al., 2020) and the first stage of Meta-Baseline (Chen et al., 2021): the
backbone and a classifier over every meta-training class are trained with cross-entropy on
ordinary shuffled mini-batches (`batch_loss`, not episodes); at test time the classifier is
dropped and a head is fit on each episode's support embeddings (`query_logits`, heads.py).
"""
from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms import heads
from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode
from meta_cli.params import Ge, Gt


class CosineLinear(nn.Module):
    """Baseline++'s pre-training classifier (distLinear): scale * cos(x, w_c), the scale fixed
    as Chen et al. fix it: 2 for up to 200 classes, 10 for more (Omniglot's)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.scale = 2.0 if classes <= 200 else 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


class Pretrain(Algorithm):
    """Backbone + a classifier over the `classes` meta-training classes (each of Omniglot's
    turned or mirrored characters one class), trained non-episodically by `batch_loss`.

    On an episode (validation, meta-test, predict) the classifier is not used: the backbone
    embeds support and query in one forward pass (as ProtoNet's: batch norm sees both), without
    gradients, and `head` is fit on the support embeddings and applied to the query's. With
    `finetune`, a copy of the backbone is also trained on the support set for `finetune_steps`
    SGD steps (momentum 0.9, rate `finetune_lr`) together with the fitted head; the
    pre-trained weights never change at test time.
    """

    embeds_once = True  # eval.cache: each image embedded once per split

    injected = ("backbone", "task", "outputs", "classes")
    tasks = ("classification",)
    regime = "meta_cli.engine.regimes.batches.Batches"

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        classes: int,
        classifier: Literal["linear", "cosine"] = "linear",
        head: heads.Head = "prototype",
        head_steps: Annotated[int, Ge(0)] = 100,
        head_lr: Annotated[float, Gt(0)] = 0.1,
        head_c: Annotated[float, Gt(0)] = 1.0,
        finetune: bool = False,
        finetune_steps: Annotated[int, Ge(1)] = 10,
        finetune_lr: Annotated[float, Gt(0)] = 0.001,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.classes = classes
        self.classifier = (nn.Linear(backbone.out_features, classes) if classifier == "linear"
                           else CosineLinear(backbone.out_features, classes))
        self.head, self.head_steps, self.head_lr, self.head_c = head, head_steps, head_lr, head_c
        self.finetune, self.finetune_steps, self.finetune_lr = finetune, finetune_steps, finetune_lr

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and accuracy (scalars) of the classifier over all training classes
        on a mini-batch: images (B, C, H, W), labels (B,) in 0..classes-1."""
        embeddings = self.backbone(images)
        with full_precision(embeddings):  # a 1,088-way softmax stays float32 under bf16
            logits = self.classifier(embeddings.float())
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()

    def _fit(self, support: torch.Tensor, labels: torch.Tensor, ways: int) -> nn.Module:
        return heads.fit(self.head, support, labels, ways, self.head_steps, self.head_lr, self.head_c)

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) logits of the head fit on this episode's support set."""
        ways = episode.ways
        images = torch.cat([episode.support, episode.query])
        n_support = len(episode.support)
        body = copy.deepcopy(self.backbone) if self.finetune else self.backbone
        with torch.no_grad():
            embeddings = body(images).float()
        classifier = self._fit(embeddings[:n_support], episode.support_labels, ways)
        if not self.finetune:
            return classifier(embeddings[n_support:])
        self._finetune(body, classifier, images, episode.support_labels)
        with torch.no_grad():
            return classifier(body(images).float()[n_support:])

    def _finetune(self, body: nn.Module, classifier: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> None:
        """SGD on the support cross-entropy of the copy `body` and the fitted head together.
        Support and query go through one forward pass as at prediction (the same batch-norm
        batches); the loss reads the support only."""
        parameters = [*body.parameters(), *classifier.parameters()]
        optimizer = torch.optim.SGD(parameters, lr=self.finetune_lr, momentum=0.9)
        with torch.enable_grad():  # also under the evaluation's no_grad
            for _ in range(self.finetune_steps):
                optimizer.zero_grad(set_to_none=True)
                logits = classifier(body(images).float()[:len(labels)])
                F.cross_entropy(logits, labels).backward()
                optimizer.step()
