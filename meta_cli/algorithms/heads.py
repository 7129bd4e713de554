"""Test-time heads: a classifier fit on one episode's support embeddings (a frozen backbone's).

Each `fit_*(support, labels, ways, ...)` takes support embeddings (n_s, D), their labels (n_s,)
int64 in 0..ways-1, and returns a classifier: an nn.Module mapping embeddings (n, D) to
logits (n, ways), float32. The embeddings are detached: fitting a head never changes the
backbone. Every head starts from zeros or from the support set itself and draws no random
number, so the same support set gives the same classifier, whatever ran before.

- prototype: SimpleShot (Wang et al., 2019) / Meta-Baseline (Chen et al., 2021): nearest
  class mean of L2-normalised embeddings.
- linear: Baseline (Chen et al., 2019): a new linear layer trained on the support set.
- cosine: Baseline++ (Chen et al., 2019): cosine similarity to learned class weights, times a
  learned scale.
- logistic: RFS-simple (Tian et al., 2020): L2-normalised embeddings, multinomial logistic
  regression with an L2 penalty, solved to convergence (scikit-learn's LogisticRegression
  with its defaults, as RFS calls it, here in torch).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.base import prototypes, squared_distances

Head = Literal["prototype", "linear", "cosine", "logistic"]
HEADS: tuple[str, ...] = ("prototype", "linear", "cosine", "logistic")

#: Meta-Baseline's initial temperature: prototype logits are TEMPERATURE * (cos - 1) when the
#: prototype has unit length (one shot), so the loss is on the scale of Meta-Baseline's.
TEMPERATURE = 10.0
#: Baseline/Baseline++'s optimiser for the new head (Chen et al.'s code): SGD with momentum
#: 0.9, dampening 0.9, weight decay 1e-3. Their rate, 0.01, is for their Conv-4's 1,600
#: features of 84x84 images; on Omniglot's 64 features (norm ~3.5; a 64-wide conv4_pool
#: pre-trained for 282 steps) a linear head from zero stops short in 100 full-batch steps at
#: 0.01: 71.3 against 78.7 % at 0.1 (5-way 1-shot, 60 validation episodes), 28.1 against 49.5 %
#: (20-way, 30 episodes). So the default is 0.1.
LR = 0.1
MOMENTUM, DAMPENING, WEIGHT_DECAY = 0.9, 0.9, 1e-3
#: The cosine head's scale starts where Chen et al. fix it for many classes (and Meta-Baseline
#: starts its temperature), then is learned.
COSINE_SCALE = 10.0




class PrototypeClassifier(nn.Module):
    """Logits -TEMPERATURE / 2 * |q - p_c|^2 for the unit-length query embedding q and the
    mean p_c of class c's unit-length support embeddings (SimpleShot's L2N + nearest mean)."""

    def __init__(self, prototypes: torch.Tensor, temperature: float = TEMPERATURE) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(prototypes)  # (ways, D)
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        query = F.normalize(embeddings.float(), dim=1)
        squared = squared_distances(query, self.prototypes)  # (n, ways)
        return -0.5 * self.temperature * squared


def fit_prototype(support: torch.Tensor, labels: torch.Tensor, ways: int) -> PrototypeClassifier:
    """The class means of the L2-normalised support embeddings; nothing is trained."""
    normalised = F.normalize(support.detach().float(), dim=1)
    return PrototypeClassifier(prototypes(normalised, labels, ways))


class CosineClassifier(nn.Module):
    """Logits scale * cos(x, w_c) (Baseline++'s distLinear, its scale learned)."""

    def __init__(self, weight: torch.Tensor, scale: float = COSINE_SCALE) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (ways, D)
        self.scale = nn.Parameter(torch.tensor(float(scale), device=weight.device))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight, dim=1).T
        return self.scale * cosine


def _train(classifier: nn.Module, support: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
           decayed: list[nn.Parameter]) -> None:
    """`steps` full-batch SGD steps (Chen et al.'s momentum, dampening and weight decay, the
    decay on `decayed` only) on the support cross-entropy."""
    others = [p for p in classifier.parameters() if all(p is not d for d in decayed)]
    groups = [{"params": decayed, "weight_decay": WEIGHT_DECAY}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, dampening=DAMPENING)
    with torch.enable_grad():  # also under the evaluation's no_grad
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(classifier(support), labels).backward()
            optimizer.step()


