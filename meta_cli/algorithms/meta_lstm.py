"""Meta-LSTM (Ravi & Larochelle, 2017, "Optimization as a model for few-shot learning"): an
LSTM meta-learner that trains the learner in place of SGD.

The learner (backbone + linear head) has n parameters theta, flattened. The meta-learner's
cell state is theta itself (eq. 2 and the update rule of section 3.1):

    c_t = f_t * c_{t-1} + i_t * c~_t,   c_t = theta_t,   c~_t = -grad_{theta_{t-1}} L_t
    f_t = sigma(W_F [x_t, theta_{t-1}, f_{t-1}] + b_F)
    i_t = sigma(W_I [x_t, theta_{t-1}, i_{t-1}] + b_I)

coordinate by coordinate, with W_F, W_I, b_F, b_I shared by all n coordinates (section 3.2).
x_t is the preprocessed gradient and loss (Andrychowicz et al., 2016, section 3.2: a value v
becomes (log|v| / p, sign v) if |v| >= e^-p, else (-1, e^p v), p = 10), passed, as in the
paper's two-layer meta-learner, through a first, ordinary LSTM of `hidden` units per
coordinate (hidden=0: x_t is the four preprocessed values themselves). The learned initial
cell state c_0 is the learner's own parameters: the learner's initialisation is meta-learned.

Meta-training unrolls `steps` updates on the support set and backpropagates the query loss of
theta_T through them; the learner's gradients and losses enter as constants (the paper drops
their second derivatives). Batch norm as the paper's section 3.4 describes: batch statistics
on the support and on the query set in meta-training; at meta-test time running averages of
the support batches (kept for this episode only, erased after it) normalise the query.

A meta-batch of B episodes adapts B learners at once (backend=batched): their parameters are
one (B, n) tensor, the learner runs under torch.func's vmap (each episode its own batch
statistics), and the meta-learner updates all B * n coordinates in one call per inner step.
backend=loop adapts them one by one (the same meta-gradient). Meta-testing is per episode.
"""
from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any, Iterator, Literal

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from meta_cli.algorithms import vectorized
from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode
from meta_cli.errors import UserError
from meta_cli.params import Ge


