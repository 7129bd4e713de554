"""backbone=timm: a small timm model's weights saved to a file and loaded through
backbone.weights= give the saved model's embedding; freeze and body_lr_scale; the one-line
refusals (a name timm does not know, weights of other shapes, weights=hub offline)."""
from __future__ import annotations

import csv

import pytest
import torch

timm = pytest.importorskip("timm")

from meta_cli.algorithms.protonet import ProtoNet  # noqa: E402
from meta_cli.errors import UserError  # noqa: E402
from meta_cli.models.timm import Timm  # noqa: E402

NAME = "test_resnet"  # timm's own tiny test network: 0.4 M parameters, 96 features


def _saved(tmp_path, suffix: str):
    """A timm model with its classifier (as published weights are), saved; the model."""
    torch.manual_seed(1)
    model = timm.create_model(NAME, num_classes=10).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_from_a_file_give_the_saved_models_embedding(tmp_path, suffix):
    path, saved = _saved(tmp_path, suffix)
    body = Timm((3, 32, 32), NAME, weights=str(path), image_size=32).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = saved.forward_head(saved.forward_features(x), pre_logits=True)
        assert torch.allclose(body(x), expected, atol=1e-6, rtol=0)
    assert body.out_features == 96 == expected.shape[1]


def test_freeze_keeps_the_body_as_loaded_and_body_lr_scale_slows_it(tmp_path):
    frozen = Timm((3, 32, 32), NAME, freeze=True, image_size=32).train()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.body.training
    norm = Timm((3, 32, 32), NAME, freeze="norm", image_size=32).train()
    norms = [m for m in norm.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training and not m.weight.requires_grad for m in norms)
    assert norm.body.conv1[0].weight.requires_grad and norm.body.training
    model = ProtoNet(Timm((3, 32, 32), NAME, image_size=32), "classification", 5)
    (group,) = model.meta_optimizer(0.01).param_groups
    (body,) = model.meta_optimizer(0.01, body_lr_scale=0.1).param_groups  # ProtoNet is all body
    assert group["lr"] == 0.01 and body["lr"] == pytest.approx(0.001)
    with pytest.raises(UserError, match="every parameter is frozen"):
        ProtoNet(frozen, "classification", 5).meta_optimizer(0.01)


def test_a_timm_body_trains_and_is_evaluated_on_omniglot_and_digits(cli, tmp_path):
    """Omniglot's 1x28x28 inverted strokes brought to the body's RGB 32x32; the checkpoint
    records that input, which cross-domain eval brings a folder of RGB images to."""
    from test_cross_domain import write_digits

    path, _ = _saved(tmp_path, ".safetensors")
    result = cli("train", "algorithm=protonet", "backbone=timm", f"backbone.name={NAME}", f"backbone.weights={path}",
                 "backbone.image_size=32", "train.body_lr_scale=0.1", "train.iterations=2", "train.meta_batch_size=2",
                 "train.val_every=2", "train.val_episodes=2", "eval.episodes=2", "train.progress=false", "device=cpu",
                 "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert payload["transform"]["size"] == 32 and payload["transform"]["channels"] == 3
    digits = write_digits(tmp_path / "digits")
    result = cli("eval", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "dataset=image_folder",
                 f"dataset.root={digits}", "eval.split=all", "eval.episodes=2", "eval.query=2", "device=cpu",
                 "hydra.run.dir=eval")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "eval" / "accuracy.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["backbone"] == "timm" and row["eval_dataset"].startswith("image_folder:")


def test_refusals_are_one_line(cli, tmp_path, data_root, cache_dir, monkeypatch):
    """A name timm does not know and weights of other shapes, in the pre-flight's check (in this
    process); weights=hub without the internet through the CLI: one line, no run dir."""
    from meta_cli.cli.preflight import compose_jobs
    from meta_cli.engine.build import check_train

    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    path, saved = _saved(tmp_path, ".pt")
    state = saved.state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "wrong.pt")
    base = ["algorithm=protonet", "backbone=timm", "backbone.image_size=32", "device=cpu"]
    for args, words in (([*base, "backbone.name=no_such_net"], "not a timm model"),
                        (["algorithm=maml", *base[1:], f"backbone.name={NAME}", "backbone.freeze=norm"],
                         "backbone.freeze=norm applies to learners"),
                        ([*base, f"backbone.name={NAME}", f"backbone.weights={tmp_path / 'wrong.pt'}"],
                         "conv1.0.weight (3, 3, 3, 3)")):
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
            (job,) = compose_jobs("train", args)
            check_train(job.config)
    # Offline as huggingface_hub is told (HF_HUB_OFFLINE), and as a machine without a route to
    # the hub is (an endpoint that does not resolve): one line, at once, no run dir.
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "https://hub.invalid"}):
        result = cli("train", *base, f"backbone.name={NAME}", "backbone.weights=hub", "hydra.run.dir=refused",
                     env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1 and "offline" in lines[0], result.stderr
        assert not (tmp_path / "refused").exists()
