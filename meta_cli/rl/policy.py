"""The Gaussian MLP policy of the MAML paper: mean = MLP(observation), a learned log-std."""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn
from torch.distributions import Normal

Activation = Literal["tanh", "relu"]
#: Floor on the standard deviation (rllab's min_std): a collapsing std would make log-probs
#: and the inner-loop gradient blow up.
MIN_LOG_STD = math.log(1e-6)


class GaussianMLP(nn.Module):
    """pi(a | s) = N(mean(s), diag(exp(log_std))^2).

    `forward(obs)` takes (..., observation_dim) and returns a `Normal` over (..., action_dim);
    `log_prob(dist, actions)` sums over the action dimensions, giving (...).
    """

    def __init__(self, observation_dim: int, action_dim: int, hidden: Sequence[int] = (100, 100),
                 activation: Activation = "tanh", init_std: float = 1.0) -> None:
        super().__init__()
        widths = [observation_dim, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        layers.append(nn.Linear(widths[-1], action_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.activation = activation

    def forward(self, obs: torch.Tensor) -> Normal:
        return Normal(self.mean(obs), self.log_std.clamp(min=MIN_LOG_STD).exp(), validate_args=False)

    @staticmethod
    def log_prob(dist: Normal, actions: torch.Tensor) -> torch.Tensor:
        """(...) log-density of (..., action_dim) actions."""
        return dist.log_prob(actions).sum(-1)

    @staticmethod
    def kl(old: Normal, new: Normal) -> torch.Tensor:
        """(...) KL(old || new), summed over the action dimensions."""
        return torch.distributions.kl_divergence(old, new).sum(-1)

    def parameter_dict(self, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """{name: tensor} of `module` (default: this policy) under this policy's names, e.g.
        "mean.0.weight", also for a learn2learn clone whose weights are non-leaf tensors."""
        named = dict((module or self).named_parameters())
        # "module." inside a learn2learn wrapper, "" for a plain policy.
        prefix = next(k for k in named if k.endswith("log_std")).removesuffix("log_std")
        return {name: named[prefix + name] for name, _ in self.named_parameters()}

    def functional(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> Normal:
        """This architecture with G stacked weight sets: `params[name]` is (G, *shape) and obs
        (G, m, observation_dim); returns a Normal over (G, m, action_dim). Task g's actions use
        weights g only, in one batched pass (torch.baddbmm) for all tasks."""
        h = obs
        for i, layer in enumerate(self.mean):
            if isinstance(layer, nn.Linear):
                weight, bias = params[f"mean.{i}.weight"], params[f"mean.{i}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            else:
                h = layer(h)
        std = params["log_std"].clamp(min=MIN_LOG_STD).exp().unsqueeze(1)
        return Normal(h, std.expand_as(h), validate_args=False)

    def stack(self, policies: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
        """The weights of G policies of this architecture (e.g. G adapted learn2learn clones)
        as `functional`'s {name: (G, *shape)}."""
        named = [self.parameter_dict(p) for p in policies]
        return {name: torch.stack([n[name] for n in named]) for name in named[0]}
