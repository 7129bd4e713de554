"""Test-time heads (meta_cli/algorithms/heads.py) on toy sets computed by hand, and the
logistic head against an independent solver (scipy) and a closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from meta_cli.algorithms import heads

# Three classes along three axes, one shot each; each query lies nearest its class's axis.
SUPPORT = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
LABELS = torch.tensor([0, 1, 2])
QUERY = torch.tensor([[1.0, 0.1, 0.0], [0.2, 2.0, 0.1], [0.0, 0.5, 5.0], [3.0, 0.0, 1.0]])
EXPECTED = [0, 1, 2, 0]


@pytest.mark.parametrize("head", heads.HEADS)
def test_every_head_separates_the_toy_set(head):
    classifier = heads.fit(head, SUPPORT, LABELS, 3)
    logits = classifier(QUERY)
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    assert logits.argmax(1).tolist() == EXPECTED
    # On its own support set too (two shots per class, classes in mixed order).
    support = torch.cat([SUPPORT, 0.5 * SUPPORT + 0.1])
    labels = torch.cat([LABELS, LABELS])[[0, 4, 2, 1, 5, 3]]
    support = support[[0, 4, 2, 1, 5, 3]]
    assert heads.fit(head, support, labels, 3)(support).argmax(1).tolist() == labels.tolist()


@pytest.mark.parametrize("head", heads.HEADS)
def test_heads_are_deterministic_and_leave_the_global_rng_alone(head):
    state = torch.get_rng_state()
    a = heads.fit(head, SUPPORT, LABELS, 3)(QUERY)
    b = heads.fit(head, SUPPORT, LABELS, 3)(QUERY)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("head", heads.HEADS)
def test_fitting_under_no_grad_works_and_leaves_the_embeddings_untouched(head):
    support = SUPPORT.clone().requires_grad_()
    with torch.no_grad():
        logits = heads.fit(head, support, LABELS, 3)(QUERY)
    assert logits.argmax(1).tolist() == EXPECTED
    assert support.grad is None


def test_prototype_normalises_before_the_nearest_mean():
    """Support [10, 0] (class 0) and [1, 1] (class 1), query [5, 1]: by raw distance the query
    is nearer [1, 1] (16 < 26), by direction it is nearer [1, 0] (class 0)."""
    support, labels = torch.tensor([[10.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1])
    query = torch.tensor([[5.0, 1.0]])
    logits = heads.fit_prototype(support, labels, 2)(query)
    q = np.array([5.0, 1.0]) / math.sqrt(26)
    p = [np.array([1.0, 0.0]), np.array([1.0, 1.0]) / math.sqrt(2)]
    expected = [-0.5 * heads.TEMPERATURE * ((q - pc) ** 2).sum() for pc in p]
    assert torch.allclose(logits, torch.tensor([expected], dtype=torch.float32), atol=1e-5)
    assert logits.argmax(1).item() == 0


def test_prototype_averages_the_unit_vectors_of_a_class():
    support = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0]])
    classifier = heads.fit_prototype(support, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(classifier.prototypes, torch.tensor([[0.5, 0.5], [0.0, -1.0]]))


def test_linear_first_step_is_the_gradient_from_zero():
    """From W = 0, b = 0 all logits are equal, so dL/dW_c = -(1/n) sum_i (1[y_i=c] - 1/K) x_i,
    and torch's SGD takes lr times that on its first step (no dampening, no decay at 0)."""
    lr = 0.5
    classifier = heads.fit_linear(SUPPORT, LABELS, 3, steps=1, lr=lr)
    n, k = 3, 3
    onehot = torch.eye(3)
    expected_w = lr / n * (onehot - 1 / k).T @ SUPPORT
    assert torch.allclose(classifier.weight, expected_w)
    assert torch.allclose(classifier.bias, torch.zeros(3), atol=1e-7)  # balanced classes
    assert torch.allclose(classifier.weight[0], torch.tensor([lr / 3 * 4 * (2 / 3), -lr / 3 * 3 / 3, -lr / 3 * 2 / 3]))


