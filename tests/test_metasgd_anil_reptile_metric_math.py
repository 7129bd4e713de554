"""Meta-SGD, ANIL, Reptile, Matching Networks and MetaOptNet against cases computed by hand (or
by an independent solver)."""
import numpy as np
import pytest
import torch
from torch import nn

from meta_cli.algorithms.anil import ANIL
from meta_cli.algorithms.matchingnet import MatchingNet
from meta_cli.algorithms.metaoptnet import MetaOptNet
from meta_cli.algorithms.metasgd import MetaSGD
from meta_cli.algorithms.reptile import Reptile
from meta_cli.data.base import Episode
from meta_cli.errors import UserError


class Identity(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x):
        return x


XS, YS = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]])
XQ, YQ = torch.tensor([[3.0]]), torch.tensor([[4.0]])


def test_metasgd_one_step_uses_the_learned_rate_of_each_weight():
    """y = w x + b with rates (a_w, a_b): w1 = w0 - a_w dL/dw, b1 = b0 - a_b dL/db; the
    meta-gradient reaches the rates: dq^2/da_w = 2 q x_q (-dL/dw)."""
    torch.manual_seed(0)
    algo = MetaSGD(Identity(1), "regression", 1, fast_lr=0.1)
    head = algo.maml.module[1]
    a_w, a_b = algo.maml.lrs[0], algo.maml.lrs[1]  # the Identity backbone has no weights
    with torch.no_grad():
        a_w.fill_(0.05)
        a_b.fill_(0.2)
    w0, b0 = head.weight.item(), head.bias.item()
    loss, _ = algo.episode_loss(Episode(XS, YS, XQ, YQ), training=True)
    loss.backward()
    r = [w0 + b0 - 1, 2 * w0 + b0 - 3]
    gw, gb = (2 * r[0] + 4 * r[1]) / 2, (2 * r[0] + 2 * r[1]) / 2
    w1, b1 = w0 - 0.05 * gw, b0 - 0.2 * gb
    q = 3 * w1 + b1 - 4
    assert torch.isclose(loss, torch.tensor(q * q))
    assert torch.isclose(a_w.grad, torch.tensor([[2 * q * 3 * -gw]]), atol=1e-5).all()
    assert torch.isclose(a_b.grad, torch.tensor([2 * q * -gb]), atol=1e-5).all()


def test_metasgd_has_no_vmap_backend():
    with pytest.raises(UserError, match="no vmap backend"):
        MetaSGD(Identity(1), "regression", 1, backend="vmap")


def test_anil_adapts_the_head_only():
    """Features: x -> 2x (meta-learned, not adapted); head y = w f + b adapted one step:
    the adapted head equals the closed form on f, and the feature weight gets the chain rule."""
    torch.manual_seed(0)
    features = nn.Linear(1, 1, bias=False)
    features.out_features = 1
    with torch.no_grad():
        features.weight.fill_(2.0)
    algo = ANIL(features, "regression", 1, fast_lr=0.1, adaptation_steps=1)
    head = algo.head.module
    w0, b0 = head.weight.item(), head.bias.item()
    loss, _ = algo.episode_loss(Episode(XS, YS, XQ, YQ), training=True)
    loss.backward()
    fs, fq = [2.0, 4.0], 6.0
    r = [w0 * fs[0] + b0 - 1, w0 * fs[1] + b0 - 3]
    gw, gb = (2 * r[0] * fs[0] + 2 * r[1] * fs[1]) / 2, (2 * r[0] + 2 * r[1]) / 2
    w1, b1 = w0 - 0.1 * gw, b0 - 0.1 * gb
    q = w1 * fq + b1 - 4
    assert torch.isclose(loss, torch.tensor(q * q))
    assert head.weight.grad is not None and features.weight.grad is not None
    # Meta-testing leaves every meta-parameter as it was.
    before = [p.detach().clone() for p in algo.parameters()]
    with torch.no_grad():
        algo.query_logits(Episode(XS, YS, XQ, YQ), training=False)
    assert all(torch.equal(a, b) for a, b in zip(before, algo.parameters()))


