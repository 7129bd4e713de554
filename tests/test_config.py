"""Every config group option composes and validates (Hydra's compose API, no subprocess)."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from meta_cli.apps import eval as eval_app
from meta_cli.build import build_train
from meta_cli.errors import UserError

COMBINATIONS = [
    ["algorithm=maml"], ["algorithm=protonet"],
    ["backbone=conv4"], ["backbone=conv4_pool"], ["algorithm=protonet", "backbone=conv4_pool"],
    ["dataset=sinusoid"], ["dataset=sinusoid", "backbone=mlp"],
    ["device=auto"], ["device=cpu"],
]


@pytest.fixture(autouse=True)
def _data(data_root, cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


def _compose(overrides, name="train"):
    with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("overrides", COMBINATIONS, ids=" ".join)
def test_option_composes_and_builds(overrides):
    run, settings, evaluation = build_train(_compose(overrides))
    assert settings.iterations >= 1 and evaluation.episodes == 600


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
        eval_app.prepare(cfg)
