"""What continual learners share: a model split into a part that stays fixed while a stream is
learned and a part that learns from it, one image per SGD step.

A `StreamLearner` is written functionally so that the same code serves meta-training (OML,
ANML: the trajectory differentiated end to end), the continual evaluation protocol (any model
with a backbone: a plain loop, or `torch.func.vmap` over independent streams) and the tests:

- `stream_features(images)`: what the fixed part computes, once per image (a tensor, or a
  tuple of tensors with the images as the first dimension);
- `stream_start(classes)`: the adaptable parameters at the start of a stream of `classes`
  outputs, a dict name -> tensor (differentiable with respect to the meta-parameters where
  they come from them);
- `stream_logits(params, features)`: (n, classes) outputs of the adaptable part.
"""
from __future__ import annotations

import copy
from typing import Annotated, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.algorithms.vectorized import functional_twin
from meta_cli.data.base import Episode
from meta_cli.params import Ge, Gt

Params = dict[str, torch.Tensor]
Features = Any  # a tensor (N, ...) or a tuple of them


class StreamLearner(Protocol):
    def stream_features(self, images: torch.Tensor) -> Features: ...

    def stream_start(self, classes: int) -> Params: ...

    def stream_logits(self, params: Params, features: Features) -> torch.Tensor: ...


def take(features: Features, index: slice | torch.Tensor) -> Features:
    """Rows `index` of every tensor of `features`."""
    if isinstance(features, tuple):
        return tuple(f[index] for f in features)
    return features[index]


def cat(*parts: Features) -> Features:
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(group) for group in zip(*parts))
    return torch.cat(parts)


def sgd_step(learner: StreamLearner, params: Params, features: Features, labels: torch.Tensor,
             lr: float, create_graph: bool) -> tuple[Params, torch.Tensor]:
    """One SGD step of the adaptable part on `features` (n images, usually 1) of classes `labels`
    (n,): params - lr * grad of the mean cross-entropy. `create_graph`: keep the step's own
    graph, so that a loss after it differentiates through the gradient (second order); without
    it the gradient is a constant of the meta-gradient (first order: OML's and ANML's public
    code ran so by mistake, kjaved0/mrcl #15). Returns the new parameters and the loss."""
    loss = F.cross_entropy(learner.stream_logits(params, features), labels)
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
    return {n: params[n] - lr * g for n, g in zip(names, grads)}, loss


def learn_stream(learner: StreamLearner, params: Params, features: Features, labels: torch.Tensor,
                 lr: float, create_graph: bool) -> Params:
    """The online trajectory: one SGD step per image, in the given order (features' first
    dimension, labels (n,)); the parameters after the last step. Parameters that need no
    gradient (a fresh head) are made leaves that take one."""
    params = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
    for i in range(len(labels)):
        params, _ = sgd_step(learner, params, take(features, slice(i, i + 1)), labels[i:i + 1], lr,
                             create_graph)
    return params