class LinearClassifier(nn.Module):
    """Logits W x + b (built from given tensors: nn.Linear would draw its initial weights
    from the global RNG)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (ways, D)
        self.bias = nn.Parameter(bias)  # (ways,)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(embeddings.float(), self.weight, self.bias)


def fit_linear(support: torch.Tensor, labels: torch.Tensor, ways: int, steps: int = 100,
               lr: float = LR) -> LinearClassifier:
    """Baseline: a linear layer W x + b on the raw embeddings, from W = 0, b = 0, trained for
    `steps` full-batch SGD steps on the support set (Chen et al.: 100 epochs of batches of 4;
    full batches here, so that no random order is drawn; the rate: see LR). From zeros the first
    step gives W_c proportional to the mean of class c minus the mean of all: a prototype."""
    support = support.detach().float()
    classifier = LinearClassifier(support.new_zeros(ways, support.shape[1]), support.new_zeros(ways))
    _train(classifier, support, labels, steps, lr, decayed=list(classifier.parameters()))
    return classifier


def fit_cosine(support: torch.Tensor, labels: torch.Tensor, ways: int, steps: int = 100,
               lr: float = LR) -> CosineClassifier:
    """Baseline++: class weights imprinted with the means of the L2-normalised support
    embeddings (Qi et al., 2018; a zero weight has no direction), the scale from
    COSINE_SCALE, both trained for `steps` full-batch SGD steps as `fit_linear`."""
    support = support.detach().float()
    classifier = CosineClassifier(prototypes(F.normalize(support, dim=1), labels, ways))
    _train(classifier, support, labels, steps, lr, decayed=[classifier.weight])
    return classifier


class LogisticClassifier(nn.Module):
    """Logits W x / |x| + b, computed in float64 (the solver's precision), returned float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (ways, D) float64
        self.bias = nn.Parameter(bias)  # (ways,) float64

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        features = F.normalize(embeddings.to(self.weight.dtype), dim=1)
        return (features @ self.weight.T + self.bias).float()


def logistic_objective(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
                       labels: torch.Tensor, c: float) -> torch.Tensor:
    """sum_i CE(W x_i + b, y_i) + |W|^2 / (2 C): scikit-learn's multinomial objective
    C * sum_i CE + |W|^2 / 2 divided by C (same minimiser); the bias is not penalised."""
    logits = features @ weight.T + bias
    return F.cross_entropy(logits, labels, reduction="sum") + weight.pow(2).sum() / (2 * c)


def fit_logistic(support: torch.Tensor, labels: torch.Tensor, ways: int, c: float = 1.0,
                 max_iter: int = 1000, tolerance: float = 1e-10) -> LogisticClassifier:
    """RFS-simple: L2-regularised multinomial logistic regression on the L2-normalised support
    embeddings (C = 1 and no penalty on the bias: scikit-learn's defaults, which Tian et al.
    use), minimised with L-BFGS in float64 from zeros until the largest gradient entry is
    below `tolerance` (strictly convex in W; the bias is determined up to a common shift,
    which changes no prediction and no loss, and from zeros the solver never moves along it)."""
    features = F.normalize(support.detach().double(), dim=1)
    weight = torch.zeros(ways, features.shape[1], dtype=torch.float64, device=features.device,
                         requires_grad=True)
    bias = torch.zeros(ways, dtype=torch.float64, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(weight, bias, features, labels, c)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LogisticClassifier(weight.detach(), bias.detach())


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block. A head's tensors are tiny (ways x D):
    two threads spend their time at OpenMP barriers, and on a busy 2-core machine a 100-step
    linear head measured 3.3 s against 0.13 s on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit(head: str, support: torch.Tensor, labels: torch.Tensor, ways: int, steps: int = 100,
        lr: float = LR, c: float = 1.0) -> nn.Module:
    """The classifier of `head` (one of HEADS) fit on the support embeddings (n_s, D), on one
    thread (`one_thread`)."""
    fitters: dict[str, Callable[[], nn.Module]] = {
        "prototype": lambda: fit_prototype(support, labels, ways),
        "linear": lambda: fit_linear(support, labels, ways, steps, lr),
        "cosine": lambda: fit_cosine(support, labels, ways, steps, lr),
        "logistic": lambda: fit_logistic(support, labels, ways, c),
    }
    with one_thread():
        return fitters[head]()
