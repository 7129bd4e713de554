"""Every config group option composes and validates (Hydra's compose API, no subprocess)."""
from __future__ import annotations

import pytest
from conftest import algorithms, config_options
from hydra import compose, initialize_config_module

from meta_cli.apps import eval as eval_app
from meta_cli.config.validation import plain
from meta_cli.engine.build import TrainSpec, check_train
from meta_cli.errors import UserError

# Every algorithm on a dataset of each task it learns, and every backbone under one that takes
# it (tests/test_backbones.py trains them): discovered from conf/.
COMBINATIONS = [
    *[[f"algorithm={a}"] for a in algorithms("classification") + algorithms("classification", "batches")],
    *[["dataset=sinusoid", f"algorithm={a}"] for a in algorithms("regression")],
    *[["dataset=navigation2d", f"algorithm={a}"] for a in algorithms("rl", "rollouts")],
    *[["algorithm=protonet", f"backbone={b}"] for b in config_options("backbone") if b not in ("mlp", "none")],
    ["dataset=sinusoid", "backbone=mlp"],
    ["device=auto"], ["device=cpu"],
    ["algorithm=mann", "algorithm.inputs=pixels"], ["algorithm=meta_lstm", "backbone=cnn4"],
]
DATASETS_WITHOUT_FILES = ["mini_imagenet", "tiered_imagenet", "cifarfs", "fc100", "image_folder"]
EXPERIMENTS = ["maml_omniglot_5w1s", "maml_omniglot_20w1s", "protonet_omniglot_5w1s",
               "maml_miniimagenet_5w1s", "maml_miniimagenet_5w5s", "protonet_miniimagenet_5w5s",
               "anil_fc100_5w5s", "metaoptnet_cifarfs_5w5s"]


@pytest.fixture(autouse=True)
def _data(data_root, cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


def build_train(cfg) -> TrainSpec:
    """Check a composed training config and build its model, as a job does."""
    spec = check_train(plain(cfg))
    spec.regime.build(spec.config, spec.source)
    return spec


def _compose(overrides, name="train"):
    with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("overrides", COMBINATIONS, ids=" ".join)
def test_option_composes_and_builds(overrides):
    spec = build_train(_compose(overrides))
    assert spec.train.iterations >= 1 and spec.evaluation.episodes == 600


def test_defaults():
    cfg = _compose([])
    assert cfg.algorithm._target_.endswith("maml.MAML") and cfg.dataset._target_.endswith("omniglot.Omniglot")
    assert cfg.backbone.max_pool is False and cfg.device.kind == "auto"
    assert _compose(["algorithm=protonet"]).backbone.max_pool is True  # the paper's Conv-4
    assert _compose(["algorithm=protonet", "backbone=conv4"]).backbone.max_pool is False
    assert cfg.algorithm.first_order is False  # second order by default
    assert _compose(["dataset=sinusoid"]).backbone._target_.endswith("mlp.MLP")


def test_paper_defaults_for_maml_on_sinusoid_yield_to_the_command_line():
    assert _compose(["dataset=sinusoid"]).algorithm.fast_lr == 0.01
    assert _compose(["dataset=sinusoid", "algorithm.fast_lr=0.05"]).algorithm.fast_lr == 0.05
    assert _compose([]).algorithm.fast_lr == 0.4


def test_presets_apply_to_their_pairing_only():
    """The preset of algorithm x dataset x backbone (conf/preset/) applies to that body alone:
    another backbone or dataset keeps the group defaults (resnet12 has no `hidden` to receive);
    preset=none drops it; +experiment presets set none and say everything themselves."""
    default = _compose(["algorithm=protonet"])
    assert (default.backbone.hidden, default.train.iterations) == (128, 6400)
    assert _compose(["algorithm=protonet", "backbone=conv4_pool", "backbone.hidden=64"]).backbone.hidden == 64
    assert _compose(["algorithm=protonet", "backbone=conv4"]).backbone.hidden == 64
    assert _compose(["algorithm=protonet", "backbone=conv4"]).train.iterations == 1000
    assert _compose(["algorithm=protonet", "dataset=mini_imagenet"]).backbone.hidden == 64
    build_train(_compose(["algorithm=protonet", "backbone=resnet12"]))
    assert _compose(["algorithm=matchingnet"]).backbone.hidden == 64
    assert _compose(["+experiment=protonet_omniglot_5w1s"]).backbone.hidden == 64  # the paper's width
    bare = _compose([])
    assert (bare.train.iterations, bare.algorithm.backend) == (2300, "vmap")  # maml_omniglot_conv4
    none = _compose(["preset=none"])
    assert (none.train.iterations, none.algorithm.backend) == (1000, "l2l")  # what the files say
    assert _compose(["backbone=resnet12"]).algorithm.backend == "l2l"
    assert _compose(["preset=maml_omniglot_conv4", "dataset=sinusoid", "backbone=mlp"]).train.iterations == 2300


def test_every_preset_is_named_for_its_pairing_and_composes():
    for name in config_options("preset"):
        if name == "none":
            continue
        algorithm = next(a for a in sorted(config_options("algorithm"), key=len, reverse=True) if name.startswith(a + "_"))
        rest = name[len(algorithm) + 1:]
        dataset = next(d for d in sorted(config_options("dataset"), key=len, reverse=True) if rest.startswith(d + "_"))
        backbone = rest[len(dataset) + 1:]
        assert backbone in config_options("backbone"), name
        cfg = _compose([f"algorithm={algorithm}", f"dataset={dataset}", f"backbone={backbone}"])
        assert _compose([f"algorithm={algorithm}", f"dataset={dataset}", f"backbone={backbone}", "preset=none"]) != cfg, name


def test_cuda_group_composes():
    cfg = _compose(["device=cuda"])
    assert cfg.device.kind == "cuda"


def test_train_ways_cannot_change_maml_head():
    with pytest.raises(UserError, match="train.ways=20"):
        build_train(_compose(["train.ways=20"]))
    build_train(_compose(["algorithm=protonet", "train.ways=20"]))


def test_eval_config_composes():
    cfg = _compose(["checkpoint=x.pt", "eval.ways=[5,10]"], name="eval")
    with pytest.raises(UserError, match="does not exist"):
        eval_app.check_eval(cfg)


@pytest.mark.parametrize("dataset", DATASETS_WITHOUT_FILES)
def test_dataset_option_composes(dataset):
    """Building needs their files (tests/test_datasets.py writes small ones); composing does not."""
    cfg = _compose([f"dataset={dataset}"])
    assert cfg.dataset._target_.startswith("meta_cli.data.")
    assert cfg.backbone.max_pool is True  # cnn4 / conv4_pool: their images are not 28x28 strokes


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_preset_composes_and_the_command_line_wins(name):
    cfg = _compose([f"+experiment={name}"])
    algorithm, dataset = name.split("_")[:2]
    module = {"omniglot": "omniglot", "miniimagenet": "mini_imagenet", "fc100": "fc100", "cifarfs": "cifarfs"}
    assert cfg.algorithm._target_.split(".")[2] == algorithm
    assert cfg.dataset._target_.split(".")[2] == module[dataset]
    assert _compose([f"+experiment={name}", "train.iterations=7"]).train.iterations == 7


def test_omniglot_presets_build_on_the_minimal_files():
    for name in ("maml_omniglot_5w1s", "maml_omniglot_20w1s", "protonet_omniglot_5w1s"):
        spec = build_train(_compose([f"+experiment={name}", "dataset.variant=minimal"]))
        assert spec.train.iterations >= 20000 and spec.source.flips is False