def test_reptile_meta_update_is_the_interpolation_formula():
    """theta <- theta + eps * mean_tasks(phi_t - theta), with phi_t from k SGD steps computed
    here by hand on y = w x + b."""
    torch.manual_seed(0)
    eps, lr, k = 0.5, 0.05, 2
    algo = Reptile(Identity(1), "regression", 1, inner_lr=lr, inner_steps=k, meta_step_size=eps)
    head = algo.model[1]
    w0, b0 = head.weight.item(), head.bias.item()
    tasks = [Episode(XS, YS, XQ, YQ), Episode(XS, 2 * YS, XQ, 2 * YQ)]

    def sgd(w, b, x, y):  # k full-batch steps on MSE over support + query, and the last step's loss
        for _ in range(k):
            r = w * x + b - y
            w, b = w - lr * float(np.mean(2 * r * x)), b - lr * float(np.mean(2 * r))
        return w, b, float(np.mean(r**2))

    phis = [sgd(w0, b0, np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 4.0]) * s) for s in (1, 2)]
    optimizer = algo.meta_optimizer(meta_lr=123.0)  # meta_lr does not apply to Reptile
    optimizer.zero_grad()
    for episode, phi in zip(tasks, phis):
        objective, loss, _ = algo.meta_objective(episode)
        assert loss.item() == pytest.approx(phi[2], rel=1e-6)  # reported: the k-th step's, before it
        (objective / len(tasks)).backward()
    optimizer.step()
    w_new = w0 + eps * np.mean([p[0] - w0 for p in phis])
    b_new = b0 + eps * np.mean([p[1] - b0 for p in phis])
    assert head.weight.item() == pytest.approx(w_new, abs=1e-6)
    assert head.bias.item() == pytest.approx(b_new, abs=1e-6)



def test_reptile_adam_inner_loop_by_hand():
    """inner_optimizer=adam: Adam with beta1 = 0 (Nichol et al.'s) and a fresh state per task, so
    each step is lr * g_t / (sqrt(v_t / (1 - beta2^t)) + 1e-8) with v_t = beta2 v + (1 - beta2) g^2."""
    torch.manual_seed(0)
    eps, lr, k, beta2 = 1.0, 0.1, 3, 0.999
    algo = Reptile(Identity(1), "regression", 1, inner_lr=lr, inner_steps=k, meta_step_size=eps,
                   inner_optimizer="adam")
    head = algo.model[1]
    w, b = head.weight.item(), head.bias.item()
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 4.0])
    v = np.zeros(2)
    for t in range(1, k + 1):
        r = w * x + b - y
        g = np.array([np.mean(2 * r * x), np.mean(2 * r)])
        v = beta2 * v + (1 - beta2) * g**2
        w, b = np.array([w, b]) - lr * g / (np.sqrt(v / (1 - beta2**t)) + 1e-8)
    optimizer = algo.meta_optimizer(meta_lr=1.0)
    optimizer.zero_grad()
    algo.meta_objective(Episode(XS, YS, XQ, YQ))[0].backward()
    optimizer.step()  # eps = 1: the meta-weights become phi
    assert head.weight.item() == pytest.approx(w, abs=1e-5)
    assert head.bias.item() == pytest.approx(b, abs=1e-5)


def test_reptile_inner_loop_learns_under_bf16_autocast():
    """train.precision=bf16: autocast caches each leaf weight's bf16 copy for its whole region,
    so without clearing it every inner step would run on the starting weights. Under autocast
    phi must follow the float32 trajectory (to bf16 rounding), not stay where step one put it."""
    torch.manual_seed(0)
    algo = Reptile(nn.Linear(8, 8), "classification", 3, inner_lr=0.5, inner_steps=8)
    inputs, labels = torch.randn(12, 8), torch.randint(0, 3, (12,))
    start = [p.detach().clone() for p in algo.model.parameters()]
    torch.manual_seed(1)
    fp32 = algo.adapted(inputs, labels, 8)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = algo.adapted(inputs, labels, 8)
    for p32, p16, p0 in zip(fp32.parameters(), bf16.parameters(), start):
        moved = (p32 - p0).norm()
        assert moved > 0.1
        assert (p16 - p32).norm() < 0.05 * moved


class Recorder(Identity):
    """Identity that records every batch it is given, in a class-level list (Reptile adapts a
    deep copy of the model)."""

    seen: list[torch.Tensor] = []

    def forward(self, x):
        Recorder.seen.append(x.detach().clone())
        return x


