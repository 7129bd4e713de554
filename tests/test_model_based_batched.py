"""MANN and Meta-LSTM run a meta-batch as one batched computation (algorithm.backend=batched):
in float64 its meta-gradient is the episode-by-episode loop's, and MANN's test-time path gives
the outputs of the sequential reference below."""
import pytest
import torch
from torch import nn

from meta_cli.algorithms.mann import MANN, Memory, episode_generator
from meta_cli.algorithms.meta_lstm import MetaLSTM
from meta_cli.data.base import Episode
from meta_cli.models.conv4 import Conv4
from meta_cli.models.mlp import MLP


def _episodes(count: int, ways: int = 3, shots: int = 2, query: int = 2, regression: bool = False) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    if regression:
        return [Episode(torch.rand(shots, 1, generator=g, dtype=torch.float64),
                        torch.rand(shots, 1, generator=g, dtype=torch.float64),
                        torch.rand(query, 1, generator=g, dtype=torch.float64),
                        torch.rand(query, 1, generator=g, dtype=torch.float64)) for _ in range(count)]
    labels = torch.arange(ways)
    return [Episode(torch.rand(ways * shots, 1, 12, 12, generator=g, dtype=torch.float64), labels.repeat_interleave(shots),
                    torch.rand(ways * query, 1, 12, 12, generator=g, dtype=torch.float64), labels.repeat_interleave(query))
            for _ in range(count)]


def _meta_gradient(model: nn.Module, episodes: list[Episode]) -> tuple[list[torch.Tensor], float]:
    """The engine's Episodes regime: meta_batch_loss once when batched, else meta_objective per
    episode, each over the meta-batch size."""
    model.zero_grad()
    if model.batched:
        loss, _ = model.meta_batch_loss(episodes)
        loss.backward()
        total = loss.item()
    else:
        total = 0.0
        for episode in episodes:
            objective, loss, _ = model.meta_objective(episode)
            (objective / len(episodes)).backward()
            total += loss.item() / len(episodes)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()], total


def _both(make, episodes):
    torch.manual_seed(0)
    batched = make("batched").double()
    loop = make("loop").double()
    loop.load_state_dict(batched.state_dict())
    assert batched.batched and not loop.batched
    (ours, loss), (reference, reference_loss) = _meta_gradient(batched, episodes), _meta_gradient(loop, episodes)
    assert loss == pytest.approx(reference_loss, abs=1e-12)
    assert any(g.abs().sum() > 0 for g in reference)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("delayed", [True, False])
@pytest.mark.parametrize("inputs", ["backbone", "pixels"])
def test_mann_batched_meta_gradient_is_the_loops(delayed, inputs):
    _both(lambda backend: MANN(Conv4((1, 12, 12), hidden=4, layers=2, channels_last=False), "classification", 3,
                               controller=8, memory_slots=6, memory_width=3, read_heads=2, inputs=inputs,
                               delayed_labels=delayed, backend=backend), _episodes(3))


def test_mann_batched_regression_meta_gradient_is_the_loops():
    _both(lambda backend: MANN(MLP((1,), hidden=[8]), "regression", 1, controller=8, memory_slots=4,
                               memory_width=3, read_heads=1, backend=backend), _episodes(4, shots=3, regression=True))


@pytest.mark.parametrize("hidden", [0, 3])
def test_meta_lstm_batched_meta_gradient_is_the_loops(hidden):
    _both(lambda backend: MetaLSTM(Conv4((1, 12, 12), hidden=4, layers=2, channels_last=False), "classification", 3,
                                   steps=2, hidden=hidden, backend=backend), _episodes(3))


def test_meta_lstm_batched_regression_meta_gradient_is_the_loops():
    _both(lambda backend: MetaLSTM(MLP((1,), hidden=[8]), "regression", 1, steps=3, hidden=2, backend=backend),
          _episodes(4, shots=3, regression=True))


