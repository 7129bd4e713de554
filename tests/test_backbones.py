"""The cnn4, resnet12 and wrn28 backbones: shapes, input checks, equality with learn2learn's
classes, and one real `meta-cli train` run each.

Small widths (resnet12 wider=false, wrn28 widen_factor=1) keep this fast on CPU; the full
widths are checked by parameter shapes only.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

from meta_cli._l2l import l2l
from meta_cli.errors import UserError
from meta_cli.models.conv4 import Conv4
from meta_cli.models.resnet12 import ResNet12
from meta_cli.models.wrn28 import WRN28
from meta_cli.config.validation import check_node

SHAPES = [(3, 84, 84), (3, 32, 32), (1, 28, 28)]


def _preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml"))


def _same_shapes(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Same parameter names and shapes (buffers aside: Conv4 keeps no running statistics)."""
    assert {k: v.shape for k, v in ours.named_parameters()} == \
        {k: v.shape for k, v in theirs.named_parameters()}


@pytest.mark.parametrize("name", ["cnn4", "resnet12", "wrn28"])
def test_presets_validate(name):
    check_node(_preset(name), "backbone")


# --- cnn4 ------------------------------------------------------------------------------

def test_cnn4_is_learn2learns_cnn4_backbone():
    node = _preset("cnn4")
    assert node["hidden"] == 32 and node["max_pool"] is True
    torch.manual_seed(0)
    theirs = l2l.vision.models.CNN4Backbone(hidden_size=32, channels=3)
    ours = Conv4((3, 84, 84), hidden=32, max_pool=True, layers=4, channels_last=node["channels_last"])
    _same_shapes(ours.base, theirs)
    ours.base.load_state_dict(theirs.state_dict(), strict=False)  # their running stats: unused
    x = torch.randn(4, 3, 84, 84)
    # learn2learn in training mode normalises with batch statistics, as Conv4 always does.
    expected = theirs(x)
    assert ours.out_features == 800 == expected.shape[1]  # 32 * 5 * 5 on mini-ImageNet
    assert torch.allclose(ours(x), expected, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_cnn4_shapes(shape):
    model = Conv4(shape, hidden=8, max_pool=True)
    side = shape[1] // 16
    assert model.out_features == 8 * side * side
    assert model(torch.randn(3, *shape)).shape == (3, model.out_features)



def test_pool_last_false_keeps_the_last_feature_map():
    """pool_last=false: the same blocks without the final 2x2 max-pool, so pooling its output
    gives the default's embedding (on 28x28: 3x3 -> 1x1 keeps the top-left 2x2 only)."""
    torch.manual_seed(0)
    pooled = Conv4((1, 28, 28), max_pool=True)
    full = Conv4((1, 28, 28), max_pool=True, pool_last=False)
    full.load_state_dict(pooled.state_dict())
    x = torch.rand(6, 1, 28, 28)
    maps = full(x).view(6, 64, 3, 3)
    assert full.out_features == 576 and pooled.out_features == 64
    assert torch.allclose(torch.nn.functional.max_pool2d(maps, 2).flatten(1), pooled(x), atol=1e-6)
    # three pools, not four: 8x8 images are enough, 4x4 are not
    assert Conv4((3, 8, 8), hidden=4, max_pool=True, pool_last=False).out_features == 4
    with pytest.raises(UserError, match="at least 8x8"):
        Conv4((3, 4, 4), hidden=4, max_pool=True, pool_last=False)


def test_widths_set_each_blocks_channels():
    """backbone.widths: learn2learn's ConvBlocks at per-block widths, batch statistics only;
    with equal widths it is the `hidden` model (same parameters, same output)."""
    model = Conv4((1, 28, 28), max_pool=True, widths=[8, 16, 16, 12])
    assert [tuple(b.conv.weight.shape) for b in model.base] == [(8, 1, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (12, 16, 3, 3)]
    assert model.out_features == 12 and not list(model.buffers())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 12)
    torch.manual_seed(0)
    uniform = Conv4((1, 28, 28), hidden=8, max_pool=True, layers=3)
    listed = Conv4((1, 28, 28), max_pool=True, widths=[8, 8, 8])
    listed.load_state_dict(uniform.state_dict())
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(listed(x), uniform(x), atol=1e-6)


@pytest.mark.parametrize("widths", [[], [8, 0]])
def test_widths_rejects_empty_or_zero(widths):
    with pytest.raises(UserError, match="one channel count >= 1 per block"):
        Conv4((1, 28, 28), max_pool=True, widths=widths)


def test_cnn4_rejects_non_images():
    with pytest.raises(UserError, match="needs images"):
        Conv4((1,), hidden=8, max_pool=True)


def test_cnn4_rejects_too_small_images():
    with pytest.raises(UserError, match="at least 16x16"):
        Conv4((3, 8, 8), hidden=8, max_pool=True)


# --- resnet12 --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_resnet12_shapes(shape):
    model = ResNet12(shape, wider=False)
    assert model.out_features == 512
    y = model(torch.randn(3, *shape))
    assert y.shape == (3, 512) and y.dtype == torch.float32


def test_resnet12_flattened_and_default_width():
    model = ResNet12((3, 32, 32), wider=False, avg_pool=False)
    assert model.out_features == 512 * 2 * 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    assert ResNet12((3, 32, 32)).out_features == 640  # wider: MetaOptNet's 64-160-320-640


def test_resnet12_is_learn2learns_on_84():
    torch.manual_seed(0)
    theirs = l2l.vision.models.ResNet12Backbone(wider=False, dropblock_dropout=0.0)
    ours = ResNet12((3, 84, 84), wider=False, dropblock_dropout=0.0)
    assert all(b.sum() == 0 for n, b in ours.named_buffers() if n.endswith("running_mean"))  # dry run left none
    missing, unexpected = ours.net.load_state_dict(theirs.state_dict(), strict=False)
    assert not unexpected and missing == [f"layer{i}.0._extra_state" for i in range(1, 5)]  # counters
    x = torch.randn(2, 3, 84, 84)
    assert torch.allclose(ours(x), theirs(x), atol=1e-4)  # training mode: batch statistics
    ours.eval(), theirs.eval()
    assert torch.allclose(ours(x), theirs(x), atol=1e-4)  # eval: the running statistics


def test_resnet12_dropblock_size():
    # null: the last map's side, at most 5 (MetaOptNet: 5 on 84x84, 2 on 32x32).
    assert ResNet12((3, 84, 84), wider=False).net.layer4[0].block_size == 5
    assert ResNet12((3, 32, 32), wider=False).net.layer4[0].block_size == 2
    with pytest.raises(UserError, match=r"dropblock_size<=1 .*dropblock_dropout=0"):
        ResNet12((1, 28, 28), dropblock_size=5)
    ResNet12((1, 28, 28), wider=False, dropblock_size=5, dropblock_dropout=0.0)  # no DropBlock: fine


def test_resnet12_dropblock_warmup_is_checkpointed():
    model = ResNet12((3, 32, 32), wider=False)
    block = model.net.layer4[0]
    assert block.num_batches_tracked == 0  # the dry run is not counted
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    state = model.state_dict()
    assert block.num_batches_tracked == 1 and state["net.layer4.0._extra_state"].item() == 1
    resumed = ResNet12((3, 32, 32), wider=False)
    resumed.load_state_dict(state)
    assert resumed.net.layer4[0].num_batches_tracked == 1


def test_resnet12_batch_statistics_option():
    model = ResNet12((1, 28, 28), wider=False, running_stats=False)
    assert not [n for n, _ in model.named_buffers() if "running" in n]
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), model(x))