def reset_rows(weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head (classes, D), (classes,) with rows `rows` set to zero, differentiably (the
    other rows keep their dependence on the meta-parameters). Zero, not a random draw: the
    trajectory is then a function of the data alone (OML's code re-draws them with Kaiming
    normal; from zero the first step makes a row the image's own embedding, scaled)."""
    keep = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
    keep = keep.index_fill(0, rows, 0.0)
    return weight * keep[:, None], bias * keep


class FrozenEmbedding(nn.Module):
    """The continual protocol's learner for any model with a backbone and no learner of its own:
    the backbone's embeddings are fixed, a fresh linear layer from zeros learns the stream."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def stream_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) float32 embeddings, without gradients."""
        with torch.no_grad():
            return self.backbone(images).float()

    def stream_start(self, classes: int) -> Params:
        d = self.backbone.out_features
        device = next(self.backbone.parameters()).device
        return {"weight": torch.zeros(classes, d, device=device), "bias": torch.zeros(classes, device=device)}

    def stream_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, params["weight"], params["bias"])


class AffineNorm(nn.Module):
    """A batch-norm layer's affine part alone, weight * x + bias per channel (same parameter
    names): an online learner sees one image at a time, whose own statistics would erase what
    tells images apart (a 1x1 or 2x2 map standardised over itself is nearly constant)."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight, self.bias = source.weight, source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def online_twin(backbone: nn.Module) -> nn.Module:
    """The backbone as an online learner runs it under `functional_call`: a copy without the
    channels-last layout (vmap cannot query it) whose batch norms are their affine part
    (`AffineNorm`), so that an image's output never depends on the others of its batch. Its own
    weights are never used."""
    twin = functional_twin(backbone, primitive_norm=False)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, AffineNorm(child))
    return twin


def online(twin: nn.Module, body: Params, images: torch.Tensor) -> torch.Tensor:
    """(N, ...) images -> (N, D) outputs of `online_twin` network `twin` with parameters `body`."""
    return functional_call(twin, body, (images,))


BODY = "body."


class Scratch(nn.Module):
    """The continual protocol's from-scratch baseline: a network of the backbone's architecture,
    freshly initialised from `seed` (the model's weights are not used), all of it learning the
    stream with a linear head from zeros; its batch norms are their affine part (`online_twin`),
    as ANML's prediction network's."""

    def __init__(self, backbone: nn.Module, seed: int) -> None:
        super().__init__()
        self.body = copy.deepcopy(backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.body.modules():
                if module is not self.body and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.out_features = backbone.out_features
        object.__setattr__(self, "_functional", online_twin(self.body))

    def stream_features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def stream_start(self, classes: int) -> Params:
        body = {BODY + n: p.detach() for n, p in self.body.named_parameters()}
        first = next(iter(body.values()))
        return {**body, "weight": first.new_zeros(classes, self.out_features), "bias": first.new_zeros(classes)}

    def stream_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        body = {n[len(BODY):]: p for n, p in params.items() if n.startswith(BODY)}
        representation = online(self._functional, body, features).to(params["weight"].dtype)  # type: ignore[arg-type]
        return F.linear(representation, params["weight"], params["bias"])


class ContinualMetaLearner(Algorithm):
    """OML and ANML: meta-trained on online trajectories (`trajectory_objective`, the Stream
    regime), validated and meta-tested on episodes whose support set is learned online (one
    image per SGD step, class after class) from a zero head, and able to run the continual
    protocol with their own adaptable part.

    `classes`: the meta-training split's classes, the rows of the head meta-training learns;
    `fast_lr`: the inner SGD rate; `first_order`: drop the second-order terms of the
    meta-gradient; `trajectory_shots`: images per class of a meta-training trajectory;
    `remember`: images of the whole training split added to the outer loss."""

    injected = ("backbone", "task", "outputs", "classes")
    tasks = ("classification",)
    regime = "meta_cli.engine.regimes.stream.Stream"

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        classes: int,
        fast_lr: Annotated[float, Gt(0)] = 0.03,
        first_order: bool = False,
        trajectory_shots: Annotated[int, Ge(1)] = 5,
        remember: Annotated[int, Ge(0)] = 15,
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.backbone = backbone
        self.classes = classes
        self.head = nn.Linear(backbone.out_features, classes)
        self.fast_lr, self.first_order = fast_lr, first_order
        self.trajectory_shots, self.remember = trajectory_shots, remember

    def meta_start(self, rows: torch.Tensor) -> Params:
        """The adaptable parameters at the start of a meta-training trajectory whose classes
        are `rows` (their head rows reset), as differentiable functions of the meta-parameters."""
        raise NotImplementedError

    def trajectory_objective(self, trajectory: torch.Tensor, trajectory_labels: torch.Tensor,
                             targets: torch.Tensor, target_labels: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One meta-training trajectory: the head rows of its classes reset, one SGD step per
        image of `trajectory` (T, C, H, W) with classes `trajectory_labels` (T,) in the order
        given (class after class), then the cross-entropy over all training classes (scalar) and
        accuracy on `targets` (M, C, H, W) of `target_labels` (M,): fresh images of the
        trajectory's classes and the remember images. Differentiable through the whole
        trajectory (second order unless `first_order`)."""
        params = self.meta_start(trajectory_labels.unique())
        features, target_features = self.stream_features(trajectory), self.stream_features(targets)
        # Under train.precision=bf16 only the fixed part's forward is autocast: the online steps
        # and their second-order terms stay float32 (as ANIL's head).
        with full_precision(trajectory):
            params = learn_stream(self, params, features, trajectory_labels, self.fast_lr,
                                  create_graph=not self.first_order)
            logits = self.stream_logits(params, target_features)
            return F.cross_entropy(logits, target_labels), (logits.argmax(1) == target_labels).float().mean()

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways): the support set learned online from a zero head (support images in
        class order, one SGD step each at `fast_lr`), then the query's outputs."""
        with torch.enable_grad():
            params = {n: p.detach() for n, p in self.stream_start(episode.ways).items()}
            features = detach(self.stream_features(episode.support))
            params = learn_stream(self, params, features, episode.support_labels, self.fast_lr,
                                  create_graph=False)
            with torch.no_grad():
                return self.stream_logits(params, self.stream_features(episode.query))


def detach(features: Features) -> Features:
    if isinstance(features, tuple):
        return tuple(f.detach() for f in features)
    return features.detach()
