"""Numbered mini-batches of (image, class) for non-episodic training (algorithm=pretrain):
on the real Omniglot minimal data with its splits, and on mini-ImageNet pickles in the real
format. One epoch visits every training image once as each of its class variants, and never
an image of a validation or test character."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
import torch
from test_datasets import CLASSES, PER_CLASS, levels, write_mini

from meta_cli.data import omniglot_files
from meta_cli.data.base import batch_examples, batch_rng, epoch_order
from meta_cli.data.mini_imagenet import MEAN, STD, MiniImagenet
from meta_cli.data.omniglot import VARIANT_FILES, Omniglot
from meta_cli.data.sinusoid import Sinusoid
from meta_cli.errors import UserError

VARIANTS = 8  # rotations and flips: Omniglot's defaults


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("META_CLI_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def omniglot(data_root, cache_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("META_CLI_CACHE", str(cache_dir))
        return Omniglot(str(data_root), download=False, rotations=True, flips=True, augment=False)


def _key(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).digest()


def _variant(images: torch.Tensor, variant: int) -> torch.Tensor:
    """The documented numbering: class v is base v // 8 turned (v % 4) * 90 degrees, mirrored
    when (v // 4) % 2 (meta_cli/data/sampler.py)."""
    turned = images.flip(-1) if variant // 4 else images
    return torch.rot90(turned, variant % 4, dims=(-2, -1))


def _expected(source: Omniglot, split: str, variants: int) -> Counter:
    """Counter of (image, class) over every image of `split`'s characters and variants, from
    the zips' decoded images themselves."""
    zips = omniglot_files.ensure_zips(source.folder, VARIANT_FILES[source.variant], download=False)
    decoded = omniglot_files.decode(zips)  # the zips decoded here, apart from the dataset's cache
    starts = np.cumsum([0, *decoded.counts])
    by_name = {c: np.arange(a, b) for c, a, b in zip(decoded.classes, starts[:-1], starts[1:])}
    pixels = decoded.images.float().div(255)
    pairs: Counter = Counter()
    for base, character in enumerate(source.splits[split]):
        members = pixels[torch.from_numpy(by_name[character])]
        for v in range(variants):
            pairs.update((_key(im), base * variants + v) for im in _variant(members, v))
    return pairs


def test_an_epoch_is_every_training_image_as_every_class_variant_once(omniglot):
    size = 256
    examples = omniglot.num_examples("train")
    assert examples == 136 * 20 * VARIANTS  # 136 characters of 20 drawings, 8 variants each
    assert omniglot.num_classes("train") == 136 * VARIANTS
    seen: Counter = Counter()
    for index in range(examples // size):  # 85 batches: exactly one epoch
        images, labels = omniglot.batch("train", index, seed=3, size=size)
        assert images.shape == (size, 1, 28, 28) and labels.dtype == torch.int64
        seen.update(zip(map(_key, images), labels.tolist()))
    assert seen == _expected(omniglot, "train", VARIANTS)
    assert {label for _, label in seen} == set(range(136 * VARIANTS))  # every class


def test_batches_never_hold_a_validation_or_test_character(omniglot):
    held_out = {key for split in ("val", "test") for key, _ in _expected(omniglot, split, VARIANTS)}
    assert len(held_out) > 100 * 20
    for index in range(0, 85, 7):
        images, _ = omniglot.batch("train", index, seed=0, size=256)
        assert not held_out & set(map(_key, images))


def test_batches_are_a_pure_function_of_seed_and_index(data_root):
    a = Omniglot(str(data_root), download=False, flips=True, augment=True)  # conf's defaults
    b = Omniglot(str(data_root), download=False, flips=True, augment=True)
    first = a.batch("train", 5, seed=1, size=64)
    a.batch("train", 6, seed=1, size=64)  # other draws in between change nothing
    a.episode("train", 0, 1, 5, 1, 5)
    torch.manual_seed(123)
    np.random.seed(123)
    for x, y in zip(first, b.batch("train", 5, seed=1, size=64)):
        assert torch.equal(x, y)
    assert not torch.equal(first[1], a.batch("train", 6, seed=1, size=64)[1])
    assert not torch.equal(first[1], a.batch("train", 5, seed=2, size=64)[1])


def test_augmentation_draws_from_its_own_stream(data_root, omniglot):
    """The same examples (labels) with and without dataset.augment: the shuffle does not
    depend on the augmentation's draws; the images differ by the random affine only."""
    augmented = Omniglot(str(data_root), download=False, flips=True, augment=True)
    plain_images, plain_labels = omniglot.batch("train", 2, seed=0, size=32)
    images, labels = augmented.batch("train", 2, seed=0, size=32)
    assert torch.equal(labels, plain_labels)
    assert not torch.equal(images, plain_images)


def test_batches_cut_epochs_in_order_across_their_boundaries():
    examples, size = 10, 4  # batch 2 holds the last 2 of epoch 0 and the first 2 of epoch 1
    stream = np.concatenate([batch_examples(7, i, size, examples) for i in range(5)])
    assert np.array_equal(stream, np.concatenate([epoch_order(7, 0, 10), epoch_order(7, 1, 10)]))
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(epoch_order(7, 0, 10), epoch_order(7, 1, 10))
    assert np.array_equal(batch_examples(7, 3, size, examples), batch_examples(7, 3, size, examples))


def test_batch_streams_differ_from_episode_streams():
    from meta_cli.data.base import episode_rng
    draws = {tuple(rng.integers(0, 2**32, 4)) for rng in
             (episode_rng(0, "train", 0), episode_rng(0, "val", 0), episode_rng(0, "test", 0),
              batch_rng(0, 0), np.random.default_rng([0, 3, 0, 0]))}
    assert len(draws) == 5


def test_batch_size_larger_than_the_training_images_is_one_line(omniglot):
    omniglot.check_batch("train", 21760)
    with pytest.raises(UserError, match=r"^train.batch_size=21761 is more than the 21760 training images "
                                        r"of the train split .*use train.batch_size <= 21760\.$"):
        omniglot.check_batch("train", 21761)


def test_a_regression_dataset_has_no_batches():
    with pytest.raises(UserError, match="Sinusoid has no classes to train a classifier on"):
        Sinusoid().num_examples("train")
    with pytest.raises(UserError, match="has no classes"):
        Sinusoid().batch("train", 0, 0, 4)


def test_mini_imagenet_pickles_give_batches_of_the_train_split(tmp_path):
    write_mini(tmp_path)
    source = MiniImagenet(str(tmp_path), download=False)
    examples = CLASSES * PER_CLASS
    assert source.num_examples("train") == examples and source.num_classes("train") == CLASSES
    images, labels = source.batch("train", 0, seed=0, size=examples)  # one whole epoch
    assert images.shape == (examples, 3, 84, 84) and images.dtype == torch.float32
    level = levels(images, MEAN, STD)  # 80 * split + 10 * class + image
    assert ((level // 80) == 0).all()  # the train pickle only
    assert torch.equal((level % 80) // 10, labels)  # class id = the sorted wnid's index
    assert sorted(level.tolist()) == sorted(10 * c + i for c in range(CLASSES) for i in range(PER_CLASS))
    again = MiniImagenet(str(tmp_path), download=False).batch("train", 0, seed=0, size=examples)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    with pytest.raises(UserError, match=f"train.batch_size={examples + 1} is more than the {examples}"):
        source.check_batch("train", examples + 1)