def preprocess(values: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """(n,) -> (n, 2): (log|v| / p, sign v) where |v| >= e^-p, else (-1, e^p v)."""
    large = values.abs() >= math.exp(-p)
    scaled = torch.where(large, values.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(values, -1.0))
    sign = torch.where(large, values.sign(), values * math.exp(p))
    return torch.stack([scaled, sign], dim=-1)


@contextlib.contextmanager
def episode_statistics(model: nn.Module) -> Iterator[None]:
    """Inside: every batch-norm layer keeps a cumulative running average of the batches it
    normalises in training mode (the support set's, over the inner steps), and uses it in eval
    mode (the query). Outside, the layers are as before: the statistics live for one episode."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.track_running_stats, m.momentum, m.running_mean, m.running_var, m.num_batches_tracked))
            device = m.weight.device if m.affine else None
            m.track_running_stats, m.momentum = True, None  # momentum None: the plain mean of the batches
            m.running_mean = torch.zeros(m.num_features, device=device)
            m.running_var = torch.ones(m.num_features, device=device)
            m.num_batches_tracked = torch.zeros((), dtype=torch.long, device=device)
    try:
        yield
    finally:
        for m, track, momentum, mean, var, count in saved:
            m.track_running_stats, m.momentum = track, momentum
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


def gate(linear: nn.Linear, x: torch.Tensor, theta: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """sigma(W [x, theta, previous] + b) for every coordinate: x (..., n, k), theta and previous
    (..., n) -> (..., n); W is (1, k + 2), shared by the coordinates. Three terms rather than one (n, k + 2)
    concatenation, which costs as much again as the product on a large learner."""
    w = linear.weight[0]
    return torch.sigmoid(x @ w[:-2] + theta * w[-2] + previous * w[-1] + linear.bias)


def set_batch_norm_training(model: nn.Module, training: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(training)


class MetaLSTM(Algorithm):
    """Learner = backbone + linear head, its parameters the meta-learner's initial cell state;
    inner loop: `steps` meta-learner updates on the whole support set, from that state."""

    fixed_ways = True

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        steps: Annotated[int, Ge(1)] = 5,
        hidden: Annotated[int, Ge(0)] = 20,
        forget_bias: float = 5.0,
        input_bias: float = -4.5,
        max_learner_parameters: Annotated[int, Ge(1)] = 200_000,
        backend: Literal["batched", "loop"] = "batched",
    ) -> None:
        super().__init__(backbone, task, outputs)
        self.check(task, backend=backend)
        #: c_0: the learner's parameters are the learned initial cell state.
        self.learner = nn.Sequential(backbone, nn.Linear(backbone.out_features, outputs))
        self.shapes = {name: p.shape for name, p in self.learner.named_parameters()}
        size = sum(p.numel() for p in self.learner.parameters())
        if size > max_learner_parameters:
            raise UserError(f"algorithm=meta_lstm: the learner (backbone + head) has {size:,} parameters, more than "
                            f"the {max_learner_parameters:,} cells of the meta-learner's state "
                            f"(algorithm.max_learner_parameters); use a smaller backbone (e.g. backbone.hidden=32) "
                            f"or raise algorithm.max_learner_parameters={size}.")
        self.steps = steps
        #: The paper's first layer: an ordinary LSTM over the 4 preprocessed inputs of each coordinate.
        self.encoder = nn.LSTMCell(4, hidden) if hidden else None
        width = (hidden or 4) + 2  # [x_t, theta_{t-1}, previous gate]
        self.forget, self.input = nn.Linear(width, 1), nn.Linear(width, 1)
        for gate, bias in ((self.forget, forget_bias), (self.input, input_bias)):
            # Ravi & Larochelle: small weights, the forget gate near 1 and the input gate near 0
            # at the start (their biases U(4, 6) and U(-5, -4)), i.e. SGD with a small rate.
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.constant_(gate.bias, bias)
        #: batched: the B learners of a meta-batch adapted at once (`meta_batch_loss`); loop: one by
        #: one (`meta_objective`). The same meta-gradient (tests/test_model_based_batched.py).
        self.backend = backend
        # The learner's functional twin for vmap; not a registered submodule, so checkpoints are
        # the same whatever the backend.
        twin = None
        object.__setattr__(self, "_bf16_twin", None)
        if backend == "batched":
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in self.modules()):
                raise UserError("algorithm=meta_lstm with algorithm.backend=batched runs its learners under vmap, "
                                "which cannot update batch norm's running statistics; set "
                                "backbone.running_stats=false or algorithm.backend=loop.")
            try:
                # nn.BatchNorm2d itself: exact here (no second derivatives through the learner,
                # tests/test_model_based_batched.py) and faster than the primitive one under vmap;
                # under bf16 autocast its vmapped backward fails on the mixed dtypes, which the
                # primitive one takes.
                twin = vectorized.functional_twin(self.learner, primitive_norm=False)
                object.__setattr__(self, "_bf16_twin", vectorized.functional_twin(self.learner))
            except UserError as exc:  # dropout or running statistics: say which backend takes them
                raise UserError(f"algorithm=meta_lstm with algorithm.backend=batched runs its learners under vmap: "
                                f"{str(exc).split(';')[0]}; set algorithm.backend=loop for this backbone.") from exc
        object.__setattr__(self, "_twin", twin)

    @classmethod
    def check(cls, task: Task, backend: str = "batched", vmap_blocker: str | None = None, **config: Any) -> None:
        super().check(task)
        if backend == "batched" and vmap_blocker:
            raise UserError(f"algorithm=meta_lstm with algorithm.backend=batched runs its learners under vmap, "
                            f"which cannot take a backbone with {vmap_blocker}; or use algorithm.backend=loop.")

    def initial_state(self) -> torch.Tensor:
        """c_0 = theta_0 (n,): the learner's parameters, flattened; differentiable."""
        return torch.cat([p.flatten() for p in self.learner.parameters()])

    def parameters_of(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta (n,) -> the learner's parameters by name, as views."""
        sizes = [shape.numel() for shape in self.shapes.values()]
        return {name: chunk.view(shape) for (name, shape), chunk in zip(self.shapes.items(), theta.split(sizes))}

    def learner_output(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.learner, self.parameters_of(theta), (inputs,))

    def gradient(self, theta: torch.Tensor, support: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_t and grad L_t (n,) at theta_{t-1}, as constants: no second derivatives."""
        with torch.enable_grad():  # also when meta-testing under no_grad
            leaf = theta.detach().requires_grad_(True)
            loss = self.loss(self.learner_output(leaf, support), labels)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach().to(theta.dtype), grad.to(theta.dtype)

    def update(self, theta: torch.Tensor, gates: tuple[torch.Tensor, torch.Tensor], encoder: tuple | None,
               loss: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple | None]:
        """One meta-learner step for one learner or B at once. theta, grad (n,) or (B, n), gates
        (f_{t-1}, i_{t-1}) shaped as theta, loss () or (B,); encoder: the first layer's (h, c)
        (n, hidden) or (B * n, hidden) each, or None -> theta_t, (f_t, i_t), encoder."""
        x = torch.cat([preprocess(grad), preprocess(loss)[..., None, :].expand(*grad.shape, 2)], dim=-1)  # (..., n, 4)
        if self.encoder is not None:  # one LSTM call over every coordinate of every learner
            encoder = self.encoder(x.reshape(-1, 4), encoder)
            x = encoder[0].view(*grad.shape, -1)
        f = gate(self.forget, x, theta, gates[0])
        i = gate(self.input, x, theta, gates[1])
        return f * theta - i * grad, (f, i), encoder

    def adapt(self, support: torch.Tensor, labels: torch.Tensor,
              trace: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """theta_T (n,) after `steps` updates on the whole support set from theta_0. `trace`, if
        given, receives each step's gates (f_t, i_t), (n,) each (scripts/meta_lstm_gates.py)."""
        theta = self.initial_state()
        gates = (torch.zeros_like(theta), torch.zeros_like(theta))
        encoder = None
        for _ in range(self.steps):
            loss, grad = self.gradient(theta, support, labels)
            # float32 under train.precision=bf16: theta would lose its small updates in bfloat16.
            with full_precision(theta):
                theta, gates, encoder = self.update(theta, gates, encoder, loss, grad)
            if trace is not None:
                trace.append((gates[0].detach(), gates[1].detach()))
        return theta

    def twin(self, inputs: torch.Tensor) -> nn.Module:
        """The learner's functional twin for vmap: with the primitive batch norm under autocast."""
        return self._bf16_twin if torch.is_autocast_enabled(inputs.device.type) else self._twin

    def learner_outputs(self, thetas: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """B learners on their own inputs: thetas (B, n), inputs (B, N, ...) -> (B, N, outputs);
        batch norm with each episode's batch statistics."""
        twin = self.twin(inputs)
        return vmap(lambda theta, x: functional_call(twin, self.parameters_of(theta), (x,)))(thetas, inputs)

    def gradients(self, thetas: torch.Tensor, support: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_t (B,) and grad L_t (B, n) of B learners at theta_{t-1}, as constants."""
        twin = self.twin(support)

        def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss(functional_call(twin, self.parameters_of(theta), (x,)), y)

        grads, losses = vmap(grad_and_value(loss))(thetas.detach(), support, labels)
        return losses.detach().to(thetas.dtype), grads.detach().to(thetas.dtype)

    def meta_batch_loss(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """backend=batched: mean query loss and accuracy of a meta-batch; its B learners adapt
        together, `steps` meta-learner calls over all B * n coordinates."""
        batch = vectorized.stack(episodes)  # support (B, S, ...), query (B, Q, ...)
        theta = self.initial_state().expand(len(episodes), -1)  # (B, n): every learner from c_0
        gates = (torch.zeros_like(theta), torch.zeros_like(theta))
        encoder = None
        for _ in range(self.steps):
            loss, grad = self.gradients(theta, batch.support, batch.support_labels)
            with full_precision(theta):
                theta, gates, encoder = self.update(theta, gates, encoder, loss, grad)
        output = self.learner_outputs(theta, batch.query).flatten(0, 1)
        targets = batch.query_labels.flatten(0, 1)
        return self.loss(output, targets), self.accuracy(output, targets)

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, outputs): the adapted learner on the query set."""
        if training:  # batch statistics on both sets (section 3.4)
            return self.learner_output(self.adapt(episode.support, episode.support_labels), episode.query)
        with episode_statistics(self.learner):
            try:
                set_batch_norm_training(self.learner, True)  # the support batches, averaged
                theta = self.adapt(episode.support, episode.support_labels)
                set_batch_norm_training(self.learner, False)  # the query: the support's averages
                return self.learner_output(theta, episode.query)
            finally:
                set_batch_norm_training(self.learner, self.training)