def test_reptile_inner_minibatches_are_disjoint_within_a_pass_and_the_steps_are_sgd_on_them():
    """inner_batch=2 on a task of 4 labelled images, 4 steps: two passes over two shuffled
    orders, each image exactly twice, and phi is SGD step by step on the batches it saw."""
    torch.manual_seed(0)
    lr, k = 0.05, 4
    body = Recorder(1)
    Recorder.seen.clear()
    algo = Reptile(body, "regression", 1, inner_lr=lr, inner_steps=k, inner_batch=2)
    head = algo.model[1]
    w, b = head.weight.item(), head.bias.item()
    episode = Episode(XS, YS, torch.tensor([[3.0], [4.0]]), torch.tensor([[4.0], [6.0]]))
    learner = algo.adapted(torch.cat([episode.support, episode.query]),
                           torch.cat([episode.support_labels, episode.query_labels]), k)
    batches = [x.flatten().tolist() for x in body.seen]
    assert [len(x) for x in batches] == [2] * k
    assert sorted(batches[0] + batches[1]) == sorted(batches[2] + batches[3]) == [1.0, 2.0, 3.0, 4.0]
    target = {1.0: 1.0, 2.0: 3.0, 3.0: 4.0, 4.0: 6.0}
    for xs in batches:
        x, y = np.array(xs), np.array([target[v] for v in xs])
        r = w * x + b - y
        w, b = w - lr * float(np.mean(2 * r * x)), b - lr * float(np.mean(2 * r))
    assert learner[1].weight.item() == pytest.approx(w, abs=1e-6)
    assert learner[1].bias.item() == pytest.approx(b, abs=1e-6)
    body.seen.clear()  # at test time the support set (2 images <= inner_batch) is one batch
    algo.query_logits(episode)
    assert all(len(x) == 2 and x.flatten().tolist() == [1.0, 2.0] for x in body.seen[:-1])


def test_matchingnet_attention_by_hand():
    """Cosines of q=(1,0) to supports (1,0), (0,1), (1,1)/sqrt2 are 1, 0, 1/sqrt2; with
    labels 0, 1, 1 and scale s: p(0) = e^s / (e^s + 1 + e^(s/sqrt2))."""
    algo = MatchingNet(Identity(2), "classification", 2, scale=3.0)
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    logits = algo.query_logits(Episode(support, labels, torch.tensor([[2.0, 0.0]]), torch.tensor([0])))
    z = np.exp(3.0) + 1 + np.exp(3.0 / np.sqrt(2))
    expected = torch.tensor([[np.log(np.exp(3.0) / z), np.log((1 + np.exp(3.0 / np.sqrt(2))) / z)]],
                            dtype=torch.float32)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(logits.exp().sum(dim=1), torch.ones(1))


def test_metaoptnet_svm_matches_an_independent_qp_solver():
    """The Crammer-Singer dual solved by qpth (through learn2learn) against cvxpy on the same
    quadratic program, written out here from the paper."""
    cp = pytest.importorskip("cvxpy")
    torch.manual_seed(0)
    ways, shots, dim = 3, 2, 4
    support = torch.randn(ways * shots, dim)
    labels = torch.arange(ways).repeat_interleave(shots)
    query = torch.randn(5, dim)
    algo = MetaOptNet(Identity(dim), "classification", ways, C_reg=0.1, max_iters=50, scale=1.0)
    logits = algo.query_logits(Episode(support, labels, query, torch.zeros(5, dtype=torch.long)))

    # Lee et al. (2019), eq. 4-5: maximise -1/2 sum_k ||sum_i alpha_i^k x_i||^2 + sum_i alpha_i^{y_i}
    # subject to alpha_i^k <= C [k == y_i] and sum_k alpha_i^k = 0; learn2learn adds 1/2 ||alpha||^2.
    n, X = ways * shots, support.double().numpy()
    alpha = cp.Variable((n, ways))
    onehot = np.eye(ways)[labels.numpy()]
    w = X.T @ alpha  # (dim, ways): the weight of each class
    objective = cp.Minimize(0.5 * cp.sum_squares(w) + 0.5 * cp.sum_squares(alpha) - cp.sum(cp.multiply(onehot, alpha)))
    cp.Problem(objective, [alpha <= 0.1 * onehot, cp.sum(alpha, axis=1) == 0]).solve()
    expected = query.double().numpy() @ X.T @ alpha.value
    assert np.allclose(logits.detach().double().numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("algorithm", [MetaOptNet, MatchingNet, ANIL])
def test_metric_heads_run_in_float32_under_bf16_autocast(algorithm):
    """train.precision=bf16: the embedding may be bf16, the head (qpth's LU has no bf16 kernel; ANIL's inner loop) not."""
    torch.manual_seed(0)
    algo = algorithm(Identity(4), "classification", 2)
    episode = Episode(torch.randn(4, 4), torch.tensor([0, 0, 1, 1]), torch.randn(3, 4), torch.tensor([0, 1, 1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = algo.query_logits(episode, training=True)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, algo.query_logits(episode, training=True), atol=1e-5)
