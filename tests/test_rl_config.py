"""The RL options of the dataset and algorithm groups map onto their constructors."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from meta_cli.errors import UserError
from meta_cli.config.validation import check_node

CONF = Path(__file__).resolve().parents[1] / "conf"
RL_FILES = [("dataset", n) for n in ("navigation2d", "halfcheetah_dir", "halfcheetah_vel")] + \
           [("algorithm", n) for n in ("maml_trpo", "pretrain_rl", "random_init_rl")]


def node(group: str, name: str) -> dict:
    """The option's node as Hydra composes it: its defaults list is not a key of the node."""
    config = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    config.pop("defaults", None)
    return config


@pytest.mark.parametrize("group,name", RL_FILES)
def test_every_key_of_the_rl_yaml_files_is_a_constructor_parameter(group, name):
    check_node(node(group, name), group)


@pytest.mark.parametrize("key,value,message", [
    ("horizon", 0, "dataset.horizon must be an integer >= 1; got 0"),
    ("trajectories", -3, "dataset.trajectories must be an integer >= 1; got -3"),
])
def test_validation_refuses_a_non_positive_horizon_or_batch_of_trajectories(key, value, message):
    config = node("dataset", "navigation2d")
    config[key] = value
    with pytest.raises(UserError, match=message):
        check_node(config, "dataset")


def test_an_unknown_outer_step_is_refused():
    config = node("algorithm", "maml_trpo")
    config["outer"] = "sgd"
    with pytest.raises(UserError, match="algorithm.outer must be one of: trpo, ppo"):
        check_node(config, "algorithm")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "preset").glob("*.yaml")
                                          if p.stem.startswith(("maml_trpo_", "pretrain_rl_"))))
def test_the_rl_presets_set_existing_keys(preset):
    algorithm = "maml_trpo" if preset.startswith("maml_trpo_") else "pretrain_rl"
    overrides = OmegaConf.to_container(OmegaConf.load(CONF / "preset" / f"{preset}.yaml"))
    check_node({**node("algorithm", algorithm), **overrides.get("algorithm", {})}, "algorithm")
    assert set(overrides) <= {"algorithm", "train", "dataset"}
    assert set(overrides.get("train", {})) <= {"meta_batch_size", "iterations"}
