"""ImageTransform: the pixels and model inputs it makes (checked against values computed by
hand), its round trip through a checkpoint, and what predict does without one."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from meta_cli.data.mini_imagenet import MEAN, STD
from meta_cli.data.omniglot_files import TRANSFORM as OMNIGLOT
from meta_cli.data.transform import ImageTransform
from meta_cli.engine.build import _shape
from meta_cli.errors import UserError

TRANSFORMS = [OMNIGLOT, ImageTransform(84, 3, mean=MEAN, std=STD), ImageTransform(12, 1),
              ImageTransform(16, 1, mean=[0.5], std=[0.25])]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _image(rows: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.array(rows, dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("transform", TRANSFORMS, ids=str)
def test_round_trip_through_a_checkpoint(transform, tmp_path):
    values = transform.to_dict()
    assert json.loads(json.dumps(values)) == values  # plain values only
    buffer = io.BytesIO()
    torch.save({"transform": values}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["transform"]
    again = ImageTransform.from_dict(loaded)
    assert again == transform and hash(again) == hash(transform)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    assert torch.equal(again(image), transform(image))


@pytest.mark.parametrize("values, message", [
    ({"size": 28, "channels": 1, "gamma": 2.2}, "unknown keys"),
    ({"channels": 1}, "missing"),
    ({"size": 28, "channels": 2}, "channels must be 1 or 3"),
    ({"size": 0, "channels": 1}, "size must be"),
    ({"size": 28, "channels": 1, "resize": "bicubic"}, "resize must be"),
    ({"size": 28, "channels": 3, "mean": [0.5], "std": [0.2]}, "3 values"),
    ({"size": 28, "channels": 1, "mean": [0.5], "std": None}, "both"),
    ({"size": 28, "channels": 1, "mean": [0.5], "std": [0.0]}, "> 0"),
    ({"size": 28, "channels": 1, "mean": 0.5, "std": 0.2}, "float"),
    ({"size": 28, "channels": 1, "invert": "yes"}, "invert"),
    ([28, 1], "a transform is a dict"),
])
def test_from_dict_refuses_what_to_dict_never_writes(values, message):
    with pytest.raises(ValueError, match=message):
        ImageTransform.from_dict(values)


def test_pixels_by_hand():
    image = _image([[RED, GREEN], [BLUE, (10, 20, 30)]])
    rgb = ImageTransform(2, 3).pixels(image)
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 2, 2)
    assert rgb[:, 0, 0].tolist() == [255, 0, 0] and rgb[:, 1, 1].tolist() == [10, 20, 30]
    # PIL's "L": ITU-R 601-2 luma, (299 R + 587 G + 114 B) / 1000, rounded: 10, 20, 30 -> 18.15
    gray = ImageTransform(2, 1).pixels(image)
    assert gray.shape == (1, 2, 2) and gray[0].tolist() == [[76, 150], [29, 18]]
    inverted = ImageTransform(2, 1, invert=True).pixels(image)
    assert inverted[0].tolist() == [[255 - 76, 255 - 150], [255 - 29, 255 - 18]]


def test_resized_with_lanczos_only_when_the_size_differs():
    noise = np.random.default_rng(1).integers(0, 256, (105, 105), dtype=np.uint8)
    image = Image.fromarray(noise, mode="L")
    assert torch.equal(ImageTransform(105, 1).pixels(image)[0], torch.from_numpy(noise))
    expected = np.array(image.resize((28, 28), Image.LANCZOS))
    assert torch.equal(ImageTransform(28, 1).pixels(image)[0], torch.from_numpy(expected))
    wide = Image.fromarray(np.zeros((10, 40, 3), dtype=np.uint8))  # the aspect ratio is not kept
    assert ImageTransform(8, 3).pixels(wide).shape == (3, 8, 8)


def test_model_inputs_by_hand():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 3, 1, 1)
    plain = ImageTransform(3, 3).to_input(pixels)
    assert plain.dtype == torch.float32 and plain[0, 0, 0].tolist() == pytest.approx([0, 0.2, 1])
    normalised = ImageTransform(3, 3, mean=[0.2, 0.0, 1.0], std=[0.5, 1.0, 0.25]).to_input(pixels)
    torch.testing.assert_close(normalised[1, :, 0], torch.tensor([[-0.4, 0.0, 1.6],
                                                                  [0.0, 0.2, 1.0],
                                                                  [-4.0, -3.2, 0.0]]))
    image = _image([[RED, GREEN], [BLUE, RED]])
    transform = ImageTransform(2, 3, mean=MEAN, std=STD)
    assert torch.equal(transform(image), transform.to_input(transform.pixels(image)[None])[0])


def test_one_mean_and_std_value_serve_every_channel():
    assert ImageTransform.from_config(8, 3, [0.5], [0.25]) == ImageTransform(
        8, 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.raises(UserError, match="dataset.mean must have 1 or 3 values"):
        ImageTransform.from_config(8, 3, [0.5, 0.5], [0.2, 0.2])


OMNIGLOT_CONFIG = {"dataset": {"_target_": "meta_cli.data.omniglot.Omniglot"}}


def test_predict_builds_on_the_stored_transform_or_says_what_is_missing(tmp_path):
    path = tmp_path / "best.pt"
    assert _shape(OMNIGLOT_CONFIG, {"transform": OMNIGLOT.to_dict()}, path).input_shape == OMNIGLOT.shape
    with pytest.raises(UserError, match=f"checkpoint {path} records no image transform"):
        _shape(OMNIGLOT_CONFIG, {}, path)
    with pytest.raises(UserError, match=f"checkpoint {path} records an image transform predict cannot apply"):
        _shape(OMNIGLOT_CONFIG, {"transform": {"size": 28, "channels": 4}}, path)
