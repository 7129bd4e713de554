"""The inner loops against cases computed by hand or by learn2learn itself."""
import torch
from torch import nn

from meta_cli.algorithms.maml import MAML
from meta_cli.algorithms.protonet import ProtoNet
from meta_cli.data.base import Episode
from meta_cli.models.conv4 import Conv4
from meta_cli.models.mlp import MLP


class Identity(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x):
        return x


def test_protonet_logits_are_negative_squared_distances():
    algo = ProtoNet(Identity(2), "classification", 2)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 1.0], [10.0, 10.0]])
    loss, acc = algo.episode_loss(Episode(support, labels, query, torch.tensor([0, 1])), True)
    # prototypes (1, 0) and (10, 11); logits = -||q - p||^2
    logits = torch.tensor([[-1.0, -(81 + 100.0)], [-(81 + 100.0), -1.0]])
    assert torch.isclose(loss, nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    assert acc.item() == 1.0


def test_maml_one_step_on_linear_regression_equals_closed_form():
    """y = w x + b, MSE on support; one SGD step then the query loss, differentiated
    through the step (second order), against the hand-derived gradient."""
    torch.manual_seed(0)
    algo = MAML(Identity(1), "regression", 1, fast_lr=0.1, adaptation_steps=1)
    head = algo.maml.module[1]
    w0, b0 = head.weight.item(), head.bias.item()
    xs, ys = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]])
    xq, yq = torch.tensor([[3.0]]), torch.tensor([[4.0]])
    loss, _ = algo.episode_loss(Episode(xs, ys, xq, yq), training=True)
    loss.backward()

    lr = 0.1
    # support loss L = mean((w x + b - y)^2): dL/dw = mean(2 (wx+b-y) x), dL/db = mean(2 (wx+b-y))
    r = [w0 * 1 + b0 - 1, w0 * 2 + b0 - 3]
    gw, gb = (2 * r[0] * 1 + 2 * r[1] * 2) / 2, (2 * r[0] + 2 * r[1]) / 2
    w1, b1 = w0 - lr * gw, b0 - lr * gb
    q = w1 * 3 + b1 - 4
    assert torch.isclose(loss, torch.tensor(q * q))
    # d w1 / d w0 = 1 - lr * mean(2 x^2) = 1 - lr * 5; d w1 / d b0 = -lr * mean(2 x) = -lr * 3
    # d b1 / d w0 = -lr * 3; d b1 / d b0 = 1 - lr * 2
    dq_dw0 = 3 * (1 - lr * 5) + (-lr * 3)
    dq_db0 = 3 * (-lr * 3) + (1 - lr * 2)
    assert torch.isclose(head.weight.grad, torch.tensor([[2 * q * dq_dw0]]), atol=1e-6).all()
    assert torch.isclose(head.bias.grad, torch.tensor([2 * q * dq_db0]), atol=1e-6).all()


def test_maml_first_order_drops_the_second_order_term():
    torch.manual_seed(0)
    algo = MAML(Identity(1), "regression", 1, fast_lr=0.1, first_order=True)
    head = algo.maml.module[1]
    w0, b0 = head.weight.item(), head.bias.item()
    xs, ys = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]])
    loss, _ = algo.episode_loss(Episode(xs, ys, torch.tensor([[3.0]]), torch.tensor([[4.0]])), True)
    loss.backward()
    r = [w0 + b0 - 1, 2 * w0 + b0 - 3]
    w1 = w0 - 0.1 * (2 * r[0] + 4 * r[1]) / 2
    b1 = b0 - 0.1 * (2 * r[0] + 2 * r[1]) / 2
    q = 3 * w1 + b1 - 4
    # first order: the gradient at the adapted parameters, passed straight to the initial ones
    assert torch.isclose(head.weight.grad, torch.tensor([[2 * q * 3]]), atol=1e-6).all()
    assert torch.isclose(head.bias.grad, torch.tensor([2 * q]), atol=1e-6).all()


def test_maml_meta_gradient_matches_learn2learn_example_loop():
    """Our MAML against the loop of learn2learn's maml_omniglot example, same weights."""
    from meta_cli._l2l import l2l

    torch.manual_seed(1)
    ours = MAML(Conv4((1, 28, 28)), "classification", 5, fast_lr=0.4, adaptation_steps=2)
    reference = l2l.algorithms.MAML(_copy(ours.maml.module), lr=0.4)
    x = torch.rand(10, 1, 28, 28)
    y = torch.arange(5).repeat_interleave(2)
    episode = Episode(x[::2], y[::2], x[1::2], y[1::2])
    loss, _ = ours.episode_loss(episode, training=True)
    loss.backward()

    learner = reference.clone()
    for _ in range(2):
        learner.adapt(nn.functional.cross_entropy(learner(episode.support), episode.support_labels))
    ref_loss = nn.functional.cross_entropy(learner(episode.query), episode.query_labels)
    ref_loss.backward()
    assert torch.isclose(loss, ref_loss)
    for a, b in zip(ours.maml.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def _copy(module: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(module)


def test_backbone_shapes():
    assert Conv4((1, 28, 28)).out_features == 64
    assert Conv4((1, 28, 28), max_pool=True).out_features == 64
    mlp = MLP((1,), hidden=[40, 40])
    assert mlp(torch.zeros(3, 1)).shape == (3, 40)
    maml = MAML(mlp, "regression", 1)
    sizes = [tuple(p.shape) for p in maml.parameters()]
    assert sizes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]  # 1-40-40-1

