"""Memory-augmented neural network (Santoro et al., 2016, "One-shot learning with
memory-augmented neural networks"): an LSTM controller with an external memory, read by
content and written by least-recently-used access (LRUA).

An episode is one sequence; each step's input is [e(x_t), y_{t-1}, r_{t-1}]: the embedding of
the image (the backbone's, or the raw pixels), the label of the previous step (a one-hot for
classification; (target, 1) for regression, (0, 0) for none) and the previous read vectors.

    support:  (e(x_1), null) (e(x_2), y_1) ... (e(x_S), y_{S-1})
    closing:  (0, y_S)                        the last support label, as the paper's offset gives it
    query q:  (e(x_q), null)                  one step from the state after the closing step

delayed_labels=false drops the offset: each support step carries its own label, (e(x_t), y_t),
and there is no closing step. Support steps are never scored, so the delay is not needed to
keep labels from their own prediction; on a synthetic retrieval task it was what kept the
controller at chance here (docs/results.md).

Each query is one step from the same state, independently of the other queries (a batch of
Q one-step continuations), so its output depends neither on the other query images nor on
their order, and no label ever enters a query step. The query steps' outputs are the logits.
The memory is empty at the start of every episode.

In meta-training the support steps are shuffled (the episode gives them class-major, which
would tell the controller the labels by position), with a permutation drawn from a
torch.Generator seeded by the episode's own pixel values, so a training step is a
deterministic function of the episode and the weights. At test time the given order is used.

A meta-batch of B episodes (same ways, shots and query) runs as one batch of B sequences
(backend=batched): memories (B, N, W), usage and least-used weights per episode, one controller
step and one memory read/write per time step for all B; the loop over time steps is the only
one. backend=loop runs the episodes one by one (the same meta-gradient).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.base import Algorithm, Task, full_precision
from meta_cli.data.base import Episode
from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt


class Memory(NamedTuple):
    """The memory's state after step t. B: sequences, H: read heads, N: slots, W: slot width."""

    memory: torch.Tensor  # (B, N, W) M_t
    read_weights: torch.Tensor  # (B, H, N) w^r_t
    usage: torch.Tensor  # (B, N) w^u_t
    least_used: torch.Tensor  # (B, H, N) w^lu_t: head h -> the h-th least-used slot


def least_used(usage: torch.Tensor, heads: int) -> torch.Tensor:
    """usage (B, N) -> (B, H, N): one-hot of the `heads` least-used slots, the h-th least for
    head h (ties: the lower slot first). Summed over heads this is the paper's w^lu_t:
    1 where w^u_t(i) <= m(w^u_t, n), the n-th smallest usage with n = heads, else 0."""
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :heads]
    return F.one_hot(order, usage.shape[-1]).to(usage.dtype)


def cosine(keys: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """K(k, M(i)) = k . M(i) / (||k|| ||M(i)||): keys (B, H, W), memory (B, N, W) -> (B, H, N);
    0 for an empty (zero) slot."""
    return F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)


def memory_step(state: Memory, keys: torch.Tensor, gates: torch.Tensor, gamma: float,
                strength: float = 1.0) -> tuple[Memory, torch.Tensor]:
    """One LRUA write and content read (Santoro et al., sections 3.1-3.2). keys (B, H, W) are
    k_t = tanh(W_k h_t), gates (B, H) are sigma(alpha_t); returns the new state and the read
    vectors r_t (B, H, W).

        w^w_t   = sigma(alpha) w^r_{t-1} + (1 - sigma(alpha)) w^lu_{t-1}
        M_t(i)  = M_{t-1}(i) + sum_h w^w_t(h, i) k_t(h)     after zeroing the least-used slots of t-1
        w^r_t   = softmax_i beta K(k_t, M_t(i));   r_t = sum_i w^r_t(i) M_t(i)
        w^u_t   = gamma w^u_{t-1} + sum_h (w^r_t(h) + w^w_t(h))
        w^lu_t  = the least-used slots of w^u_t

    beta = `strength`; the paper's equation has none (beta = 1).
    """
    write_weights = gates[..., None] * state.read_weights + (1 - gates[..., None]) * state.least_used
    kept = 1 - state.least_used.sum(dim=1).clamp_max(1)  # (B, N): the paper zeroes M(lu) first
    memory = state.memory * kept[..., None] + write_weights.transpose(1, 2) @ keys
    read_weights = torch.softmax(strength * cosine(keys, memory), dim=-1)
    reads = read_weights @ memory
    usage = gamma * state.usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    return Memory(memory, read_weights, usage, least_used(usage, keys.shape[1])), reads