@pytest.mark.parametrize("shape, match", [((1,), "needs images"), ((784,), "needs images"),
                                          ((3, 8, 8), "at least 16x16")])
def test_resnet12_rejects_bad_shapes(shape, match):
    with pytest.raises(UserError, match=match):
        ResNet12(shape)


def test_resnet12_rejects_dropout_of_one():
    with pytest.raises(UserError, match="embedding_dropout must be < 1"):
        ResNet12((1, 28, 28), embedding_dropout=1.0)


# --- wrn28 -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_wrn28_shapes(shape):
    model = WRN28(shape, widen_factor=1)
    assert model.out_features == 64
    y = model(torch.randn(3, *shape))
    assert y.shape == (3, 64) and y.dtype == torch.float32


def test_wrn28_default_is_learn2learns_wrn28_backbone():
    ours = WRN28((3, 8, 8))  # a small image: the dry run of WRN-28-10 is cheap there
    assert ours.out_features == 640
    _same_shapes(ours.net, l2l.vision.models.WRN28Backbone())
    assert WRN28((1, 8, 8), widen_factor=1).net.conv1.weight.shape == (16, 1, 3, 3)


def test_wrn28_is_learn2learns_on_84():
    torch.manual_seed(0)
    theirs = l2l.vision.models.wrn28.WideResNet(depth=28, widen_factor=1, dropout_rate=0.0)
    ours = WRN28((3, 84, 84), widen_factor=1)
    ours.net.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 84, 84)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    ours.eval(), theirs.eval()
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("shape, match", [((1,), "needs images"), ((3, 3, 3), "at least 4x4")])
def test_wrn28_rejects_bad_shapes(shape, match):
    with pytest.raises(UserError, match=match):
        WRN28(shape, widen_factor=1)


def test_embeddings_stay_float32_under_bf16_autocast():
    x = torch.randn(2, 1, 28, 28)
    for model in (ResNet12((1, 28, 28), wider=False), WRN28((1, 28, 28), widen_factor=1)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.float32


# --- the real CLI ----------------------------------------------------------------------

# seed=1: with seed 0 one episode's near-zero ProtoNet loss gives denormal gradients, whose
# backward through ResNet-12 is ~50x slower on x86 CPUs without flush-to-zero (+4 s here).
SMALL = ["seed=1", "dataset=omniglot", "dataset.ways=2", "dataset.query=1", "train.ways=null",
         "train.meta_batch_size=1", "train.iterations=2", "train.val_every=2",
         "train.val_episodes=2", "eval.episodes=3", "train.progress=false"]


@pytest.mark.parametrize("algorithm, backbone, options", [
    ("maml", "cnn4", []),
    ("protonet", "resnet12", ["backbone.wider=false"]),
    ("protonet", "wrn28", ["backbone.widen_factor=1"]),
])
def test_train_runs(cli, tmp_path, algorithm, backbone, options):
    result = cli("train", f"algorithm={algorithm}", f"backbone={backbone}", *options, *SMALL,
                 f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(Path(tmp_path) / "run" / "accuracy.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["backbone"] == backbone and row["episodes"] == "3"
    assert 0.0 <= float(row["accuracy"]) <= 1.0
