"""Siamese, MANN and Meta-LSTM against cases computed here by hand."""
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from meta_cli.algorithms.mann import MANN, Memory, least_used, memory_step
from meta_cli.algorithms.meta_lstm import MetaLSTM, preprocess
from meta_cli.algorithms.siamese import Siamese
from meta_cli.data.base import Episode
from meta_cli.errors import UserError
from meta_cli.models.conv4 import Conv4
from meta_cli.models.mlp import MLP


class Identity(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x):
        return x


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --- Siamese ---------------------------------------------------------------------------------

def _siamese(alpha, bias):
    algo = Siamese(Identity(2), "classification", 2)
    with torch.no_grad():
        algo.head.weight.copy_(torch.tensor([alpha]))
        algo.head.bias.fill_(bias)
    return algo


def test_siamese_pair_loss_is_balanced_bce_over_all_pairs_by_hand():
    """Images (embeddings) a=(0,0) b=(1,1) [support, classes 0, 1], c=(0,1) d=(1,0) [query,
    classes 0, 1]; z = 1*|dx| + 2*|dy| - 1. Same pairs: (a,c), (b,d); different: (a,b), (a,d),
    (b,c), (c,d). Loss = 1/2 mean_same -log sigma(z) + 1/2 mean_diff -log(1 - sigma(z))."""
    algo = _siamese([1.0, 2.0], -1.0)
    episode = Episode(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]),
                      torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    z = lambda p, q: abs(p[0] - q[0]) + 2 * abs(p[1] - q[1]) - 1  # noqa: E731
    a, b, c, d = (0, 0), (1, 1), (0, 1), (1, 0)
    same = [z(a, c), z(b, d)]  # 1, 1
    different = [z(a, b), z(a, d), z(b, c), z(c, d)]  # 2, 0, 0, 2
    expected = 0.5 * np.mean([-np.log(sigmoid(v)) for v in same]) + \
        0.5 * np.mean([-np.log(1 - sigmoid(v)) for v in different])
    objective, loss, accuracy = algo.meta_objective(episode)
    assert objective.item() == pytest.approx(expected, rel=1e-6)
    assert loss is objective
    # The query accuracy reported beside it: c is closer to b (z=0) than to a (z=1)?  p(c,a) = sigma(1)
    # > p(c,b) = sigma(0): class 0, right; d: p(d,a) = sigma(0) < p(d,b) = sigma(1): class 1, right.
    assert accuracy.item() == 1.0
    objective.backward()
    assert algo.head.weight.grad is not None


