"""algorithm=pretrain (meta_cli/algorithms/pretrain.py): the non-episodic step, the heads on
episodes, fine-tuning that leaves the pre-trained weights alone, its config node."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_datasets import write_mini
from torch import nn

from meta_cli.algorithms import heads
from meta_cli.algorithms.pretrain import CosineLinear, Pretrain
from meta_cli.data.base import Episode
from meta_cli.data.mini_imagenet import MiniImagenet
from meta_cli.errors import UserError
from meta_cli.models.conv4 import Conv4
from meta_cli.config.validation import check_node

REPO = Path(__file__).resolve().parents[1]


class Identity(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x):
        return x


def _episode(ways: int = 3, shots: int = 2, query: int = 2, d: int = 6, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(ways, d, generator=g)
    s = centres.repeat_interleave(shots, 0) + torch.randn(ways * shots, d, generator=g)
    q = centres.repeat_interleave(query, 0) + torch.randn(ways * query, d, generator=g)
    return Episode(s, torch.arange(ways).repeat_interleave(shots), q, torch.arange(ways).repeat_interleave(query))


def test_the_yaml_node_is_the_constructor_and_classes_is_injected():
    node = yaml.safe_load((REPO / "conf" / "algorithm" / "pretrain.yaml").read_text())
    node.pop("defaults")
    check_node(node, "algorithm")
    assert "classes" in Pretrain.injected and "classes" not in node
    with pytest.raises(UserError, match=r"algorithm.head must be one of: prototype, linear, cosine, logistic"):
        check_node({**node, "head": "svm"}, "algorithm")


def test_a_head_asked_of_an_algorithm_without_one_is_one_line():
    protonet = yaml.safe_load((REPO / "conf" / "algorithm" / "protonet.yaml").read_text())
    protonet.pop("defaults")
    with pytest.raises(UserError, match=r"Unknown config key 'algorithm.head'. It is an option of algorithm=pretrain\."):
        check_node({**protonet, "head": "linear"}, "algorithm")


def test_regression_is_one_line():
    with pytest.raises(UserError, match="algorithm Pretrain does only classification; this dataset is regression"):
        Pretrain(Identity(1), "regression", 1, classes=1)


def test_batch_loss_is_cross_entropy_over_all_classes():
    torch.manual_seed(0)
    model = Pretrain(Identity(4), "classification", 5, classes=7)
    x, y = torch.randn(10, 4), torch.randint(0, 7, (10,))
    loss, accuracy = model.batch_loss(x, y)
    logits = x @ model.classifier.weight.T + model.classifier.bias
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    assert accuracy.item() == (logits.argmax(1) == y).float().mean().item()
    loss.backward()
    assert model.classifier.weight.grad is not None


def test_cosine_classifier_uses_chen_et_al_scales():
    assert CosineLinear(4, 200).scale == 2.0 and CosineLinear(4, 1088).scale == 10.0
    torch.manual_seed(0)
    model = Pretrain(Identity(4), "classification", 5, classes=7, classifier="cosine")
    x = torch.randn(3, 4)
    expected = 2.0 * F.normalize(x, dim=1) @ F.normalize(model.classifier.weight, dim=1).T
    assert torch.allclose(model.classifier(x), expected)


def test_the_backbone_learns_from_batches():
    torch.manual_seed(0)
    body = Conv4((1, 28, 28), hidden=8, max_pool=True)
    model = Pretrain(body, "classification", 5, classes=3)
    x, y = torch.rand(12, 1, 28, 28), torch.arange(3).repeat(4)
    optimizer = model.meta_optimizer(0.01)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = model.batch_loss(x, y)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("head", heads.HEADS)
def test_query_logits_are_the_head_fit_on_the_support_embeddings(head):
    model = Pretrain(Identity(6), "classification", 3, classes=10, head=head, head_steps=20, head_lr=0.1)
    episode = _episode()
    with torch.no_grad():
        logits = model.query_logits(episode)
    expected = heads.fit(head, episode.support, episode.support_labels, 3, 20, 0.1)(episode.query)
    assert torch.equal(logits, expected)
    assert logits.argmax(1).tolist() == episode.query_labels.tolist()  # well separated centres


def _conv_model(**kwargs) -> Pretrain:
    torch.manual_seed(0)
    return Pretrain(Conv4((1, 28, 28), hidden=8, max_pool=True), "classification", 5, classes=10, **kwargs)


def _image_episode() -> Episode:
    g = torch.Generator().manual_seed(1)
    return Episode(torch.rand(6, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(2),
                   torch.rand(6, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(2))


@pytest.mark.parametrize("head", ["prototype", "logistic"])
def test_finetune_changes_the_prediction_not_the_pretrained_weights(head):
    episode = _image_episode()
    plain, tuned = _conv_model(head=head), _conv_model(head=head, finetune=True, finetune_steps=5, finetune_lr=0.1)
    weights = {k: v.clone() for k, v in tuned.state_dict().items()}
    with torch.no_grad():
        a, b = plain.query_logits(episode), tuned.query_logits(episode)
        again = tuned.query_logits(episode)
    assert not torch.allclose(a, b)  # the fine-tuned copy embeds differently
    assert torch.equal(b, again)  # and starts from the same weights every episode
    assert all(torch.equal(v, weights[k]) for k, v in tuned.state_dict().items())


def test_it_learns_from_batches_not_episodes():
    from meta_cli.engine.regimes.base import regime_of

    assert regime_of(Pretrain).name == "batches"


def test_mini_imagenet_shaped_path(tmp_path, monkeypatch):
    """The real-format pickles: a batch step over the train classes, then a 3-way val episode."""
    monkeypatch.setenv("META_CLI_CACHE", str(tmp_path / "cache"))
    write_mini(tmp_path)
    source = MiniImagenet(str(tmp_path), download=False, ways=3, shots=1, query=2)
    torch.manual_seed(0)
    model = Pretrain(Conv4(source.input_shape, hidden=4, max_pool=True), "classification", 3,
                     classes=source.num_classes("train"), head="logistic")
    images, labels = source.batch("train", 0, seed=0, size=8)
    loss, _ = model.batch_loss(images, labels)
    loss.backward()
    assert model.classifier.weight.shape == (6, model.backbone.out_features)
    model.eval()
    with torch.no_grad():
        episode_loss, accuracy = model.episode_loss(source.episode("val", 0, 0, 3, 1, 2), training=False)
    assert torch.isfinite(episode_loss) and 0 <= accuracy.item() <= 1
