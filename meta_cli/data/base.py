"""What every dataset gives the engine: seeded episodes by (split, index)."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from meta_cli.errors import UserError

Split = Literal["train", "val", "test", "all"]
#: "all": every class of the dataset, whatever its split (eval.split=all: meta-testing on a
#: dataset the model never saw). Its code skips 3, the mini-batches' stream (`BATCH_STREAM`).
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2, "all": 4}


@dataclass
class Episode:
    """One few-shot task.

    Classification: support (ways * shots, C, H, W), support_labels (ways * shots,) in
    0..ways-1, class-major; query (ways * query, C, H, W), query_labels (ways * query,).
    Regression: support (shots, 1), support_labels (shots, 1); query likewise.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    #: Seeds what an algorithm draws at random for this episode (Reptile's minibatch order),
    #: so that a meta-batch split across processes draws what one process draws.
    seed: int | None = None
    #: The split's class ids (ways,) int64 behind labels 0..ways-1 (label j is class
    #: classes[j]), where the sampler numbers classes: a continual learner's head has a row
    #: per class of the split. None where unknown.
    classes: torch.Tensor | None = None

    @property
    def ways(self) -> int:
        """The classes of a classification episode, whose labels are 0..ways-1 (regression: 1)."""
        if self.support_labels.is_floating_point():
            return 1
        return int(self.support_labels.max()) + 1

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(*(t.to(device, non_blocking=True) for t in
                         (self.support, self.support_labels, self.query, self.query_labels)), self.seed,
                       None if self.classes is None else self.classes.to(device))

    def generator(self) -> torch.Generator:
        """A torch generator on the episode's device, seeded by the episode (else by torch's RNG)."""
        seed = self.seed if self.seed is not None else int(torch.randint(2**62, ()).item())
        return torch.Generator(self.support.device).manual_seed(seed)


def episode_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one episode, derived from (seed, split, index) alone.

    Episodes never touch a global RNG, so the same seed gives the same episodes whatever ran
    before (evaluation is independent of training; resuming replays nothing).
    """
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


#: The config keys an episode shape comes from, by default: named in messages so that a user
#: reads the key they set (train.ways and eval.ways default to dataset.ways).
DATASET_KEYS = {"ways": "dataset.ways", "shots": "dataset.shots", "query": "dataset.query"}


#: After the split codes of `episode_rng` (0-2): the stream of the non-episodic mini-batches.
BATCH_STREAM = 3


def epoch_order(seed: int, epoch: int, examples: int) -> np.ndarray:
    """The order (a permutation of 0..examples-1) in which epoch `epoch` visits the examples.

    Its own stream, [seed, 3, 0, epoch], never meets an episode's [seed, split, index]
    (split != 3) nor a batch's augmentation stream [seed, 3, 1, index]."""
    return np.random.default_rng([seed, BATCH_STREAM, 0, epoch]).permutation(examples)


def batch_examples(seed: int, index: int, size: int, examples: int) -> np.ndarray:
    """Example ids (size,) of mini-batch number `index` (0-based): shuffled mini-batches.

    The batches are consecutive slices of an endless sequence of epochs, each a fresh
    permutation of all `examples` (`epoch_order`): batch `index` holds positions
    index * size ... index * size + size - 1, in epoch index * size // examples (and the next,
    when it straddles two). So every example is seen once per epoch, and the batch is a pure
    function of its arguments: resuming at any index draws what the first run drew.
    """
    start = index * size
    first, last = start // examples, (start + size - 1) // examples
    order = np.concatenate([epoch_order(seed, e, examples) for e in range(first, last + 1)])
    offset = start - first * examples
    return order[offset:offset + size]


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of mini-batch `index`'s augmentation (random affine), [seed, 3, 1, index]."""
    return np.random.default_rng([seed, BATCH_STREAM, 1, index])


