"""init=CHECKPOINT (meta_cli/init.py): exactly the backbone's tensors are copied from another
run's checkpoint; heads and other parameters stay fresh; anything that does not fit is one line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from meta_cli.rundir import checkpoint
from meta_cli.algorithms.anil import ANIL
from meta_cli.algorithms.maml import MAML
from meta_cli.algorithms.matchingnet import MatchingNet
from meta_cli.algorithms.metaoptnet import MetaOptNet
from meta_cli.algorithms.metasgd import MetaSGD
from meta_cli.algorithms.pretrain import Pretrain
from meta_cli.algorithms.protonet import ProtoNet
from meta_cli.algorithms.reptile import Reptile
from meta_cli.errors import UserError
from meta_cli.rundir.transfer import find_backbone, load_backbone

SHAPE = (1, 28, 28)
CONV = {"_target_": "meta_cli.models.conv4.Conv4", "hidden": 8, "max_pool": True, "layers": 4,
        "channels_last": True, "pool_last": True, "widths": None}
PRETRAIN = {"_target_": "meta_cli.algorithms.pretrain.Pretrain", "head": "prototype"}
TARGETS = {  # algorithm: (class, extra constructor arguments, the backbone's state-dict prefix)
    "protonet": (ProtoNet, {}, "backbone."),
    "matchingnet": (MatchingNet, {}, "backbone."),
    "metaoptnet": (MetaOptNet, {}, "backbone."),
    "maml": (MAML, {}, "maml.module.0."),
    "metasgd": (MetaSGD, {}, "maml.module.0."),
    "anil": (ANIL, {}, "backbone."),
    "reptile": (Reptile, {}, "model.0."),
    "pretrain": (Pretrain, {"classes": 12}, "backbone."),
}


def _backbone(node: dict, shape=SHAPE) -> torch.nn.Module:
    return instantiate(node, input_shape=shape)


def _save(tmp_path: Path, model: torch.nn.Module, backbone: dict = CONV, algorithm: dict = PRETRAIN,
          name: str = "best.pt") -> Path:
    """A checkpoint as the Trainer writes one: config, weights, a manifest beside it."""
    path = tmp_path / "source" / "checkpoints" / name
    checkpoint.save({"config": {"backbone": backbone, "algorithm": algorithm}, "iteration": 7,
                     "algorithm": model.state_dict(), "optimizer": {}}, path)
    return path


@pytest.fixture
def source(tmp_path) -> tuple[Path, Pretrain]:
    torch.manual_seed(1)
    model = Pretrain(_backbone(CONV), "classification", 5, classes=40)
    with torch.no_grad():  # weights no fresh model has
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return _save(tmp_path, model), model


def _build(name: str, seed: int = 2, backbone: dict = CONV, shape=SHAPE) -> torch.nn.Module:
    cls, extra, _ = TARGETS[name]
    torch.manual_seed(seed)
    return cls(_backbone(backbone, shape), "classification", 5, **extra)


@pytest.mark.parametrize("name", TARGETS)
def test_exactly_the_backbone_tensors_are_copied(name, source):
    path, pretrained = source
    model = _build(name)
    prefix = TARGETS[name][2]
    assert find_backbone(model)[0] == prefix
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = load_backbone(model, path, backbone_config=CONV)
    after = model.state_dict()
    copied = {k for k in after if k.startswith(prefix)}
    assert copied and len(copied) == len(pretrained.backbone.state_dict())
    for key, value in after.items():
        if key in copied:
            assert torch.equal(value, pretrained.state_dict()["backbone." + key[len(prefix):]]), key
        else:  # the head, scales, learned rates: as a fresh model of this seed has them
            assert torch.equal(value, before[key]), key
    assert any(not torch.equal(after[k], before[k]) for k in copied)
    assert record == {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert len(model.meta_optimizer(1e-3).state_dict()["state"]) == 0  # built afterwards: fresh


def test_any_meta_cli_checkpoint_lends_its_backbone(tmp_path):
    """MAML from a ProtoNet body (prefix backbone. -> maml.module.0.)."""
    torch.manual_seed(3)
    protonet = ProtoNet(_backbone(CONV), "classification", 5)
    path = _save(tmp_path, protonet, algorithm={"_target_": "meta_cli.algorithms.protonet.ProtoNet"})
    maml = _build("maml")
    head = maml.maml.module[1].weight.clone()
    load_backbone(maml, path)
    for key, value in protonet.backbone.state_dict().items():
        assert torch.equal(maml.maml.module[0].state_dict()[key], value)
    assert torch.equal(maml.maml.module[1].weight, head)


def test_batch_norm_statistics_and_counters_come_along(tmp_path):
    """resnet12 keeps running statistics (buffers) and DropBlock counters (extra state)."""
    node = {"_target_": "meta_cli.models.resnet12.ResNet12", "wider": False, "running_stats": True}
    torch.manual_seed(4)
    source = ProtoNet(_backbone(node, (3, 16, 16)), "classification", 5)
    source.train()
    with torch.no_grad():
        source.backbone(torch.randn(4, 3, 16, 16))  # moves running means, counts a pass
    path = _save(tmp_path, source, backbone=node)
    target = ProtoNet(_backbone(node, (3, 16, 16)), "classification", 5)
    load_backbone(target, path, backbone_config=node)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert any("running_mean" in k for k in source.state_dict())


def test_settings_that_change_training_only_may_differ(source):
    path, _ = source
    model = _build("protonet", backbone={**CONV, "channels_last": False})
    load_backbone(model, path, backbone_config={**CONV, "channels_last": False})


def test_another_backbone_class_is_one_line(source):
    path, _ = source
    mlp = {"_target_": "meta_cli.models.mlp.MLP", "hidden": [8]}
    model = ProtoNet(_backbone(mlp), "classification", 5)
    with pytest.raises(UserError, match=r"^init=.*best.pt has a meta_cli.models.conv4.Conv4 backbone; this "
                                        r"run's is meta_cli.models.mlp.MLP. Use the same backbone="):
        load_backbone(model, path, backbone_config=mlp)


def test_other_backbone_settings_are_named(source):
    """conv4 and conv4_pool have tensors of the same shapes: the settings tell them apart."""
    path, _ = source
    strided = {**CONV, "max_pool": False}
    model = _build("protonet", backbone=strided)
    with pytest.raises(UserError, match=r"has another backbone: backbone.max_pool \(checkpoint: True, "
                                        r"now: False\)\. Use the checkpoint's backbone settings\.$"):
        load_backbone(model, path, backbone_config=strided)


def test_other_shapes_are_named(source):
    path, _ = source
    wider = _build("maml", backbone={**CONV, "hidden": 16})
    with pytest.raises(UserError, match=r"has backbone tensors of other shapes \(checkpoint vs this run\): "
                                        r"base.0.normalize.weight \(8,\) vs \(16,\), .* and \d+ more: another width"):
        load_backbone(wider, path)  # without this run's config, the shapes still tell
    colour = _build("protonet", shape=(3, 28, 28))
    with pytest.raises(UserError, match=r"\): base.0.conv.weight \(8, 1, 3, 3\) vs \(8, 3, 3, 3\): another"):
        load_backbone(colour, path, backbone_config=CONV)


def test_nothing_is_copied_when_anything_differs(source):
    path, _ = source
    model = _build("protonet", shape=(3, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError):
        load_backbone(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_missing_or_a_directory(tmp_path):
    model = _build("protonet")
    with pytest.raises(UserError, match=r"^init=.*nowhere.pt does not exist; pass a checkpoint file"):
        load_backbone(model, tmp_path / "nowhere.pt")
    with pytest.raises(UserError, match=r"is a directory"):
        load_backbone(model, tmp_path)


def test_damaged_checkpoints_are_one_line(source):
    path, _ = source
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"^init=.*best.pt: checkpoint .* is corrupt: its sha256"):
        load_backbone(_build("protonet"), path)
    checkpoint.manifest_path(path).unlink()  # no manifest to check: torch cannot read it either
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(UserError, match=r"^init=.*: checkpoint .* is not a readable PyTorch file"):
        load_backbone(_build("protonet"), path)


def test_a_file_without_a_model_is_one_line(tmp_path):
    path = tmp_path / "other.pt"
    checkpoint.save({"iteration": 1, "note": "no weights"}, path)
    with pytest.raises(UserError, match=r"holds no trained model"):
        load_backbone(_build("protonet"), path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match=r"is not a meta-cli checkpoint"):
        load_backbone(_build("protonet"), tmp_path / "foreign.pt")
