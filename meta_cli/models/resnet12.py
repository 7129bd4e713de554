"""ResNet-12: learn2learn's ResNet12Backbone (MetaOptNet's network, Lee et al., 2019).

Four residual stages, each 3 x (3x3 conv, BN, LeakyReLU 0.1) plus a 1x1-conv shortcut, then
a 2x2 max-pool; 64-160-320-640 filters (wider=true, MetaOptNet) or 64-128-256-512
(wider=false, TADAM). (N, C, H, W) -> (N, 640 or 512) with avg_pool, else the last feature
map flattened: (N, filters * (H // 16) * (W // 16)), e.g. 16000 on 84x84.

Changes from learn2learn's class, so that sizes other than 84x84 work:
- avg_pool averages the whole last feature map. learn2learn's AvgPool2d(5) does exactly that
  on the 5x5 map of 80-95 px inputs (mini-ImageNet's 84x84), fails below 80 px and leaves
  several positions above 95.
- dropblock_size=null picks the side of the last feature map, at most 5: 5 on 84x84 (as
  learn2learn and MetaOptNet), 2 on CIFAR-FS's 32x32 (as MetaOptNet), 1 on Omniglot's 28x28.
- The first convolution takes the input's C channels (learn2learn's `channels`), so
  1-channel images such as Omniglot are used as they are.

Batch norm: running statistics by default (learn2learn's): MetaOptNet and ProtoNet train
this network with batch statistics and test it after .eval() with the running ones, and
meta-cli meta-tests in eval mode. running_stats=false uses batch statistics always, as
Conv4 does; that is what MAML-style learners and algorithm.backend=vmap expect.

Regularisation as in learn2learn: dropout of rate `dropblock_dropout` after stages 1-2,
DropBlock after stages 3-4 whose rate rises linearly to `dropblock_dropout` over the first
40000 forward passes. Both act in training mode only. learn2learn counts those passes in a
plain int of each block, which it does not save; here the state dict holds it too, so a
resumed run continues exactly. (MAML's clones count on their own copies, so under MAML the
rate stays near 0, as in learn2learn.)
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.errors import UserError
from meta_cli.models.base import Backbone, image_shape
from meta_cli.models.conv4 import _batch_statistics_only
from meta_cli.params import Ge

_POOLS = 4  # one 2x2 max-pool per stage: the last map is H // 16 x W // 16
_MAX_BLOCK = 5  # learn2learn's default dropblock_size, the last map's side on 84x84


class _CountedBlock(l2l.vision.models.resnet12.BasicBlock):
    """learn2learn's residual block, its DropBlock warm-up counter saved in the state dict.

    The counter stays a plain int, not a buffer: an in-place buffer update inside torch.func
    transforms (algorithm.backend=vmap) is an error."""

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.num_batches_tracked)  # a tensor: checkpoints load weights_only

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.num_batches_tracked = int(state)


class _Backbone(l2l.vision.models.ResNet12Backbone):
    """learn2learn's ResNet12Backbone built from _CountedBlock."""

    def _make_layer(self, block: type[nn.Module], *args, **kwargs) -> nn.Sequential:
        return super()._make_layer(_CountedBlock, *args, **kwargs)


class ResNet12(Backbone):
    """(N, C, H, W) images, H and W >= 16 -> (N, out_features) float embeddings."""

    def __init__(self, input_shape: tuple[int, ...], avg_pool: bool = True, wider: bool = True,
                 embedding_dropout: Annotated[float, Ge(0)] = 0.0,
                 dropblock_dropout: Annotated[float, Ge(0)] = 0.1,
                 dropblock_size: Annotated[int, Ge(1)] | None = None,
                 running_stats: bool = True) -> None:
        super().__init__(input_shape)
        self.check(input_shape, embedding_dropout=embedding_dropout, dropblock_dropout=dropblock_dropout,
                   dropblock_size=dropblock_size)
        channels, height, width = input_shape
        if dropblock_size is None:
            dropblock_size = min(min(height, width) // 2**_POOLS, _MAX_BLOCK)
        self.net = _Backbone(
            avg_pool=avg_pool, wider=wider, embedding_dropout=embedding_dropout,
            dropblock_dropout=dropblock_dropout, dropblock_size=dropblock_size, channels=channels)
        if avg_pool:
            self.net.avgpool = nn.AdaptiveAvgPool2d(1)  # any map size; see the module docstring
        if not running_stats:
            _batch_statistics_only(self.net)
        self.out_features = _dry_run(self, channels, height, width)

    @classmethod
    def batch_independent(cls, running_stats: bool = True, **config: Any) -> bool:
        return running_stats  # eval mode: running statistics, dropout off

    @classmethod
    def vmap_blocker(cls, embedding_dropout: float = 0.0, dropblock_dropout: float = 0.1,
                     running_stats: bool = True, **config: Any) -> str | None:
        if dropblock_dropout > 0 or embedding_dropout > 0:
            return "dropout (backbone.dropblock_dropout=0 and backbone.embedding_dropout=0 remove it)"
        return "running statistics (backbone.running_stats=false removes them)" if running_stats else None

    @classmethod
    def check(cls, input_shape: tuple[int, ...], embedding_dropout: float = 0.0,
              dropblock_dropout: float = 0.1, dropblock_size: int | None = None, **config: Any) -> None:
        _, height, width = image_shape("resnet12", input_shape)
        last = min(height, width) // 2**_POOLS
        if last < 1:
            raise UserError(f"backbone resnet12 needs images of at least 16x16 (four 2x2 max-pools); "
                            f"this dataset gives {height}x{width}. Use backbone=conv4 or cnn4.")
        for key, rate in (("embedding_dropout", embedding_dropout), ("dropblock_dropout", dropblock_dropout)):
            if rate >= 1:
                raise UserError(f"backbone.{key} must be < 1 (a dropout rate); got {rate}.")
        if dropblock_size is not None and dropblock_dropout > 0 and dropblock_size > last:
            # DropBlock samples (side - block + 1)^2 block centres: none fit in a smaller map.
            raise UserError(f"backbone.dropblock_size={dropblock_size} exceeds resnet12's last feature "
                            f"map ({last}x{last} for {height}x{width} images); set "
                            f"backbone.dropblock_size<={last} (null picks it) or backbone.dropblock_dropout=0.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_features), float32 also under bf16 autocast, so distances
        and losses downstream keep full precision."""
        y = self.net(x)
        return y.float() if y.dtype in (torch.bfloat16, torch.float16) else y


def _dry_run(model: nn.Module, channels: int, height: int, width: int) -> int:
    """Embedding size from one forward pass that leaves the model as it was: eval mode
    touches no running statistics and draws no dropout; the DropBlock warm-up counters
    (which count every pass) are reset."""
    model.eval()
    with torch.no_grad():
        features = model(torch.zeros(2, channels, height, width)).shape[1]
    model.train()
    for block in model.modules():
        if isinstance(block, _CountedBlock):
            block.num_batches_tracked = 0
    return features
