"""Messages as a user reads them: values in the syntax they were typed in, no empty lists, no
contradictions, files named for what is wrong with them, no library's own lines."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from test_image_folder_cli import TINY, write_images

from meta_cli.errors import shown


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("meta-cli: error: "), result.stderr
    return lines[0]


def test_values_are_shown_as_typed_not_as_python_reprs():
    assert [shown(v) for v in ("foo", True, None, ["a", 1], "0.1", {"a": [1]}, "クラス")] == [
        "foo", "true", "null", "[a, 1]", "'0.1'", "{a: [1]}", "クラス"]


@pytest.mark.parametrize("overrides, expected, absent", [
    (["train.lr_schedule=foo"], "must be one of: constant, cosine, linear; got foo.", "'foo'"),
    (["seed=true"], "seed must be an integer >= 0; got true.", "True"),
    (["train.precision=null"], "got null.", "None"),
    (["dataset=image_folder", "dataset.root=x", "dataset.mean=[a]"], "got [a].", "['a']"),
    (["algorithm=protonet", "algorithm.foo=1"], "Unknown config key 'algorithm.foo'. Allowed keys of algorithm: "
                                                "finetune, finetune_augment, finetune_lr, finetune_steps.", "no keys"),
    (["logger.foo=1"], "logger=csv has no keys to set.", "Allowed keys of logger: ."),
])
def test_bad_values_and_keys_read_as_typed(cli, overrides, expected, absent):
    line = _error_line(cli("train", *overrides))
    assert expected in line and absent not in line


def test_an_empty_image_is_called_empty(cli, tmp_path):
    images = write_images(tmp_path / "images", {f"class{c:02d}": 4 for c in range(20)})
    (images / "class05" / "9.png").write_bytes(b"")
    line = _error_line(cli("train", *TINY, f"dataset.root={images}"))
    assert f"image {images / 'class05' / '9.png'} is empty (0 bytes" in line and "PIL" not in line


@pytest.mark.slow
def test_splits_json_keeps_non_ascii_class_names(cli, tmp_path):
    images = write_images(tmp_path / "images", {**{f"class{c:02d}": 4 for c in range(19)}, "クラス 1": 4})
    result = cli("train", *TINY, f"dataset.root={images}", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "run" / "splits.json").read_bytes().decode("utf-8")
    assert "クラス 1" in text and "\\u" not in text
    assert "クラス 1" in sum(json.loads(text).values(), [])


@pytest.mark.slow
def test_a_failed_optuna_trial_is_its_own_line_only(cli, tmp_path):
    """One trial of three succeeds (meta lr 0.001), two diverge (1e30): each failure is the
    job's one line, without Hydra's "Failed experiment: Return value must be float-castable"."""
    space = '{train.meta_lr:"choice(0.001,1e30)",algorithm.fast_lr:"choice(0.01)",algorithm.adaptation_steps:"choice(1)"}'
    result = cli("train", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=minimize",
                 "dataset=sinusoid", "train.iterations=3", "train.val_every=3", "train.val_episodes=2",
                 "eval.episodes=2", "train.progress=false", f"hydra.sweeper.params={space}", "hydra.sweep.dir=sweep")
    output = result.stdout + result.stderr
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert sorted(summary["status"]) == ["failed", "failed", "ok"], output
    assert result.returncode == 1 and (tmp_path / "sweep" / "optimization_results.yaml").is_file()
    assert "Failed experiment" not in output and "float-castable" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("meta-cli: error:")]
    assert len(errors) == 2 and all("train loss is nan" in e for e in errors), result.stderr
