"""WRN-28: learn2learn's WRN28Backbone (the WRN-28-10 of Dhillon et al., 2020, from FEAT).

learn2learn's WRN28Backbone is its WideResNet(depth=28, widen_factor=10): a 3x3 conv to 16
filters, three stages of four pre-activation blocks (BN, ReLU, 3x3 conv, dropout, BN, ReLU,
3x3 conv) of 16k-32k-64k filters, the last two with stride 2, then BN, ReLU and the average
over the last feature map: (N, C, H, W) -> (N, 64 * widen_factor), 640 by default.
widen_factor is the k of WRN-28-k (learn2learn's WideResNet takes it; 10 is WRN28Backbone).

Changes from learn2learn's class, so that sizes other than 84x84 work:
- The final average covers the whole last feature map. learn2learn's avg_pool2d(21) does
  exactly that on the 21x21 map of 81-84 px inputs (mini-ImageNet's 84x84) and fails below.
- The first convolution takes the input's C channels (learn2learn's is fixed at 3), so
  1-channel images such as Omniglot are used as they are; with C = 3 it is learn2learn's.

Batch norm: running statistics by default (learn2learn's): this network is trained with
batch statistics and tested after .eval() with the running ones (ProtoNet, MetaOptNet,
Dhillon et al.), and meta-cli meta-tests in eval mode. running_stats=false uses batch
statistics always, as Conv4 does; that is what MAML-style learners and
algorithm.backend=vmap expect.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F

from meta_cli._l2l import l2l
from meta_cli.errors import UserError
from meta_cli.models.base import Backbone, image_shape
from meta_cli.models.conv4 import _batch_statistics_only
from meta_cli.params import Ge

_MIN_SIDE = 4  # each of the two stride-2 stages then still halves its input


class WRN28(Backbone):
    """(N, C, H, W) images, H and W >= 4 -> (N, 64 * widen_factor) float embeddings."""

    def __init__(self, input_shape: tuple[int, ...], dropout: Annotated[float, Ge(0)] = 0.0,
                 widen_factor: Annotated[int, Ge(1)] = 10, running_stats: bool = True) -> None:
        super().__init__(input_shape)
        self.check(input_shape, dropout=dropout)
        channels, height, width = input_shape
        wrn = l2l.vision.models.wrn28
        self.net = wrn.WideResNet(depth=28, widen_factor=widen_factor, dropout_rate=dropout)
        if channels != 3:
            self.net.conv1 = wrn.conv3x3(channels, self.net.conv1.out_channels)
        if not running_stats:
            _batch_statistics_only(self.net)
        # eval(): the dry run touches no running statistics and draws no dropout.
        self.eval()
        with torch.no_grad():
            self.out_features = self(torch.zeros(2, channels, height, width)).shape[1]
        self.train()

    @classmethod
    def batch_independent(cls, running_stats: bool = True, **config: Any) -> bool:
        return running_stats  # eval mode: running statistics, dropout off

    @classmethod
    def vmap_blocker(cls, dropout: float = 0.0, running_stats: bool = True, **config: Any) -> str | None:
        if dropout > 0:
            return "dropout (backbone.dropout=0 removes it)"
        return "running statistics (backbone.running_stats=false removes them)" if running_stats else None

    @classmethod
    def check(cls, input_shape: tuple[int, ...], dropout: float = 0.0, **config: Any) -> None:
        _, height, width = image_shape("wrn28", input_shape)
        if min(height, width) < _MIN_SIDE:
            raise UserError(f"backbone wrn28 needs images of at least {_MIN_SIDE}x{_MIN_SIDE} (two "
                            f"stride-2 stages); this dataset gives {height}x{width}. Use backbone=mlp.")
        if dropout >= 1:
            raise UserError(f"backbone.dropout must be < 1 (a dropout rate); got {dropout}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_features), float32 also under bf16 autocast, so distances
        and losses downstream keep full precision."""
        net = self.net
        y = net.layer3(net.layer2(net.layer1(net.conv1(x))))
        y = F.relu(net.bn1(y)).mean(dim=(2, 3))  # learn2learn: avg_pool2d(21), see above
        return y.float() if y.dtype in (torch.bfloat16, torch.float16) else y