def test_linear_head_loss_falls_with_steps():
    loss = [torch.nn.functional.cross_entropy(heads.fit_linear(SUPPORT, LABELS, 3, steps=s)(SUPPORT), LABELS).item()
            for s in (1, 10, 100)]
    assert loss[0] > loss[1] > loss[2]


def test_cosine_starts_from_the_imprinted_means_and_learns_its_scale():
    untrained = heads.fit_cosine(SUPPORT, LABELS, 3, steps=0)
    cos = torch.nn.functional.normalize(QUERY, dim=1)  # class weights are the unit axes
    assert torch.allclose(untrained(QUERY), heads.COSINE_SCALE * cos, atol=1e-6)
    trained = heads.fit_cosine(SUPPORT, LABELS, 3, steps=100, lr=0.1)
    assert trained.scale.item() > heads.COSINE_SCALE  # a separable support set raises it
    assert trained(QUERY).argmax(1).tolist() == EXPECTED


def _reference_logistic(x: np.ndarray, y: np.ndarray, ways: int, c: float) -> tuple[float, np.ndarray]:
    """The RFS objective minimised by scipy's L-BFGS-B, written in numpy on its own."""
    n, d = x.shape
    onehot = np.eye(ways)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:ways * d].reshape(ways, d), theta[ways * d:]
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        value = -(onehot * log_p).sum() + (w ** 2).sum() / (2 * c)
        residual = np.exp(log_p) - onehot  # (n, ways)
        grad_w = residual.T @ x + w / c
        return value, np.concatenate([grad_w.ravel(), residual.sum(0)])

    result = scipy.optimize.minimize(objective, np.zeros(ways * (d + 1)), jac=True, method="L-BFGS-B",
                                     options={"maxiter": 10000, "gtol": 1e-12, "ftol": 1e-15})
    return float(result.fun), result.x


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_logistic_loss_matches_scipy_to_1e6(c):
    rng = np.random.default_rng(1)
    ways, shots, d = 5, 3, 16
    y = np.repeat(np.arange(ways), shots)
    raw = rng.normal(size=(ways, d))[y] + 0.8 * rng.normal(size=(len(y), d))
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    reference, theta = _reference_logistic(x, y, ways, c)
    classifier = heads.fit_logistic(torch.tensor(raw, dtype=torch.float32), torch.tensor(y), ways, c=c)
    features = torch.nn.functional.normalize(torch.tensor(raw, dtype=torch.float32).double(), dim=1)
    ours = heads.logistic_objective(classifier.weight, classifier.bias, features, torch.tensor(y), c).item()
    assert abs(ours - reference) < 1e-6
    w_ref = theta[:ways * d].reshape(ways, d)
    assert np.allclose(classifier.weight.detach().numpy(), w_ref, atol=1e-4)  # unique in W


def test_logistic_two_points_closed_form():
    """x = +a (class 0) and -a (class 1) in 1-D: by symmetry b = 0, W = [w, -w], and the
    objective 2 log(1 + exp(-2wa)) + w^2 / C has its minimum where w = 2aC sigmoid(-2wa)."""
    a, c = 1.0, 1.0  # normalised, each point is +-1
    root = scipy.optimize.brentq(lambda w: w - 2 * a * c / (1 + math.exp(2 * w * a)), 0.0, 10.0, xtol=1e-14)
    expected = 2 * math.log1p(math.exp(-2 * root * a)) + root ** 2 / c
    classifier = heads.fit_logistic(torch.tensor([[3.0], [-0.5]]), torch.tensor([0, 1]), 2, c=c)
    assert classifier.weight.detach().flatten().tolist() == pytest.approx([root, -root], abs=1e-7)
    features = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    loss = heads.logistic_objective(classifier.weight, classifier.bias, features, torch.tensor([0, 1]), c)
    assert abs(loss.item() - expected) < 1e-9
