"""eval.cache=true: the meta-test on cached embeddings gives the uncached path's numbers, episode
for episode, for every learner whose embedding is fixed per image (on real Omniglot); it is
refused in one line where it could not."""
from __future__ import annotations

import pytest
import torch

from meta_cli.cli.preflight import compose_jobs
from meta_cli.engine.build import check_train
from meta_cli.errors import UserError
from meta_cli.evaluation import episodes

LEARNERS = ["protonet", "matchingnet", "siamese", "pretrain", "metaoptnet"]


def _model(data_root, cache_dir, monkeypatch, *overrides: str):
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    (job,) = compose_jobs("train", ["device=cpu", *overrides])
    spec = check_train(job.config)
    torch.manual_seed(0)
    return spec, spec.regime.build(spec.config, spec.source)


@pytest.mark.parametrize("learner", LEARNERS)
def test_cached_embeddings_give_the_uncached_numbers(learner, data_root, cache_dir, monkeypatch):
    spec, model = _model(data_root, cache_dir, monkeypatch, f"algorithm={learner}", "backbone=mlp",
                         "backbone.hidden=[32]", "preset=none", *(["train.batch_size=16"] if learner == "pretrain" else []))
    results = {}
    for cache in (False, True):
        settings = episodes.EvalSettings(episodes=12, ways=[5, 3], shots=[1, 2], cache=cache)
        results[cache] = episodes.test_rows(model, spec.source, settings, {})
    for plain, cached in zip(results[False], results[True]):
        assert (plain["ways"], plain["shots"]) == (cached["ways"], cached["shots"])
        assert plain["_episodes"].episode_accuracies == cached["_episodes"].episode_accuracies
        assert plain["_episodes"].episode_losses == pytest.approx(cached["_episodes"].episode_losses,
                                                                  rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("overrides, words", [
    (["algorithm=maml", "backbone=mlp"], "MAML adapts its body"),
    (["algorithm=pretrain", "algorithm.finetune=true", "backbone=mlp", "preset=none", "train.batch_size=16"],
     "finetune=true"),
    (["algorithm=protonet", "backbone=conv4", "preset=none"], "each batch's statistics"),
    (["algorithm=protonet", "backbone=mlp", "eval.split=train"], "turned, mirrored or augmented"),
])
def test_caching_that_could_not_be_exact_is_refused(overrides, words, data_root, cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_DATA", str(data_root))
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))
    (job,) = compose_jobs("train", ["device=cpu", "eval.cache=true", *overrides])
    with pytest.raises(UserError, match=words):
        check_train(job.config)