def test_siamese_scores_are_the_log_mean_same_probability_per_class():
    """2-way 2-shot. With z = -|dx| - |dy| + 3 (same-ness falls with distance), the query (0, 0) has
    class 0 support at distance 0 and 6 (p = sigma(3), sigma(-3)) and class 1 support at distance 1
    and 1 (p = sigma(2) twice). The nearest support image is class 0's, the highest *mean* probability
    is class 1's: Koch's averaged decision picks class 1."""
    algo = _siamese([-1.0, -1.0], 3.0)
    support = torch.tensor([[0.0, 0.0], [3.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    episode = Episode(support, torch.tensor([0, 0, 1, 1]), torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    logits = algo.query_logits(episode)
    expected = np.log([[np.mean([sigmoid(3), sigmoid(-3)]), np.mean([sigmoid(2), sigmoid(2)])]])
    assert np.allclose(logits.detach().numpy(), expected, atol=1e-6)
    assert logits.argmax(1).item() == 1
    loss, accuracy = algo.episode_loss(episode, training=False)
    assert accuracy.item() == 1.0
    assert loss.item() == pytest.approx(-np.log(np.exp(expected[0, 1]) / np.exp(expected).sum()), rel=1e-6)


def test_siamese_refuses_regression():
    with pytest.raises(UserError, match="does only classification"):
        Siamese(Identity(1), "regression", 1)


# --- MANN ------------------------------------------------------------------------------------

def test_mann_least_used_weights():
    usage = torch.tensor([[0.3, 0.1, 0.2], [0.0, 0.0, 0.0]])
    one = least_used(usage, 1)
    assert one.tolist() == [[[0, 1, 0]], [[1, 0, 0]]]  # the smallest; a tie: the lower slot
    two = least_used(usage, 2)
    assert two.tolist() == [[[0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 1, 0]]]  # head h: the h-th smallest


def test_mann_memory_step_on_two_slots_by_hand():
    """One head, slots M(0)=(1,0), M(1)=(0,1); previous read weights (0.7, 0.3), previous usage
    (0.9, 0.2), so slot 1 is least used; key k=(0.6, 0.8), sigma(alpha)=0.25, gamma=0.95.

    w^w = 0.25 (0.7, 0.3) + 0.75 (0, 1) = (0.175, 0.825); slot 1 zeroed, then M += w^w k:
    M(0) = (1 + 0.175*0.6, 0.175*0.8) = (1.105, 0.14), M(1) = 0.825 k = (0.495, 0.66).
    K(k, M(0)) = (0.663 + 0.112) / |M(0)|, K(k, M(1)) = 1; w^r = softmax of these;
    r = w^r M; w^u = 0.95 (0.9, 0.2) + w^r + w^w."""
    state = Memory(memory=torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), read_weights=torch.tensor([[[0.7, 0.3]]]),
                   usage=torch.tensor([[0.9, 0.2]]), least_used=torch.tensor([[[0.0, 1.0]]]))
    new, reads = memory_step(state, torch.tensor([[[0.6, 0.8]]]), torch.tensor([[0.25]]), gamma=0.95)
    write = np.array([0.175, 0.825])
    memory = np.array([[1.105, 0.14], [0.495, 0.66]])
    cos0 = 0.775 / math.sqrt(1.105**2 + 0.14**2)
    read = np.exp([cos0, 1.0]) / np.exp([cos0, 1.0]).sum()
    usage = 0.95 * np.array([0.9, 0.2]) + read + write
    assert np.allclose(new.memory[0].numpy(), memory, atol=1e-6)
    assert np.allclose(new.read_weights[0, 0].numpy(), read, atol=1e-6)
    assert np.allclose(reads[0, 0].numpy(), read @ memory, atol=1e-6)
    assert np.allclose(new.usage[0].numpy(), usage, atol=1e-6)
    assert new.least_used[0, 0].tolist() == ([1.0, 0.0] if usage[0] < usage[1] else [0.0, 1.0])
    # A key strength beta multiplies the cosines inside the read softmax (beta = 1: the paper's).
    sharp, _ = memory_step(state, torch.tensor([[[0.6, 0.8]]]), torch.tensor([[0.25]]), gamma=0.95, strength=3.0)
    assert np.allclose(sharp.read_weights[0, 0].numpy(), np.exp([3 * cos0, 3.0]) / np.exp([3 * cos0, 3.0]).sum(), atol=1e-6)


def _mann_episode(ways=3, query_per_class=2):
    torch.manual_seed(0)
    support = torch.randn(ways, 4)
    query = support.repeat_interleave(query_per_class, 0) + 0.1 * torch.randn(ways * query_per_class, 4)
    return Episode(support, torch.arange(ways), query, torch.arange(ways).repeat_interleave(query_per_class))


@pytest.mark.parametrize("delayed", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_mann_no_label_reaches_a_query_step(training, delayed):
    """The controller's inputs, step by step. Delayed (the paper): support steps carry the previous
    support label (none for the first), a closing step carries the last support label and no
    image. Not delayed: each support step carries its own label. Either way the query steps carry
    no label at all, and the query labels never matter."""
    torch.manual_seed(0)
    algo = MANN(Identity(4), "classification", 3, controller=8, memory_slots=5, memory_width=3, read_heads=2,
                delayed_labels=delayed)
    calls = []
    algo.controller.register_forward_hook(lambda m, args, out: calls.append(args[0].detach().clone()))
    episode = _mann_episode()
    logits = algo.query_logits(episode, training=training)
    assert logits.shape == (6, 3)
    *steps, queries = calls
    images, labels = slice(0, 4), slice(4, 7)
    assert len(steps) == (4 if delayed else 3) and queries.shape[0] == 6
    assert torch.equal(queries[:, labels], torch.zeros(6, 3))  # no label at any query step
    assert torch.equal(queries[:, images], episode.query)
    support_steps = steps[:3]
    shown = [next(i for i in range(3) if torch.equal(step[0, images], episode.support[i])) for step in support_steps]
    if delayed:
        closing = steps[3]
        assert torch.equal(support_steps[0][:, labels], torch.zeros(1, 3))
        seen = [int(step[0, labels].argmax()) for step in support_steps[1:]] + [int(closing[0, labels].argmax())]
        assert seen == shown  # each label arrives one step after its image (Santoro et al.'s offset)
        assert torch.equal(closing[:, images], torch.zeros(1, 4))
    else:
        assert [int(step[0, labels].argmax()) for step in support_steps] == shown
        assert all(step[0, labels].sum() == 1 for step in support_steps)
    if not training:
        assert shown == [0, 1, 2]  # the given order at test time
    # Query labels are never read; memory starts empty in every episode (the same output twice).
    other = Episode(episode.support, episode.support_labels, episode.query, torch.zeros(6, dtype=torch.long))
    assert torch.equal(algo.query_logits(other, training=training), logits)
    # Each query is its own step from the same state: one query alone gives its row.
    alone = Episode(episode.support, episode.support_labels, episode.query[3:4], episode.query_labels[3:4])
    assert torch.allclose(algo.query_logits(alone, training=training), logits[3:4], atol=1e-6)


def test_mann_training_order_is_a_function_of_the_episode():
    """The support order in meta-training is drawn from the episode's values, not a global RNG."""
    algo = MANN(Identity(4), "classification", 3, controller=8, memory_slots=5, memory_width=3, read_heads=1)
    episode = _mann_episode()
    torch.manual_seed(1)
    first = algo.meta_objective(episode)[0]
    torch.manual_seed(2)
    assert torch.equal(algo.meta_objective(episode)[0], first)


def test_mann_regression_label_input_is_the_previous_target():
    algo = MANN(Identity(1), "regression", 1, controller=8, memory_slots=4, memory_width=3, read_heads=1)
    calls = []
    algo.controller.register_forward_hook(lambda m, args, out: calls.append(args[0].detach().clone()))
    episode = Episode(torch.tensor([[1.0], [2.0]]), torch.tensor([[5.0], [7.0]]), torch.tensor([[3.0]]), torch.tensor([[9.0]]))
    assert algo.query_logits(episode).shape == (1, 1)
    labels = [step[0, 1:3].tolist() for step in calls]
    assert labels == [[0.0, 0.0], [5.0, 1.0], [7.0, 1.0], [0.0, 0.0]]  # (target, present) of the step before


def test_mann_refuses_more_ways_than_its_label_input():
    algo = MANN(Identity(4), "classification", 3, controller=8, memory_slots=5, memory_width=3, read_heads=1)
    episode = Episode(torch.randn(4, 4), torch.arange(4), torch.randn(4, 4), torch.arange(4))
    with pytest.raises(UserError, match=r"4 ways \(the support set's classes\) are more than the 3 this MANN was built for"):
        algo.query_logits(episode)

    MANN.check_ways(3, "eval.ways", outputs=3)
    with pytest.raises(UserError, match=r"5 ways \(eval.ways\) are more than the 3 .*algorithm.max_ways=5"):
        MANN.check_ways(5, "eval.ways", outputs=3)
    MANN.check_ways(5, "eval.ways", outputs=3, max_ways=5)
    assert algo.query_logits(_mann_episode(ways=2)).shape == (4, 2)  # fewer ways: the first outputs


# --- Meta-LSTM -------------------------------------------------------------------------------

def test_meta_lstm_preprocessing():
    """Andrychowicz et al.: (log|v|/10, sign v) for |v| >= e^-10, else (-1, e^10 v)."""
    v = torch.tensor([2.0, -0.5, 1e-6, -1e-6, 0.0])
    got = preprocess(v).numpy()
    assert np.allclose(got[0], [np.log(2) / 10, 1]) and np.allclose(got[1], [np.log(0.5) / 10, -1])
    assert np.allclose(got[2:], [[-1, np.exp(10) * 1e-6], [-1, -np.exp(10) * 1e-6], [-1, 0]])


def _three_parameter_learner(hidden):
    """Learner f(x) = w (a x) + b: a in the 'backbone', (w, b) in the head: theta = (a, w, b)."""
    torch.manual_seed(0)
    body = nn.Linear(1, 1, bias=False)
    body.out_features = 1
    algo = MetaLSTM(body, "regression", 1, steps=1, hidden=hidden)
    with torch.no_grad():
        body.weight.fill_(0.5)
        algo.learner[1].weight.fill_(-1.0)
        algo.learner[1].bias.fill_(0.3)
        algo.forget.weight.copy_(torch.tensor([[0.1, -0.2, 0.3, 0.05, 0.4, 0.7][-(hidden or 4) - 2:]]))
        algo.forget.bias.fill_(2.0)
        algo.input.weight.copy_(torch.tensor([[-0.3, 0.2, 0.1, -0.1, 0.5, 0.9][-(hidden or 4) - 2:]]))
        algo.input.bias.fill_(-1.0)
    return algo


def _by_hand(algo, hidden):
    """theta_1 per the paper's formulas, the query loss, and its gradient w.r.t. theta_0, b_F."""
    x, y = np.array([1.0, 2.0]), np.array([1.0, 3.0])
    xq, yq = 3.0, 4.0
    a, w, b = 0.5, -1.0, 0.3
    r = w * a * x + b - y
    loss = np.mean(r**2)
    grad = np.array([np.mean(2 * r * w * x), np.mean(2 * r * a * x), np.mean(2 * r)])
    theta = np.array([a, w, b])
    pre = lambda v: (np.log(abs(v)) / 10, np.sign(v)) if abs(v) >= np.exp(-10) else (-1.0, np.exp(10) * v)  # noqa: E731
    inputs = np.array([[*pre(g), *pre(loss)] for g in grad])  # (3, 4)
    if hidden:  # the first layer: an ordinary LSTM from zero state, i, f, g, o gate order
        W_ih, b_ih = algo.encoder.weight_ih.detach().numpy(), algo.encoder.bias_ih.detach().numpy()
        b_hh = algo.encoder.bias_hh.detach().numpy()
        z = inputs @ W_ih.T + b_ih + b_hh
        gi, gf, gg, go = np.split(z, 4, axis=1)
        cell = sigmoid(gi) * np.tanh(gg)  # + sigmoid(gf) * 0
        inputs = sigmoid(go) * np.tanh(cell)
    WF, bF = algo.forget.weight.detach().numpy()[0], algo.forget.bias.item()
    WI, bI = algo.input.weight.detach().numpy()[0], algo.input.bias.item()
    f = sigmoid(inputs @ WF[:-2] + WF[-2] * theta + WF[-1] * 0 + bF)  # previous gates f_0 = i_0 = 0
    i = sigmoid(inputs @ WI[:-2] + WI[-2] * theta + WI[-1] * 0 + bI)
    theta1 = f * theta - i * grad
    a1, w1, b1 = theta1
    q = w1 * a1 * xq + b1 - yq
    dq_dtheta1 = np.array([2 * q * w1 * xq, 2 * q * a1 * xq, 2 * q])
    # grad and loss are constants (no second derivatives): theta enters through f, i and f*theta.
    dtheta1_dtheta0 = f + theta * f * (1 - f) * WF[-2] - grad * i * (1 - i) * WI[-2]
    return theta1, q * q, dq_dtheta1 * dtheta1_dtheta0, np.sum(dq_dtheta1 * theta * f * (1 - f))


@pytest.mark.parametrize("hidden", [0, 2])
def test_meta_lstm_one_update_is_the_papers_formulas_on_three_parameters(hidden):
    algo = _three_parameter_learner(hidden)
    episode = Episode(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]]),
                      torch.tensor([[3.0]]), torch.tensor([[4.0]]))
    theta1, query_loss, grad_theta0, grad_bF = _by_hand(algo, hidden)
    # The learned initial state is the learner's parameters: what is adapted from.
    assert algo.initial_state().tolist() == pytest.approx([0.5, -1.0, 0.3])
    adapted = algo.adapt(episode.support, episode.support_labels)
    assert np.allclose(adapted.detach().numpy(), theta1, atol=1e-6)
    loss, _ = algo.episode_loss(episode, training=True)
    assert loss.item() == pytest.approx(query_loss, rel=1e-5)
    loss.backward()
    got = [algo.learner[0].weight.grad.item(), algo.learner[1].weight.grad.item(), algo.learner[1].bias.grad.item()]
    assert np.allclose(got, grad_theta0, atol=1e-5)
    assert algo.forget.bias.grad.item() == pytest.approx(grad_bF, abs=1e-5)


def test_meta_lstm_refuses_a_learner_larger_than_its_memory():
    with pytest.raises(UserError, match=r"has 112,\d{3} parameters, more than the 100,000 cells"):
        MetaLSTM(Conv4((1, 28, 28), hidden=64), "classification", 5, max_learner_parameters=100_000)


def test_meta_lstm_meta_test_normalises_the_query_with_the_support_statistics():
    """Ravi & Larochelle's batch norm at meta-test time: the query is normalised with averages of
    the support batches, so a query image's logits do not depend on the other query images; the
    averages are erased after the episode."""
    torch.manual_seed(0)
    algo = MetaLSTM(Conv4((1, 28, 28), hidden=8), "classification", 3, steps=2).eval()
    episode = Episode(torch.rand(3, 1, 28, 28), torch.arange(3), torch.rand(6, 1, 28, 28), torch.arange(3).repeat(2))
    with torch.no_grad():
        logits = algo.query_logits(episode)
        alone = algo.query_logits(Episode(episode.support, episode.support_labels, episode.query[:1], episode.query_labels[:1]))
    assert torch.allclose(alone, logits[:1], atol=1e-5)
    norms = [m for m in algo.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.running_mean is None and not m.track_running_stats and not m.training for m in norms)
    # Meta-training normalises each set with its own batch statistics (the query batch included).
    algo.train()
    trained = algo.query_logits(episode, training=True)
    trained_alone = algo.query_logits(Episode(episode.support, episode.support_labels, episode.query[:1],
                                              episode.query_labels[:1]), training=True)
    assert not torch.allclose(trained_alone, trained[:1], atol=1e-3)


# --- All three -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["siamese", "mann", "meta_lstm"])
def test_state_dict_round_trips_through_weights_only_load(name):
    torch.manual_seed(0)
    make = {"siamese": lambda: Siamese(Conv4((1, 28, 28), hidden=8, max_pool=True), "classification", 3),
            "mann": lambda: MANN(Conv4((1, 28, 28), hidden=8), "classification", 3, controller=16, memory_slots=8),
            "meta_lstm": lambda: MetaLSTM(Conv4((1, 28, 28), hidden=8), "classification", 3, steps=2)}[name]
    algo = make()
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    again = make()
    again.load_state_dict(torch.load(buffer, weights_only=True))
    episode = Episode(torch.rand(3, 1, 28, 28), torch.arange(3), torch.rand(6, 1, 28, 28), torch.arange(3).repeat(2))
    with torch.no_grad():
        assert torch.equal(algo.eval().query_logits(episode), again.eval().query_logits(episode))


@pytest.mark.parametrize("name", ["siamese", "mann", "meta_lstm"])
def test_training_step_is_a_function_of_the_episode_and_the_weights(name):
    """The same episode and weights give the same meta-gradient whatever the global RNG holds:
    what a resumed run and a meta-batch split across processes rely on."""
    torch.manual_seed(0)
    algo = {"siamese": lambda: Siamese(Conv4((1, 28, 28), hidden=8, max_pool=True), "classification", 3),
            "mann": lambda: MANN(Conv4((1, 28, 28), hidden=8), "classification", 3, controller=16, memory_slots=8),
            "meta_lstm": lambda: MetaLSTM(Conv4((1, 28, 28), hidden=8), "classification", 3, steps=2)}[name]()
    episode = Episode(torch.rand(6, 1, 28, 28), torch.arange(3).repeat_interleave(2), torch.rand(6, 1, 28, 28),
                      torch.arange(3).repeat(2))
    gradients = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        algo.zero_grad()
        algo.meta_objective(episode)[0].backward()
        gradients.append([p.grad.clone() for p in algo.parameters() if p.grad is not None])
    assert gradients[0] and all(torch.equal(a, b) for a, b in zip(*gradients))


def test_mann_and_meta_lstm_regress_on_mlp():
    """Both apply to sinusoid regression (the MLP body): (n_query, 1) outputs, finite MSE."""
    episode = Episode(torch.rand(5, 1), torch.rand(5, 1), torch.rand(4, 1), torch.rand(4, 1))
    for algo in (MANN(MLP((1,)), "regression", 1, controller=16), MetaLSTM(MLP((1,)), "regression", 1, steps=2)):
        objective, loss, accuracy = algo.meta_objective(episode)
        assert accuracy is None and math.isfinite(loss.item())
        assert algo.query_logits(episode).shape == (4, 1)