class TaskSource(abc.ABC):
    """A dataset that yields episodes. Subclasses are Hydra `_target_`s."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    # Set at run time by the engine, not from the config.
    injected: tuple[str, ...] = ("splits",)

    ways: int
    shots: int
    query: int

    title: str = "dataset"  # its name in messages, e.g. "omniglot minimal"
    #: Whether `root` is a data root that holds this dataset's folder (`<root>/omniglot/`): eval's
    #: data_root, $META_CLI_DATA by default, then replaces it. False where `root` is the dataset
    #: itself (image_folder), which only an explicit data_root moves.
    under_data_root: bool = True

    @abc.abstractmethod
    def episode(self, split: Split, index: int, seed: int, ways: int, shots: int,
                query: int) -> Episode:
        """Episode number `index` of `split`; the same arguments give the same episode."""

    def images_per_class(self, split: Split) -> int:
        """Images of the smallest class of `split`: an episode takes shots + query of each."""
        raise NotImplementedError

    def check(self, split: Split, ways: int, shots: int, query: int,
              keys: dict[str, str] = DATASET_KEYS, use: str = "", hint: str = "") -> None:
        """Raise UserError when an episode of this shape cannot be drawn from `split`.

        `keys` names the config key each of ways, shots and query came from (the one the user
        set), `use` what the episodes are for, `hint` which other key also bounds the value.
        The message names what is short (the classes, when only some are) and a change that
        would work.
        """
        where = f"the {self.title} {split} split" + (f" ({use})" if use else "")
        tail = f" {hint}" if hint else ""
        n = self.num_classes(split)
        if ways > n:
            bound, smallest = n, split
            if keys["ways"] == DATASET_KEYS["ways"]:  # it also shapes validation and test episodes
                bound, smallest = min([(n, split)] + [(self.num_classes(s), s) for s in ("val", "test")])
            why = f" (the {smallest} split has {bound})" if bound < n else ""
            advice = [f"use {keys['ways']} <= {bound}{why}"] if bound >= 2 else []  # 2 classes at least
            advice += [a for a in [self.classes_advice(split, ways)] if a]
            raise UserError(f"{keys['ways']}={ways} is more than the {n} class{'' if n == 1 else 'es'} of "
                            f"{where}; {'; or '.join(advice) or 'give it more classes'}.{tail}")
        per_class = self.images_per_class(split)
        needed = shots + query
        if needed > per_class:
            sizes = self.class_sizes(split)
            short = sorted((k, c) for c, k in sizes.items() if k < needed)
            if short and len(short) < len(sizes):  # some classes only: name them
                shown = ", ".join(f"'{c}' ({k})" for k, c in short[:3]) + (
                    f" and {len(short) - 3} more" if len(short) > 3 else "")
                what = (f"{len(short)} of the {len(sizes)} classes of {where} {'has' if len(short) == 1 else 'have'} "
                        f"fewer images than shots + query = {shots} + {query} = {needed}: {shown}")
                fix = f"add images to {'that class' if len(short) == 1 else 'those classes'} or remove " \
                      f"{'it' if len(short) == 1 else 'them'}"
            else:
                what = (f"shots + query = {shots} + {query} is more than the {per_class} images per "
                        f"class of {where}")
                fix = ""
            if per_class - shots >= 1:
                fix = "; or ".join(filter(None, [fix, f"lower {keys['query']} to {per_class - shots}"]))
            elif per_class >= 2:
                fix = "; or ".join(filter(None, [fix, f"lower {keys['shots']} to {per_class - 1} and "
                                                      f"{keys['query']} to 1"]))
            raise UserError(f"{what}; {fix or 'every class needs 2 images at least (a support and a query image)'}."
                            f"{tail}")

    def class_sizes(self, split: Split) -> dict[str, int]:
        """Images of each class of `split` (empty where unknown): names the classes too small
        for an episode."""
        return {}

    def classes_advice(self, split: Split, ways: int) -> str:
        """How to give `split` `ways` classes, when that is the dataset's to say ('' if not)."""
        return ""

    # Non-episodic training (algorithm=pretrain): numbered mini-batches of (image, class of
    # the split). Datasets of classes get these from `sampler.ClassBatches`.

    def num_classes(self, split: Split) -> int:
        """Classes of `split` (episodes draw their ways from them; batches label them
        0..num_classes-1); with Omniglot's rotations and flips, each turned or mirrored
        character of the train split is one."""
        raise self._no_classes()

    def num_examples(self, split: Split) -> int:
        """(image, class) pairs an epoch of `split` visits: each image once per class variant."""
        raise self._no_classes()

    def batch(self, split: Split, index: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch number `index` (0-based) of `split`: images (size, C, H, W) and their
        classes (size,) int64 in 0..num_classes(split)-1; a pure function of its arguments
        (`batch_examples`, `batch_rng`), augmented as the split's episodes are."""
        raise self._no_classes()

    def _no_classes(self) -> UserError:
        return UserError(f"dataset {type(self).__name__} has no classes to train a classifier on; "
                         f"use an episodic algorithm, or a classification dataset.")

    def check_batch(self, split: Split, size: int, key: str = "train.batch_size") -> None:
        """Raise UserError when a batch of `size` cannot be drawn without repeating an example."""
        examples = self.num_examples(split)
        if size > examples:
            raise UserError(f"{key}={size} is more than the {examples} training images of the "
                            f"{split} split (each class variant counted); use {key} <= {examples}.")

    def to(self, device: torch.device) -> "TaskSource":
        """Keep the data on the training device so that sampling never copies from host."""
        return self

    def describe(self) -> dict[str, Any]:
        """What checkpoints store about the data: "splits" (class lists, also splits.json),
        for image datasets "transform" (`ImageTransform.to_dict`, replayed by `meta-cli
        predict`), and "data", how this dataset makes its episodes (plain values)."""
        return {"splits": {}}
