"""The meta-gradients of OML and ANML: second order through the online trajectory (the inner
gradient keeps its graph) equals a central finite difference of the outer loss in float64;
first_order=true gives another gradient (what OML's and ANML's public code computed by mistake,
kjaved0/mrcl #15)."""
from __future__ import annotations

import pytest
import torch

from meta_cli.algorithms.anml import ANML
from meta_cli.algorithms.oml import OML
from meta_cli.models.mlp import MLP

CLASSES, FEATURES = 6, 4


def tiny(cls: type, first_order: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = MLP((FEATURES,), hidden=[5, 3])
    model = cls(backbone, "classification", 3, CLASSES, fast_lr=0.5, first_order=first_order,
                trajectory_shots=2, remember=3).double()
    return model


def batch() -> tuple[torch.Tensor, ...]:
    """A trajectory of 2 classes x 2 images, in class order; targets: 2 fresh images of each
    class + 3 remember images of other classes."""
    g = torch.Generator().manual_seed(1)
    trajectory = torch.randn(4, FEATURES, generator=g, dtype=torch.float64)
    trajectory_labels = torch.tensor([4, 4, 1, 1])
    targets = torch.randn(7, FEATURES, generator=g, dtype=torch.float64)
    target_labels = torch.tensor([4, 4, 1, 1, 0, 2, 5])
    return trajectory, trajectory_labels, targets, target_labels


def meta_gradient(model: torch.nn.Module, parameter: str) -> torch.Tensor:
    model.zero_grad()
    loss, _ = model.trajectory_objective(*batch())
    loss.backward()
    return dict(model.named_parameters())[parameter].grad.clone()


def finite_difference(model: torch.nn.Module, parameter: str, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of the outer loss, entry by entry of `parameter`."""
    weight = dict(model.named_parameters())[parameter]
    estimate = torch.zeros_like(weight)
    for i in range(weight.numel()):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                weight.view(-1)[i] += sign * eps
            values.append(model.trajectory_objective(*batch())[0].item())
            with torch.no_grad():
                weight.view(-1)[i] -= sign * eps
        estimate.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
    return estimate


CASES = [(OML, "backbone.net.1.weight"), (OML, "head.weight"),
         (ANML, "backbone.net.1.weight"), (ANML, "neuromodulator.net.1.weight")]


@pytest.mark.parametrize("cls,parameter", CASES, ids=[f"{c.__name__}-{p}" for c, p in CASES])
def test_second_order_meta_gradient_is_the_finite_difference(cls, parameter):
    model = tiny(cls, first_order=False)
    exact = meta_gradient(model, parameter)
    assert exact.abs().max() > 1e-4  # not a trivially zero gradient
    torch.testing.assert_close(exact, finite_difference(model, parameter), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cls", [OML, ANML])
def test_first_order_meta_gradient_of_the_backbone_differs(cls):
    second = tiny(cls, first_order=False)
    first = tiny(cls, first_order=True)
    name = "backbone.net.1.weight"
    g2, g1 = meta_gradient(second, name), meta_gradient(first, name)
    assert (g2 - g1).abs().max() > 1e-3 * g2.abs().max()
    # and the first-order one is not the loss's derivative
    assert not torch.allclose(g1, finite_difference(first, name), rtol=1e-4, atol=1e-7)


def test_reset_rows_get_no_gradient_of_their_initialisation():
    """The trajectory's classes start from zero rows: their initial values do not matter."""
    model = tiny(OML, first_order=False)
    grad = meta_gradient(model, "head.weight")
    assert grad[[4, 1]].abs().max() == 0
    assert grad[[0, 2, 5]].abs().max() > 0