def episode_generator(values: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by the episode's values: an exact integer sum (any thread count,
    any process) of the values rounded to 1/1024, so the same episode gives the same order."""
    seed = int((values.detach().float() * 1024).round().to(torch.int64).sum().item())
    return torch.Generator().manual_seed(seed % (2**63))


class MANN(Algorithm):
    """Embedding (backbone or pixels) -> LSTM controller with LRUA memory -> linear output
    o_t = W_o [h_t, r_t] ((max_ways) logits, or 1 output for regression). Keys k_t = tanh(W_k h_t)
    and write gates sigma(alpha_t) = sigma(W_a h_t) per head, from the controller.

    Classification with up to `max_ways` classes: the one-hot label input and the output are
    that wide; episodes with fewer ways use the first outputs, more ways are refused.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: Task,
        outputs: int,
        controller: Annotated[int, Ge(1)] = 200,
        memory_slots: Annotated[int, Ge(1)] = 128,
        memory_width: Annotated[int, Ge(1)] = 40,
        read_heads: Annotated[int, Ge(1)] = 4,
        gamma: Annotated[float, Ge(0)] = 0.95,
        inputs: Literal["backbone", "pixels"] = "backbone",
        max_ways: Annotated[int, Ge(2)] | None = None,
        key_strength: Annotated[float, Gt(0)] = 1.0,
        delayed_labels: bool = True,
        backend: Literal["batched", "loop"] = "batched",
    ) -> None:
        super().__init__(backbone, task, outputs)
        if read_heads > memory_slots:
            raise UserError(f"algorithm.read_heads={read_heads} exceeds algorithm.memory_slots={memory_slots}: "
                            f"each head writes to a slot of its own; lower read_heads or raise memory_slots.")
        self.classification = task == "classification"
        self.max_ways = (max_ways or outputs) if self.classification else 1
        self.inputs = inputs
        if inputs == "backbone":
            self.backbone = backbone
            features = backbone.out_features
        else:  # raw pixels (Santoro et al.); the backbone is not used and not saved
            features = math.prod(backbone.input_shape)
        self.features = features
        self.label_size = self.max_ways if self.classification else 2
        self.heads, self.slots, self.width, self.gamma = read_heads, memory_slots, memory_width, gamma
        self.key_strength = key_strength
        self.delayed_labels = delayed_labels
        self.controller = nn.LSTMCell(features + self.label_size + read_heads * memory_width, controller)
        self.keys = nn.Linear(controller, read_heads * memory_width)
        self.gates = nn.Linear(controller, read_heads)
        self.output = nn.Linear(controller + read_heads * memory_width, self.max_ways if self.classification else 1)
        #: batched: a meta-batch as one batch of B sequences (`meta_batch_loss`); loop: episode by
        #: episode (`meta_objective`). The same meta-gradient (tests/test_model_based_batched.py).
        self.backend = backend

    @classmethod
    def check_ways(cls, ways: int, key: str, outputs: int, max_ways: int | None = None, **config: Any) -> None:
        limit = max_ways or outputs
        if ways > limit:
            raise UserError(f"{ways} ways ({key}) are more than the {limit} this MANN was built for "
                            f"(its one-hot label input and output have {limit} entries); use at most "
                            f"{limit}, or train with algorithm.max_ways={ways}.")

    @property
    def dtype(self) -> torch.dtype:
        """The sequence's floating type: the weights' (float32; float64 after .double())."""
        return self.output.weight.dtype

    def embed(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_support, F) and (n_query, F) step inputs: one backbone pass over both sets (batch
        norm sees both, as in ProtoNet), or the flattened pixels."""
        images = torch.cat([episode.support, episode.query])
        embedded = self.backbone(images) if self.inputs == "backbone" else images.flatten(1)
        embedded = embedded.to(self.dtype)  # float32 from bf16 autocast: the sequence runs in full precision
        return embedded.split([len(episode.support), len(episode.query)])

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """Label inputs of the support steps: (S, max_ways) one-hot, or (S, 2) [target, 1]."""
        if self.classification:
            return F.one_hot(targets, self.max_ways).to(self.dtype)
        return torch.cat([targets.to(self.dtype), torch.ones_like(targets, dtype=self.dtype)], dim=1)

    def initial(self, batch: int, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, Memory]:
        """Controller (h, c), reads r_0 (B, H*W) and an empty memory: wiped for every episode."""
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=self.dtype)  # noqa: E731
        usage = zeros(batch, self.slots)
        memory = Memory(zeros(batch, self.slots, self.width), zeros(batch, self.heads, self.slots), usage,
                        least_used(usage, self.heads))
        hidden = self.controller.hidden_size
        return (zeros(batch, hidden), zeros(batch, hidden)), zeros(batch, self.heads * self.width), memory

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, controller: tuple[torch.Tensor, torch.Tensor],
             reads: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor, Memory]:
        """One time step for B sequences: inputs (B, F), labels (B, label_size) -> output
        (B, outputs) and the new controller state, reads (B, H*W) and memory."""
        h, c = self.controller(torch.cat([inputs, labels, reads], dim=1), controller)
        keys = torch.tanh(self.keys(h)).view(-1, self.heads, self.width)
        memory, read = memory_step(memory, keys, torch.sigmoid(self.gates(h)), self.gamma, self.key_strength)
        reads = read.flatten(1)
        return self.output(torch.cat([h, reads], dim=1)), (h, c), reads, memory

    def embed_all(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
        """Step inputs of B same-shaped episodes: support (B, n_support, F), query (B, n_query, F).
        The backbone runs episode by episode, so that its batch norm sees one episode as in
        `embed`: on a CPU, B passes measured faster than one pass with per-episode statistics
        (under vmap or as block statistics, docs/benchmarks.md); the sequence is batched."""
        if self.inputs == "pixels":
            images = torch.stack([torch.cat([e.support, e.query]) for e in episodes])
            embedded = images.flatten(2).to(self.dtype)
            return embedded.split([len(episodes[0].support), len(episodes[0].query)], dim=1)
        support, query = zip(*(self.embed(e) for e in episodes))
        return torch.stack(support), torch.stack(query)

    def sequences(self, episodes: list[Episode], training: bool = False) -> torch.Tensor:
        """B same-shaped episodes as one batch of B sequences -> (B, n_query, ways) logits, or
        (B, n_query, 1) for regression. Each sequence has its own memory and least-used
        weights; one controller step and one memory read/write per time step serves all B."""
        ways = episodes[0].ways
        if self.classification:
            self.check_ways(ways, "the support set's classes", self.max_ways)
        support, query = self.embed_all(episodes)  # (B, S, F), (B, Q, F)
        with full_precision(support):
            labels = torch.stack([self.labels(e.support_labels) for e in episodes])  # (B, S, L)
            if training:  # each episode's own order, drawn from its own values
                order = torch.stack([torch.randperm(support.shape[1], generator=episode_generator(e.support))
                                     for e in episodes]).to(support.device)
                rows = torch.arange(len(episodes), device=support.device)[:, None]
                support, labels = support[rows, order], labels[rows, order]
            batch, device = len(episodes), support.device
            controller, reads, memory = self.initial(batch, device)
            null = torch.zeros(batch, self.label_size, device=device, dtype=self.dtype)
            previous = null
            for t in range(support.shape[1]):
                given = previous if self.delayed_labels else labels[:, t]
                _, controller, reads, memory = self.step(support[:, t], given, controller, reads, memory)
                previous = labels[:, t]
            if self.delayed_labels:  # the closing step: the last support label, no image
                _, controller, reads, memory = self.step(torch.zeros_like(support[:, 0]), previous, controller,
                                                         reads, memory)
            # Each query is one step from its episode's state: B * Q one-step continuations.
            n = query.shape[1]
            expand = lambda x: x[:, None].expand(batch, n, *x.shape[1:]).flatten(0, 1)  # noqa: E731
            output, *_ = self.step(query.flatten(0, 1), expand(null), tuple(map(expand, controller)), expand(reads),
                                   Memory(*map(expand, memory)))
        return output.view(batch, n, -1)[..., :ways] if self.classification else output.view(batch, n, -1)

    def query_logits(self, episode: Episode, training: bool = False) -> torch.Tensor:
        """(n_query, ways) logits (the first `ways` outputs), or (n_query, 1) for regression."""
        return self.sequences([episode], training)[0]

    def meta_batch_loss(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """backend=batched: mean query loss and accuracy of a meta-batch run as one batch of
        sequences (the mean over all queries is the mean of the episodes' means: every episode
        of a meta-batch has the same number of queries)."""
        output = self.sequences(episodes, training=True).flatten(0, 1)
        targets = torch.cat([e.query_labels for e in episodes])
        return self.loss(output, targets), self.accuracy(output, targets)

    def instance_logits(self, images: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
        """Santoro et al.'s protocol (eval.protocol=instances): B labelled sequences, images
        (B, T, ...) with labels (B, T) in 0..ways-1 -> (B, T, ways) logits, step t's predicted
        from the steps before it alone: the query output of `query_logits` for x_t with
        x_1..x_{t-1} as the support, in their order. One pass over the sequence: from the
        state after step t-1, the step that stores x_t and the branch that predicts it run as
        one batch of 2B. Delayed labels: stored (x_t, y_{t-1}); branch (0, y_{t-1}) then the
        query (x_t, null). Not delayed: stored (x_t, y_t); branch the query (x_t, null).
        The backbone embeds each sequence's T images in one pass."""
        self.check_ways(ways, "eval.ways", self.max_ways)
        batch, steps = labels.shape
        if self.inputs == "backbone":
            embedded = torch.stack([self.backbone(sequence) for sequence in images]).to(self.dtype)
        else:
            embedded = images.flatten(2).to(self.dtype)
        with full_precision(embedded):
            given = self.labels(labels.flatten()).view(batch, steps, -1)
            controller, reads, memory = self.initial(batch, embedded.device)
            null = torch.zeros(batch, self.label_size, device=embedded.device, dtype=self.dtype)
            previous, outputs = null, []
            twice = lambda x: torch.cat([x, x])  # noqa: E731
            half = lambda x, i: x[i * batch:(i + 1) * batch]  # noqa: E731
            for t in range(steps):
                x = embedded[:, t]
                state = (tuple(map(twice, controller)), twice(reads), Memory(*map(twice, memory)))
                if self.delayed_labels:  # rows: stored, branch
                    _, both_c, both_r, both_m = self.step(torch.cat([x, torch.zeros_like(x)]), twice(previous), *state)
                    output, *_ = self.step(x, null, tuple(half(v, 1) for v in both_c), half(both_r, 1),
                                           Memory(*(half(v, 1) for v in both_m)))
                    kept = 0
                else:  # rows: query, stored
                    both_o, both_c, both_r, both_m = self.step(twice(x), torch.cat([null, given[:, t]]), *state)
                    output, kept = half(both_o, 0), 1
                controller = tuple(half(v, kept) for v in both_c)
                reads, memory = half(both_r, kept), Memory(*(half(v, kept) for v in both_m))
                previous = given[:, t]
                outputs.append(output[:, :ways])
        return torch.stack(outputs, dim=1)
