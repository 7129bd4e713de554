"""backbone=timm: any timm model as the embedding network (its classifier removed, num_classes=0).

(N, 3, S, S) -> (N, num_features). The model's input is its pretrained config's: 3 channels,
size S = input_size (or `image_size`, to train smaller on a CPU), its mean and std. The
engine brings every dataset's images to that input by the rule of `meta_cli.data.adapted`
(gray -> RGB, resize, the model's normalisation), for training and evaluation alike
(`input_transform`), and checkpoints record it, so `predict` replays it.

Weights: `weights=PATH` loads a local file (safetensors, or a torch state dict read with
weights_only=True) whose keys and shapes must be the model's (a classifier's keys are
dropped); `weights=hub` is timm's own download from the Hugging Face hub. Where weights were
asked for and cannot be had, that is one line: never a silent random initialisation.

`freeze`: true keeps every weight and batch-norm statistic of the body as loaded (the body
stays in eval mode; only the algorithm's own parameters learn); norm freezes the normalisation
layers only (batch norm's running statistics and affine weights, layer norm's weights).
`train.body_lr_scale` scales the body's learning rate otherwise.

Batch norm in eval mode uses running statistics, so a timm body's embedding of an image does
not depend on its batch at meta-test time: cached embeddings are exact (`batch_independent`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from meta_cli.data.transform import ImageTransform
from meta_cli.errors import UserError
from meta_cli.models.base import Backbone, image_shape
from meta_cli.params import Ge

HUB = "hub"
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("backbone=timm needs the timm package: pip install 'meta-cli[timm]' "
                        "(scripts/setup.sh installs it).") from None
    return timm


def _config(name: str) -> dict[str, Any]:
    """The pretrained config of timm model `name`; UserError for a name timm does not know."""
    timm = _timm()
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] if isinstance(name, str) and name else []
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(f"backbone.name={name} is not a timm model{hint}; timm.list_models() lists them, "
                        f"e.g. backbone.name=resnet18.")
    with torch.device("meta"):
        return dict(timm.create_model(name, pretrained=False).pretrained_cfg)


def _check_online(name: str) -> None:
    """weights=hub on a machine that cannot reach the hub: one line now, instead of
    huggingface_hub's retries (about 60 s measured here, without network) and its own warning.
    Weights timm already cached, or HF_HUB_OFFLINE=1, go to timm as they are."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE"):
        return
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=5).close()
    except OSError as exc:
        cached = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
        if any(cached.glob(f"models--timm--{name.split('.')[0]}*")):
            return  # timm reads the cached copy
        raise UserError(f"backbone.weights=hub: this machine is offline ({host}: {exc.strerror or exc}); "
                        f"download timm's weights of {name} where there is internet and give the file as "
                        f"backbone.weights=PATH.") from None


def _create(name: str, image_size: int | None, pretrained: bool = False) -> nn.Module:
    timm, config = _timm(), _config(name)
    kwargs: dict[str, Any] = {"num_classes": 0, "pretrained": pretrained}
    if image_size is not None and config.get("fixed_input_size"):  # a ViT's position embedding
        kwargs["img_size"] = image_size
    if not pretrained:
        return timm.create_model(name, **kwargs)
    _check_online(name)
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # offline: huggingface_hub's errors, OSError; no weights: RuntimeError
        text = " ".join(str(exc).split())[:200]
        raise UserError(f"backbone.weights=hub: cannot get timm's weights of {name} ({type(exc).__name__}: "
                        f"{text}); this machine may be offline: download them where there is internet "
                        f"and give the file as backbone.weights=PATH.") from None


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (weights_only=True)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"backbone.weights={path}: no such file; give a .safetensors or torch state dict "
                        f"file, or backbone.weights=hub.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"backbone.weights={path} is not a safetensors or torch state dict file "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"backbone.weights={path} holds no state dict (names -> tensors).")
    return state


def fit_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, classifier: str | None) -> dict[str, torch.Tensor]:
    """`state` without the classifier's keys, checked against `model`'s keys and shapes."""
    if classifier:
        state = {k: v for k, v in state.items() if not (k.startswith(classifier + ".") and k not in model.state_dict())}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if wrong:
        k = wrong[0]
        raise UserError(f"backbone.weights={path} does not fit the model: {len(wrong)} tensors of other shapes, "
                        f"e.g. {k} {tuple(state[k].shape)} where the model has {tuple(own[k].shape)}; give the "
                        f"weights of this backbone.name.")
    if missing or unexpected:
        what = (f"{len(missing)} of its tensors are missing (e.g. {missing[0]})" if missing
                else f"it holds {len(unexpected)} tensors the model has not (e.g. {unexpected[0]})")
        raise UserError(f"backbone.weights={path} does not fit the model: {what}; give the weights of this "
                        f"backbone.name.")
    return state


class Timm(Backbone):
    """A timm model's features; see the module docstring."""

    def __init__(self, input_shape: tuple[int, ...], name: str = "resnet18", weights: str | None = None,
                 freeze: bool | Literal["norm"] = False, image_size: Annotated[int, Ge(8)] | None = None) -> None:
        super().__init__(input_shape)
        self.check(input_shape, name=name, weights=weights, freeze=freeze, image_size=image_size)
        self.body = _create(name, image_size, pretrained=weights == HUB)
        if weights not in (None, HUB):
            config = _config(name)
            self.body.load_state_dict(fit_weights(self.body, read_weights(weights), weights,
                                                  config.get("classifier")))
        self.out_features = int(self.body.num_features)
        self.freeze = freeze
        for module in self._frozen():
            for p in module.parameters(recurse=module is self.body):
                p.requires_grad_(False)
        self.train()

    def _frozen(self) -> list[nn.Module]:
        if self.freeze is True:
            return [self.body]
        if self.freeze == "norm":
            return [m for m in self.body.modules() if isinstance(m, NORMS)]
        return []

    def train(self, mode: bool = True) -> "Timm":
        super().train(mode)
        for module in self._frozen():  # frozen statistics: never updated by a training forward
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) model inputs -> (N, num_features)."""
        return self.body(x)

    @classmethod
    def check(cls, input_shape: tuple[int, ...], **config: Any) -> None:
        image_shape("timm", input_shape)
        name, weights = config.get("name"), config.get("weights")
        model_config = _config(name)
        if weights not in (None, HUB):
            with torch.device("meta"):
                model = _create(name, config.get("image_size"))
            fit_weights(model, read_weights(weights), weights, model_config.get("classifier"))
        elif weights == HUB:
            _create(name, config.get("image_size"), pretrained=True)  # downloads now, or says why not

    @classmethod
    def input_transform(cls, **config: Any) -> ImageTransform:
        """The model's input: 3 channels, its pretrained size (or image_size), mean and std."""
        model_config = _config(config["name"])
        size = config.get("image_size") or int(model_config.get("input_size", (3, 224, 224))[-1])
        mean, std = model_config.get("mean"), model_config.get("std")
        return ImageTransform(size, 3, mean=tuple(mean) if mean else None, std=tuple(std) if std else None)

    @classmethod
    def vmap_blocker(cls, **config: Any) -> str | None:
        return "backbone=timm (its batch norm keeps running statistics)"

    @classmethod
    def batch_independent(cls, **config: Any) -> bool:
        return True  # eval mode: running statistics (see the module docstring)

