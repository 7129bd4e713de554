"""ProtoNet's test-time fine-tuning (algorithm.finetune=true, P>M>F) against a hand-written
step: one SGD step on the support set's prototype loss, on a copy of the body."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from meta_cli.algorithms.protonet import ProtoNet
from meta_cli.data.base import Episode


def _episode(ways: int = 3, shots: int = 2, query: int = 2, features: int = 6) -> Episode:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return Episode(torch.randn(ways * shots, features, generator=g), labels.repeat_interleave(shots),
                   torch.randn(ways * query, features, generator=g), labels.repeat_interleave(query))


def _body() -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    body.out_features = 4
    return body


def test_one_finetuning_step_is_one_sgd_step_on_the_support_prototype_loss():
    episode, lr = _episode(), 0.5
    model = ProtoNet(_body(), "classification", 3, finetune=True, finetune_steps=1, finetune_lr=lr,
                     finetune_augment=False).eval()
    before = copy.deepcopy(model.backbone.state_dict())
    with torch.no_grad():
        logits = model.query_logits(episode)
    # By hand: the first SGD step with momentum is a plain gradient step.
    body = copy.deepcopy(model.backbone)
    support = body(episode.support)
    centres = torch.stack([support[episode.support_labels == c].mean(0) for c in range(3)])
    distances = ((support[:, None] - centres[None]) ** 2).sum(-1)
    loss = F.cross_entropy(-distances, episode.support_labels)
    grads = torch.autograd.grad(loss, list(body.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, 1.0 / (norm.item() + 1e-6))  # the gradient norm clipped to 1
    with torch.no_grad():
        for p, g in zip(body.parameters(), grads):
            p -= lr * scale * g
        support, query = body(episode.support), body(episode.query)
        centres = torch.stack([support[episode.support_labels == c].mean(0) for c in range(3)])
        expected = -((query[:, None] - centres[None]) ** 2).sum(-1)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert loss.item() > 0 and not torch.allclose(logits, _plain(model, episode), atol=1e-4)
    for k, v in model.backbone.state_dict().items():  # the meta-trained body is untouched
        assert torch.equal(v, before[k])


def _plain(model: ProtoNet, episode: Episode) -> torch.Tensor:
    plain = ProtoNet(model.backbone, "classification", 3).eval()
    with torch.no_grad():
        return plain.query_logits(episode)


def test_one_shot_finetuning_learns_from_augmented_pseudo_queries():
    """1-shot: each support image is its own prototype; the pseudo-queries (augmented copies)
    are what the loss reads, drawn from the episode's seed: the same logits on every call,
    other than with the support images as queries, and other than without fine-tuning."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(3)
    episode = Episode(torch.rand(3, 1, 8, 8, generator=g), labels, torch.rand(6, 1, 8, 8, generator=g),
                      labels.repeat_interleave(2), seed=7)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    body.out_features = 4
    plain = _plain(ProtoNet(body, "classification", 3), episode)
    tuned = ProtoNet(body, "classification", 3, finetune=True, finetune_steps=3, finetune_lr=0.5).eval()
    without = ProtoNet(body, "classification", 3, finetune=True, finetune_steps=3, finetune_lr=0.5,
                       finetune_augment=False).eval()
    with torch.no_grad():
        first, again, flat = tuned.query_logits(episode), tuned.query_logits(episode), without.query_logits(episode)
    assert torch.equal(first, again) and not torch.allclose(first, plain, atol=1e-4)
    assert not torch.allclose(first, flat, atol=1e-4)


def test_finetuning_is_test_time_only():
    episode = _episode()
    model = ProtoNet(_body(), "classification", 3, finetune=True, finetune_steps=3)
    assert torch.equal(model.query_logits(episode, training=True), _plain(model, episode))
    assert ProtoNet.adapts_body(finetune=True) and not ProtoNet.adapts_body(finetune=False)
