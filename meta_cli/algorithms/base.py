"""The contract between the training loop and a meta-learning algorithm."""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.data.base import Episode
from meta_cli.errors import UserError

Task = Literal["classification", "regression"]


def full_precision(embeddings: torch.Tensor) -> torch.autocast:
    """Turns train.precision=bf16 autocast off for a metric head: distances, attention and the
    SVM's QP (whose LU has no bfloat16 kernel) run in float32 on float32 embeddings."""
    return torch.autocast(embeddings.device.type, enabled=False)


def prototypes(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Support embeddings (n_support, D) with labels (n_support,) in 0..ways-1 -> the mean
    embedding of each class, (ways, D); zero for a class without support examples."""
    sums = support.new_zeros(ways, support.shape[1]).index_add_(0, labels, support)
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).to(support.dtype)
    return sums / counts[:, None]


def squared_distances(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Query embeddings (n_query, D), centres (ways, D) -> (n_query, ways) squared Euclidean
    distances |q - c|^2."""
    return (query[:, None, :] - centres[None, :, :]).pow(2).sum(-1)


def cosine_similarities(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Query embeddings (n_query, D), keys (n_keys, D) -> (n_query, n_keys) cosines."""
    return F.normalize(query, dim=1) @ F.normalize(keys, dim=1).t()


class Algorithm(nn.Module, abc.ABC):
    """A meta-learner whose parameters are the meta-parameters (what the outer optimizer updates).

    Subclasses take the backbone (a `meta_cli.models.base.Backbone`), the task kind and the
    number of outputs (ways) from the engine, and their hyperparameters from the config. Every
    attribute and method the engine uses is declared here; a subclass overrides what it needs:
    at least `query_logits`, usually nothing else.
    """

    #: Constructor arguments the engine passes; all others are config keys.
    injected: ClassVar[tuple[str, ...]] = ("backbone", "task", "outputs")
    #: The task kinds it learns; another dataset is refused in one line (`check_task`).
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "regression")
    #: True when the model's output layer fixes the number of ways (MAML's head): meta-testing
    #: and prediction must then use the training ways.
    fixed_ways: ClassVar[bool] = False
    #: True when an episode's embeddings are `self.backbone`'s of each image, whatever the
    #: episode (metric learners, pretrain's heads): meta-testing may embed each image of a
    #: split once (eval.cache). False where the body adapts to the support set (MAML-style
    #: learners, test-time fine-tuning: see `adapts_body`) or reads whole episodes (MANN).
    embeds_once: ClassVar[bool] = False
    #: How it learns: the dotted path of its `meta_cli.engine.regimes` class, as a config names
    #: a `_target_` — Episodes (meta-batches of episodes, through `meta_objective` or
    #: `meta_batch_loss`) or Batches (mini-batches of (image, class) through `batch_loss`:
    #: pre-training).
    regime: ClassVar[str] = "meta_cli.engine.regimes.episodes.Episodes"
    #: How a meta-batch of episodes is run: "l2l" or "loop", task by task (`meta_objective`), or
    #: "vmap" or "batched", all at once (`meta_batch_loss`). MAML, MANN and Meta-LSTM set it
    #: from their config.
    backend: str = "l2l"

    def __init__(self, backbone: nn.Module, task: Task, outputs: int) -> None:
        super().__init__()
        self.check_task(task)
        self.task = task
        self.outputs = outputs

    @property
    def batched(self) -> bool:
        """Whether a meta-batch of episodes runs at once (`meta_batch_loss`) rather than
        episode by episode (`meta_objective`)."""
        return self.backend in ("vmap", "batched")

    def embed(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Support (n_support, D) and query (n_query, D) embeddings of `self.backbone`, from one
        forward pass over both sets: batch norm with batch statistics sees the whole episode,
        as in learn2learn's ProtoNet example."""
        embeddings = self.backbone(torch.cat([episode.support, episode.query]))
        return embeddings.split([len(episode.support), len(episode.query)])

    @classmethod
    def adapts_body(cls, **config: Any) -> bool:
        """Whether, with these config keys, an episode's embeddings are not fixed per image
        (`embeds_once` false, or test-time fine-tuning: algorithm.finetune=true)."""
        return not cls.embeds_once or bool(config.get("finetune", False))

    @classmethod
    def check(cls, task: Task, vmap_blocker: str | None = None, **config: Any) -> None:
        """Raise UserError for a config (this algorithm's keys) that cannot work on `task`,
        without building anything: the pre-flight calls it for every job of a sweep, and the
        constructor of a subclass that overrides it calls it first. `vmap_blocker`: why the
        chosen backbone cannot be vectorised, if it cannot (`Backbone.vmap_blocker`)."""
        cls.check_task(task)

    @classmethod
    def continual_blocker(cls, **config: Any) -> str | None:
        """Why a model of this config cannot run the continual protocol (eval.protocol=continual:
        it needs a backbone whose embeddings a new head learns a stream on); None when it can."""
        return None

    @classmethod
    def check_task(cls, task: Task) -> None:
        if task not in cls.tasks:
            raise UserError(
                f"algorithm {cls.__name__} does only {' and '.join(cls.tasks)}; "
                f"this dataset is {task}. Pick another algorithm or dataset."
            )

    @classmethod
    def check_ways(cls, ways: int, key: str, outputs: int, **config: Any) -> None:
        """Raise UserError when a model of this config, built with `outputs` outputs
        (dataset.ways), cannot answer `ways`-way episodes; `key` names the setting that asks
        for them (e.g. "eval.ways"). A fixed head (`fixed_ways`) takes its own ways only;
        subclasses add other limits (MANN's one-hot label input)."""
        if cls.fixed_ways and ways != outputs:
            raise UserError(f"{key}={ways} but this {cls.__name__} model has a {outputs}-way output layer: "
                            f"its head is sized by dataset.ways={outputs} in training. Use {key}={outputs}, "
                            f"or a metric algorithm such as protonet.")

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """Adapt to `episode.support` (and `support_labels`), then return the model's output
        on `episode.query`: (n_query, ways) logits for classification, (n_query, 1)
        predictions for regression. `episode.query_labels` is not read, so prediction on
        unlabelled images shares this path with meta-training and meta-testing.

        `training` selects the meta-training inner loop (e.g. second-order) versus the
        test-time one.
        """
        # Not abstract: a model that only defines episode_loss (a test double) is still valid.
        raise NotImplementedError(f"{type(self).__name__} does not define query_logits")

    def episode_loss(self, episode: Episode, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query loss (scalar) and query accuracy (scalar; None for regression) after
        adapting to the support set, from `query_logits`."""
        output = self.query_logits(episode, training)
        return self.loss(output, episode.query_labels), self.accuracy(output, episode.query_labels)

    def meta_objective(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Meta-training on one episode: (objective whose gradient is this task's share of the
        meta-gradient, query loss to report, query accuracy to report). For gradient-based
        meta-learners the objective is the query loss itself; Reptile's is not."""
        loss, accuracy = self.episode_loss(episode, training=True)
        return loss, loss, accuracy

    def meta_batch_loss(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """backend="vmap" or "batched": the mean query loss (differentiable) and mean query accuracy (None
        for regression) of a meta-batch of same-shaped episodes, computed at once."""
        raise NotImplementedError(f"{type(self).__name__} has no vectorised meta-batch (backend=vmap)")

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Batches regime: mean loss and accuracy on images (N, C, H, W) of classes
        labels (N,) among all the training split's classes."""
        raise NotImplementedError(f"{type(self).__name__} learns from episodes, not batches")

    def meta_optimizer(self, meta_lr: float, body_lr_scale: float = 1.0) -> torch.optim.Optimizer:
        """The outer optimizer: Adam on every meta-parameter (learn2learn's examples); the
        backbone's at meta_lr * body_lr_scale (train.body_lr_scale: a pre-trained body moves
        less than a new head). Frozen parameters (backbone.freeze) are left out."""
        body = getattr(self, "backbone", None)
        body_ids = {id(p) for p in body.parameters()} if isinstance(body, nn.Module) else set()
        trained = [p for p in self.parameters() if p.requires_grad]
        if not trained:
            raise UserError("nothing to train: every parameter is frozen (backbone.freeze=true) and "
                            f"{type(self).__name__} has none of its own; use backbone.freeze=false or norm.")
        if body_lr_scale == 1.0:  # one group, as checkpoints of earlier runs hold it
            return torch.optim.Adam(trained, lr=meta_lr)
        groups = [{"params": [p for p in trained if id(p) not in body_ids], "lr": meta_lr},
                  {"params": [p for p in trained if id(p) in body_ids], "lr": meta_lr * body_lr_scale}]
        return torch.optim.Adam([g for g in groups if g["params"]], lr=meta_lr)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def accuracy(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        if self.task != "classification":
            return None
        return (output.argmax(dim=1) == target).float().mean()
