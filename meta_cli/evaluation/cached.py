"""Meta-testing on cached embeddings (eval.cache=true): each image of the split embedded once.

Exact where two things hold, and refused (one line) elsewhere:
- the learner's episode embeddings are its backbone's of each image, whatever the episode
  (`Algorithm.embeds_once`: ProtoNet, MatchingNet, Siamese, MetaOptNet, pretrain's heads;
  not MAML-style learners, MANN, nor test-time fine-tuning, `Algorithm.adapts_body`);
- the backbone's embedding of an image does not depend on its batch in eval mode
  (`Backbone.batch_independent`: running batch-norm statistics, as resnet12 and wrn28 keep by
  default and timm models do, or no batch norm, mlp; not the Conv-4 family, whose batch norm
  uses each batch's statistics at test time too).
The episodes are the uncached path's (the same rows drawn from the same RNG,
`ClassSampler.sample_rows`); the learner runs on them with its backbone replaced by a
pass-through of the cached embeddings, so every head computes what it computes uncached.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch
from hydra.utils import get_object
from torch import nn

from meta_cli.data.base import Episode, Split
from meta_cli.errors import UserError

#: Images per forward pass while the split is embedded.
EMBED_BATCH = 256


def check_cache(algorithm: dict[str, Any], backbone: dict[str, Any], source: Any, split: Split) -> None:
    """UserError when eval.cache=true cannot give the uncached numbers (see the module doc)."""
    args = {k: v for k, v in algorithm.items() if not k.startswith("_")}
    learner = get_object(algorithm["_target_"])
    name = learner.__name__
    if learner.adapts_body(**args):
        why = ("algorithm.finetune=true fine-tunes a copy of the body on each support set"
               if learner.embeds_once else f"{name} adapts its body (or reads whole episodes) in each episode")
        raise UserError(f"eval.cache=true embeds each image once, but {why}; leave eval.cache=false.")
    body = get_object(backbone["_target_"])
    if not body.batch_independent(**{k: v for k, v in backbone.items() if not k.startswith("_")}):
        raise UserError(f"eval.cache=true needs a backbone whose embedding does not depend on its batch; "
                        f"{body.__name__} normalises with each batch's statistics (use resnet12, wrn28 or timm "
                        f"with running statistics, or leave eval.cache=false).")
    if not hasattr(source, "episode_rows"):
        raise UserError(f"eval.cache=true applies to image datasets; {getattr(source, 'title', 'this dataset')} "
                        f"has none: leave eval.cache=false.")
    blocker = source.cache_blocker(split)
    if blocker:
        raise UserError(f"eval.cache=true: {blocker}, so its images are not embedded once; meta-test another "
                        f"split or leave eval.cache=false.")


class _Cached(nn.Module):
    """Stands in for the backbone: its inputs are already the embeddings."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings


class EmbeddingTable:
    """The embeddings (M, D) of every image of one split, and its episodes made of them."""

    def __init__(self, algorithm: nn.Module, source: Any, split: Split) -> None:
        self.algorithm, self.source, self.split = algorithm, source, split
        rows = np.asarray(source.split_rows(split), dtype=np.int64)
        self.position = np.full(int(rows.max()) + 1, -1, dtype=np.int64)
        self.position[rows] = np.arange(len(rows))
        with torch.no_grad():
            self.embeddings = torch.cat([algorithm.backbone(source.inputs(split, rows[i:i + EMBED_BATCH]))
                                         for i in range(0, len(rows), EMBED_BATCH)])

    def episode(self, index: int, seed: int, ways: int, shots: int, query: int) -> Episode:
        """Episode `index` as the uncached path draws it, its images replaced by embeddings."""
        support, query_rows, episode_seed = self.source.episode_rows(self.split, index, seed, ways, shots, query)
        device = self.embeddings.device
        labels = torch.arange(ways, device=device)
        take = lambda rows: self.embeddings.index_select(  # noqa: E731
            0, torch.from_numpy(self.position[rows]).to(device))
        return Episode(take(support), labels.repeat_interleave(shots), take(query_rows),
                       labels.repeat_interleave(query), episode_seed)

    @contextlib.contextmanager
    def body(self) -> Iterator[None]:
        """The learner with a pass-through for its backbone, for the block."""
        body = self.algorithm.backbone
        self.algorithm.backbone = _Cached(body.out_features)
        try:
            yield
        finally:
            self.algorithm.backbone = body