def _sequential_reference(model: MANN, episode: Episode, training: bool) -> torch.Tensor:
    """The per-episode MANN as it was before batching: one sequence, step by step, queries as
    one-step continuations of the final state."""
    support, query = model.embed(episode)
    labels = model.labels(episode.support_labels)
    if training:
        order = torch.randperm(len(support), generator=episode_generator(episode.support))
        support, labels = support[order], labels[order]
    controller, reads, memory = model.initial(1, support.device)
    null = torch.zeros(1, model.label_size, dtype=support.dtype)
    previous = null
    for t in range(len(support)):
        given = previous if model.delayed_labels else labels[t:t + 1]
        _, controller, reads, memory = model.step(support[t:t + 1], given, controller, reads, memory)
        previous = labels[t:t + 1]
    if model.delayed_labels:
        _, controller, reads, memory = model.step(torch.zeros_like(support[:1]), previous, controller, reads, memory)
    n = len(query)
    expand = lambda x: x.expand(n, *x.shape[1:])  # noqa: E731
    output, *_ = model.step(query, expand(null), tuple(map(expand, controller)), expand(reads),
                            Memory(*map(expand, memory)))
    return output[:, :episode.ways]


@pytest.mark.parametrize("training", [False, True])
def test_mann_query_logits_are_the_sequential_references(training):
    """Eval and predict call query_logits episode by episode: the batched code with B = 1 gives
    the sequential model's outputs, and each episode's rows of a batched run are its own."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = MANN(Conv4((1, 12, 12), hidden=4, layers=2, channels_last=False), "classification", 3, controller=8,
                     memory_slots=6, memory_width=3, read_heads=2)
        episodes = _episodes(3)
        with torch.no_grad():
            together = model.sequences(episodes, training=training)
            for episode, rows in zip(episodes, together):
                reference = _sequential_reference(model, episode, training)
                torch.testing.assert_close(model.query_logits(episode, training=training), reference, rtol=0, atol=1e-12)
                torch.testing.assert_close(rows, reference, rtol=0, atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


class Identity(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x):
        return x


@pytest.mark.parametrize("delayed", [True, False])
def test_mann_instance_logits_are_query_logits_of_each_prefix(delayed):
    """eval.protocol=instances: step t's prediction is the model's query output for x_t with the
    steps before it as the support, in their order (B sequences at once)."""
    torch.manual_seed(0)
    model = MANN(Identity(4), "classification", 3, controller=8, memory_slots=6, memory_width=3, read_heads=2,
                 delayed_labels=delayed).double().eval()
    images, labels = torch.randn(2, 7, 4, dtype=torch.float64), torch.tensor([[0, 1, 0, 2, 2, 1, 0], [2, 2, 1, 0, 1, 0, 2]])
    with torch.no_grad():
        logits = model.instance_logits(images, labels, 3)
        assert logits.shape == (2, 7, 3)
        for b in range(2):
            for t in range(1, 7):
                query = model.query_logits(Episode(images[b, :t], labels[b, :t], images[b, t:t + 1], labels[b, t:t + 1]))
                torch.testing.assert_close(logits[b, t, :query.shape[1]], query[0], rtol=0, atol=1e-12)


def test_instance_numbers_and_accuracy_by_hand():
    from meta_cli.evaluation.instances import accuracies, presentation_numbers

    labels = torch.tensor([[1, 0, 1, 1, 0, 0]])
    assert presentation_numbers(labels, 2).tolist() == [[1, 1, 2, 3, 2, 3]]
    predicted = torch.tensor([[0, 0, 1, 0, 0, 1]])  # right at steps 1, 2, 4
    logits = torch.nn.functional.one_hot(predicted, 2).double()
    # instance 1: steps 0 (wrong), 1 (right); 2: steps 2 (right), 4 (right); 3: steps 3, 5 (both wrong)
    assert accuracies(logits, labels, [1, 2, 3]).tolist() == [[0.5, 1.0, 0.0]]


@pytest.mark.parametrize("name", ["mann", "meta_lstm"])
def test_batched_meta_batch_runs_under_bf16_autocast(name):
    """train.precision=bf16: the batched path trains under autocast (Meta-LSTM's vmapped learners
    then use the primitive batch norm, whose backward takes the mixed dtypes)."""
    torch.manual_seed(0)
    body = Conv4((1, 12, 12), hidden=4, layers=2, channels_last=False)
    model = (MANN(body, "classification", 3, controller=8, memory_slots=6, memory_width=3) if name == "mann"
             else MetaLSTM(body, "classification", 3, steps=2, hidden=0))
    episodes = [Episode(e.support.float(), e.support_labels, e.query.float(), e.query_labels) for e in _episodes(3)]
    reference, _ = model.meta_batch_loss(episodes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.meta_batch_loss(episodes)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
