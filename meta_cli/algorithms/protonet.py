"""Prototypical Networks (Snell et al., 2017) with learn2learn's PrototypicalClassifier, and
P>M>F's test-time fine-tuning (Hu et al., 2022): `finetune`."""
from __future__ import annotations

import copy
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.algorithms.base import Algorithm, Task, full_precision, prototypes, squared_distances
from meta_cli.data.base import Episode
from meta_cli.data.sampler import random_affine
from meta_cli.params import Ge, Gt


#: The gradient norm each fine-tuning step is clipped to.
FINETUNE_CLIP = 1.0


class ProtoNet(Algorithm):
    """Logits = -squared Euclidean distance from each query embedding to each class mean
    of the support embeddings. No inner loop: any number of ways works at test time.

    `finetune` (test time only: validation and meta-testing): on each episode a copy of the
    backbone takes `finetune_steps` SGD steps (momentum 0.9, rate `finetune_lr`, gradient norm clipped to 1) on the
    prototype loss of the support set, then embeds support and query; the meta-trained body is
    untouched. As in P>M>F the loss reads pseudo-queries, augmented copies of the support
    images (each turned, scaled and shifted a little: `random_affine`, drawn from the episode's
    seed), against the prototypes of the support images: in a 1-shot episode each image is its
    own prototype, so once the classes are apart the support images themselves give next to
    no gradient (measured: no change on Omniglot 5w1s, docs/results.md).
    `finetune_augment=false`: the support images themselves.
    """

    embeds_once = True  # eval.cache: each image embedded once per split (not with finetune)

    tasks = ("classification",)

    def __init__(self, backbone: nn.Module, task: Task, outputs: int, finetune: bool = False,
                 finetune_steps: Annotated[int, Ge(1)] = 10,
                 finetune_lr: Annotated[float, Gt(0)] = 0.001, finetune_augment: bool = True) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.finetune, self.finetune_steps, self.finetune_lr = finetune, finetune_steps, finetune_lr
        self.finetune_augment = finetune_augment

    def finetuned(self, episode: Episode) -> nn.Module:
        """A copy of the backbone after `finetune_steps` steps on the episode's support set."""
        body = copy.deepcopy(self.backbone)
        trained = [p for p in body.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trained, lr=self.finetune_lr, momentum=0.9)
        labels, ways, n = episode.support_labels, episode.ways, len(episode.support)
        images = episode.support
        if self.finetune_augment:  # support images, then their pseudo-queries
            rng = np.random.default_rng(episode.seed if episode.seed is not None else 0)
            images = torch.cat([episode.support, random_affine(episode.support, rng)])
        with torch.enable_grad():  # also under the evaluation's no_grad
            for _ in range(self.finetune_steps):
                optimizer.zero_grad(set_to_none=True)
                embedded = body(images).float()
                support, queries = embedded[:n], embedded[n:] if self.finetune_augment else embedded
                logits = -squared_distances(queries, prototypes(support, labels, ways))
                F.cross_entropy(logits, labels).backward()
                # Squared distances of unnormalised embeddings reach the hundreds: their
                # gradients would throw the body far off in one step.
                nn.utils.clip_grad_norm_(trained, FINETUNE_CLIP)
                optimizer.step()
        return body

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) logits: -squared distance to the prototype of each support label,
        in the order of the sorted distinct labels."""
        if self.finetune and not training:
            body = self.finetuned(episode)
            with torch.no_grad():
                support, query = body(torch.cat([episode.support, episode.query])).split(
                    [len(episode.support), len(episode.query)])
        else:
            support, query = self.embed(episode)
        with full_precision(support):
            classifier = l2l.nn.PrototypicalClassifier(support=support, labels=episode.support_labels)
            return classifier(query)
