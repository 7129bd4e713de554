"""Conv-4 backbones on learn2learn's ConvBase.

max_pool=false: the MAML paper's Omniglot CNN (learn2learn's OmniglotCNN): 3x3 convs of
stride 2, batch norm, ReLU, then the spatial mean -> (N, hidden).
max_pool=true: the ProtoNet Conv-4: 3x3 convs, batch norm, ReLU, 2x2 max-pool, flattened.

Batch norm uses the statistics of each batch, in training and at test time alike, as in
MAML and learn2learn's examples (which never call .eval()); running statistics are not
tracked, so evaluating a model never changes it.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from meta_cli._l2l import l2l
from meta_cli.errors import UserError
from meta_cli.models.base import Backbone, image_shape
from meta_cli.params import Ge


def _batch_statistics_only(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


class Conv4(Backbone):
    """(N, C, H, W) images -> (N, out_features) embeddings."""

    def __init__(self, input_shape: tuple[int, ...], hidden: Annotated[int, Ge(1)] = 64,
                 max_pool: bool = False, layers: Annotated[int, Ge(1)] = 4,
                 channels_last: bool = True, pool_last: bool = True,
                 widths: list[int] | None = None) -> None:
        super().__init__(input_shape)
        self.check(input_shape, max_pool=max_pool, layers=layers, pool_last=pool_last, widths=widths)
        channels, height, width = input_shape
        if widths is not None:
            layers = len(widths)
        if widths is None:
            self.base = l2l.vision.models.ConvBase(hidden=hidden, channels=channels,
                                                   max_pool=max_pool, layers=layers)
        else:
            # learn2learn's blocks at per-block widths: the first block works at full resolution,
            # so its width costs the most time per channel (a ProtoNet step, 120 images 28x28,
            # bf16: 69 ms for 128 channels everywhere, 48 ms for [64, 128, 128, 128]).
            ins = [channels, *widths[:-1]]
            self.base = nn.Sequential(*(l2l.vision.models.cnn4.ConvBlock(i, o, (3, 3), max_pool=max_pool)
                                        for i, o in zip(ins, widths)))
        _batch_statistics_only(self.base)
        if max_pool and not pool_last:
            # On 28x28 Omniglot the last pool maps 3x3 to 1x1 (floor), so it keeps the top-left
            # 2x2 of the last feature map only; without it the embedding is all 3x3 positions.
            self.base[-1].max_pool = nn.Identity()
        self.max_pool = max_pool
        with torch.no_grad():
            self.out_features = self._pool(self.base(torch.zeros(2, channels, height, width))).shape[1]
        #: NHWC activations: oneDNN's convolutions are ~1.5x faster on this layout on x86 CPUs
        #: (docs/benchmarks.md). Same math, only the memory order differs.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def check(cls, input_shape: tuple[int, ...], max_pool: bool = False, layers: int = 4,
              pool_last: bool = True, widths: list[int] | None = None, **config: Any) -> None:
        _, height, width = image_shape("conv4/conv4_pool/cnn4", input_shape)
        if widths is not None and (len(widths) == 0 or min(widths) < 1):
            raise UserError(f"backbone.widths={list(widths)}: give one channel count >= 1 per block, "
                            f"e.g. [64, 128, 128, 128], or null for `hidden` channels in every block.")
        if widths is not None:
            layers = len(widths)
        pools = layers if pool_last else layers - 1
        if max_pool and min(height, width) < 2**pools:
            raise UserError(f"backbone.max_pool=true needs images of at least {2**pools}x{2**pools} "
                            f"({pools} 2x2 max-pools); this dataset gives {height}x{width}. Use "
                            f"backbone=conv4 or fewer blocks (backbone.layers, or entries of backbone.widths).")

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.max_pool else x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_features), float32 also under bf16 autocast, so distances
        and losses downstream keep full precision."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self._pool(self.base(x))
        return y.float() if y.dtype in (torch.bfloat16, torch.float16) else y
