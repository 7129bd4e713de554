"""A trained model applied to your own labelled and unlabelled images.

    learner = meta_cli.load("outputs/<run>/checkpoints/best.pt")
    result = learner.predict(["a1.png", "b1.png"], ["alpha", "beta"], ["x.png", "y.png"])
    result.labels, result.scores        # ['beta', 'alpha'], tensor([0.97, 0.88])

Images go through the checkpoint's own `ImageTransform`, the one that made the training data
(`pixels`: channels, LANCZOS resize, Omniglot's inversion; `to_input`: 0..1, mean/std). The
model adapts to the support set exactly as in meta-testing (`Algorithm.query_logits`: MAML's
test-time inner loop, ProtoNet's prototypes).

Batch norm uses the statistics of each batch, as in training and meta-testing, so the
prediction for one query image depends on the other query images given with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence, Union

import torch
from PIL import Image

from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import Episode
from meta_cli.data.image_files import decode_image
from meta_cli.data.transform import ImageTransform
from meta_cli.runtime.device import pick_device
from meta_cli.engine import build
from meta_cli.errors import UserError

#: One image: a file path, a PIL image, or a tensor that is already a model input.
ImageLike = Union[str, os.PathLike, Image.Image, torch.Tensor]
#: Several images: a sequence of ImageLike, or one (N, C, H, W) tensor.
Images = Union[Sequence[ImageLike], torch.Tensor, ImageLike]


@dataclass
class Predictions:
    """The answer for n query images of a `ways`-class support set."""

    labels: list[Any]  # n predicted labels, taken from support_labels
    scores: torch.Tensor  # (n,) softmax probability of the predicted label
    probabilities: torch.Tensor  # (n, ways), columns in the order of `classes`
    classes: list[Any]  # the distinct support labels, in order of first appearance


class Learner:
    """A restored meta-learner; `predict` adapts it to a support set and labels a query set.

    Nothing is kept between calls: every `predict` starts from the meta-trained weights.
    """

    def __init__(self, algorithm: Algorithm, transform: ImageTransform, device: torch.device,
                 path: Path) -> None:
        self.algorithm = algorithm.to(device).eval()
        self.transform = transform
        self.device = device
        self.path = path
        self.input_shape: tuple[int, ...] = transform.shape

    @property
    def ways(self) -> int | None:
        """The number of support classes the model requires (MAML's fixed head), else None."""
        return self.algorithm.outputs if self.algorithm.fixed_ways else None

    def check_classes(self, count: int) -> None:
        """UserError unless a support set of `count` classes can be predicted from."""
        name = type(self.algorithm).__name__
        if self.ways is not None and count != self.ways:
            raise UserError(f"the support set has {count} classes but this {name} model was trained "
                            f"{self.ways}-way: its output layer is fixed, so give exactly "
                            f"{self.ways} classes (or use a protonet checkpoint, which takes any number).")
        if count < 2:
            raise UserError(f"the support set has {count} class; {name} needs at least 2 to choose from.")

    def preprocess(self, images: Images, what: str = "image") -> torch.Tensor:
        """Images -> (N, C, H, W) float model inputs on the CPU, as the training data.

        Paths and PIL images are preprocessed as the training data was; tensors are taken as
        model inputs already, (C, H, W) each or (N, C, H, W) together. `what` ("support",
        "query") names the set in error messages.
        """
        items = self._items(images)
        if not items:
            raise UserError(f"no {what} images given.")
        return torch.stack([self._one(item, f"{what} image {i}") for i, item in enumerate(items)])

    def _items(self, images: Images) -> list[ImageLike]:
        if isinstance(images, torch.Tensor):
            if images.dim() == len(self.input_shape) + 1:
                return list(images)
            return [images]
        if isinstance(images, (str, os.PathLike, Image.Image)):
            return [images]
        return list(images)

    def _one(self, item: ImageLike, where: str) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            try:
                data = Path(item).expanduser().read_bytes()
            except OSError as exc:
                raise UserError(f"cannot read image {item}: {exc.strerror or exc}.")
            pixels = decode_image(data, str(item), self.transform)
        elif isinstance(item, Image.Image):
            try:
                pixels = self.transform.pixels(item)
            except Exception as exc:  # PIL raises many types for a bad image
                raise UserError(f"cannot preprocess {where} (a PIL image): {exc}")
        elif isinstance(item, torch.Tensor):
            return self._tensor(item, where)
        else:
            raise UserError(f"{where} is a {type(item).__name__}; give a file path, a PIL image "
                            f"or a tensor.")
        return self.transform.to_input(pixels[None])[0]

    def _tensor(self, item: torch.Tensor, where: str) -> torch.Tensor:
        if tuple(item.shape) != self.input_shape:
            raise UserError(f"{where} is a tensor of shape {tuple(item.shape)}; this model takes "
                            f"{self.input_shape} (or a batch (N, {', '.join(map(str, self.input_shape))})).")
        model_input = self.transform.describe_input()
        if not item.is_floating_point():
            raise UserError(f"{where} is a {item.dtype} tensor; tensors are taken as preprocessed "
                            f"model inputs ({model_input}): pass raw pixels as a PIL image.")
        unnormalised = self.transform.mean is None  # model inputs are 0..1 exactly then
        if unnormalised and item.numel() and (item.min() < 0 or item.max() > 1):
            raise UserError(f"{where} has values outside 0..1; tensors are taken as preprocessed "
                            f"model inputs ({model_input}): pass raw pixels as a PIL image.")
        return item.detach().float().cpu()

    def predict(self, support: Images, support_labels: Sequence[Hashable] | torch.Tensor,
                query: Images) -> Predictions:
        """Adapt to the labelled support images, then label each query image.

        support: k images (paths, PIL images, tensors (C, H, W) or one (k, C, H, W) tensor);
        support_labels: k labels of any hashable kind (class names); query: n images, same
        kinds. Returns n labels from support_labels with their softmax scores.
        """
        x_support = self.preprocess(support, "support")
        x_query = self.preprocess(query, "query")
        labels = support_labels.tolist() if isinstance(support_labels, torch.Tensor) else list(support_labels)
        if len(labels) != len(x_support):
            raise UserError(f"{len(x_support)} support images but {len(labels)} support labels; "
                            f"give one label per image.")
        try:
            classes = list(dict.fromkeys(labels))  # first appearance: the caller decides the order
        except TypeError as exc:
            raise UserError(f"support labels must be hashable (names or numbers): {exc}.")
        self.check_classes(len(classes))
        index = {c: i for i, c in enumerate(classes)}
        y_support = torch.tensor([index[c] for c in labels])
        # query_labels are never read by query_logits; -1 would fail loudly if they were.
        episode = Episode(x_support, y_support, x_query, torch.full((len(x_query),), -1))
        with torch.no_grad():
            logits = self.algorithm.query_logits(episode.to(self.device), training=False).float().cpu()
        probabilities = logits.softmax(dim=1)  # (n, ways)
        best = logits.argmax(dim=1)  # the class eval's accuracy counts, ties included
        return Predictions(labels=[classes[i] for i in best.tolist()],
                           scores=probabilities.gather(1, best[:, None]).squeeze(1),
                           probabilities=probabilities, classes=classes)


def restore(path: str | os.PathLike, device: torch.device, test_time: dict[str, Any] | None = None) -> Learner:
    """Load `path` (verified, tensors only), rebuild its model and weights on `device`, with the
    algorithm's `test_time` settings (e.g. {"head": "logistic"}) over the checkpoint's and the
    image transform it was trained with."""
    restored = build.restore(path, test_time, open_data=False)
    transform = ImageTransform.from_dict(restored.payload["transform"])  # checked by restore
    return Learner(restored.model, transform, device, restored.path)


def load(checkpoint: str | os.PathLike, device: str | torch.device = "auto", **test_time: Any) -> Learner:
    """The learner saved in `checkpoint` (a .pt written by `meta-cli train`).

    device: "auto" (cuda when visible, else cpu), "cpu", "cuda", or any torch device.
    test_time: the algorithm's test-time settings, as `meta-cli eval algorithm.KEY=VALUE` takes
    them, e.g. load(path, head="logistic") for a pretrain checkpoint.
    Problems with the file or the model are a UserError with a one-line message.
    """
    if device in ("auto", "cpu", "cuda"):
        device = pick_device(device)  # type: ignore[arg-type]
    return restore(checkpoint, torch.device(device), test_time)
