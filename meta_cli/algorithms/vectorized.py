"""MAML's meta-batch as one vectorised computation (`algorithm.backend=vmap`).

learn2learn runs the tasks of a meta-batch one by one: clone, adapt, query loss, backward.
Here the whole inner loop is a pure function of the parameters, written with `torch.func`
(`functional_call`, `grad`) and mapped over the tasks with `vmap`, so every convolution runs
once for all tasks of the meta-batch (PyTorch lowers a vmapped conv to a grouped conv). The
outer (meta) gradient comes from ordinary autograd through that function: second order
unless `first_order`, exactly the learn2learn meta-gradient (tests/test_vectorized.py checks
it in float64 for every backbone).

Batch norm: `nn.BatchNorm2d` under vmap gives silently wrong second-order gradients
(functorch issue #534), so the functional twin of the model uses a batch norm written from
primitive ops, which is exact.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from meta_cli.data.base import Episode
from meta_cli.errors import UserError

MetaBatch = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


class PrimitiveBatchNorm2d(nn.Module):
    """Batch statistics only (as meta_cli's Conv-4), from mean/var/rsqrt; same parameter
    names as nn.BatchNorm2d, so the model's own parameters plug in by name."""

    def __init__(self, source: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = source.eps
        self.weight = source.weight
        self.bias = source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-channel scale and shift first: two full-size elementwise ops instead of five,
        # which matters because these tensors hold every task of the meta-batch.
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is None:
            return (x - mean) * scale
        scale = scale * self.weight[None, :, None, None]
        return x * scale + (self.bias[None, :, None, None] - mean * scale)


def functional_twin(model: nn.Module, primitive_norm: bool = True) -> nn.Module:
    """A copy of `model` to run with functional_call; its own weights are never used."""
    dropout = [name for name, m in model.named_modules()
               if (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or getattr(m, "drop_rate", 0) > 0]
    if dropout:  # random ops under vmap need per-task randomness it cannot give DropBlock
        raise UserError(f"algorithm.backend=vmap does not support dropout (module {dropout[0]}); set the "
                        f"backbone's dropout options to 0 or use algorithm.backend=l2l.")
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if getattr(module, "channels_last", False):
            # Under vmap the layout change buys nothing (measured) and the batched tensor is 5-D.
            module.channels_last = False
    if primitive_norm:
        for parent in twin.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    if child.track_running_stats:
                        raise UserError("algorithm.backend=vmap needs batch norm without running statistics: "
                                        "set backbone.running_stats=false (resnet12, wrn28) or use algorithm.backend=l2l.")
                    setattr(parent, name, PrimitiveBatchNorm2d(child))
    return twin


def stack(episodes: list[Episode]) -> Episode:
    """T episodes of one shape -> one Episode whose tensors have a leading task axis T."""
    return Episode(*(torch.stack([getattr(e, f) for e in episodes])
                     for f in ("support", "support_labels", "query", "query_labels")))


def maml_meta_batch(model: nn.Module, twin: nn.Module, episodes: Episode, fast_lr: float, steps: int,
                    first_order: bool, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    classification: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean query loss (differentiable w.r.t. `model`'s parameters) and mean query accuracy
    of a meta-batch: episodes.support (T, ways * shots, ...), episodes.query (T, n_query, ...)."""
    params = dict(model.named_parameters())

    def support_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(twin, p, (x,)), y)

    def task(p: dict[str, torch.Tensor], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
             qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(steps):
            g = grad(support_loss)(p, sx, sy)
            p = {k: p[k] - fast_lr * (g[k].detach() if first_order else g[k]) for k in p}
        out = functional_call(twin, p, (qx,))
        correct = (out.argmax(dim=1) == qy).float().mean() if classification else out.new_zeros(())
        return loss_fn(out, qy), correct

    losses, accuracies = vmap(task, in_dims=(None, 0, 0, 0, 0))(
        params, episodes.support, episodes.support_labels, episodes.query, episodes.query_labels)
    return losses.mean(), (accuracies.mean() if classification else None)


def compiled(function: MetaBatch) -> MetaBatch:
    """`function` through torch.compile (inductor): the element-wise work of batch norm, ReLU
    and their second-order terms fused into fewer passes over the meta-batch, which is most of
    the vmapped step on a CPU (docs/benchmarks.md). Compiles on the first call (about a minute
    for the Omniglot Conv-4), and again only if the shapes change. A failed compilation (no C++
    compiler, an unsupported op) stops with one line instead of inductor's traceback."""
    import torch._dynamo.exc as dynamo_errors  # imported here: loading dynamo costs ~1 s

    # Dynamo keys its cache on the function's code, shared by every model: after 8 models of
    # different shapes (a sweep's jobs in one process) it stops compiling and runs eager code
    # with one warning (measured). Each job trains one model, so it starts from an empty cache;
    # a repeat of the same shapes then compiles from inductor's disk cache in seconds.
    torch._dynamo.reset()
    fast = torch.compile(function, dynamic=False)

    def call(*args, **kwargs):
        try:
            return fast(*args, **kwargs)
        except (dynamo_errors.BackendCompilerFailed, dynamo_errors.InternalTorchDynamoError,
                dynamo_errors.Unsupported) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"algorithm.compile=true: torch.compile failed ({first[:200]}); "
                            f"set algorithm.compile=false.") from exc
    return call
