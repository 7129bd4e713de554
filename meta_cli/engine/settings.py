"""`train.*`: the settings of the training loop, and the precision its steps run in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from meta_cli.params import Ge, Gt


@dataclass
class TrainSettings:
    """`train.*`. One iteration = one outer step: Adam on the mean query loss of a meta-batch
    of episodes (the algorithm may choose another outer optimizer: Reptile's is SGD; pretrain
    takes a mini-batch of images instead of episodes)."""

    iterations: Annotated[int, Ge(1)] = 1000
    meta_batch_size: Annotated[int, Ge(1)] = 16
    meta_lr: Annotated[float, Gt(0)] = 0.003
    #: Ways of the meta-training episodes; None: dataset.ways. Metric learners such as ProtoNet
    #: train best on harder episodes than they are tested on (Snell et al. used 60 ways).
    ways: Annotated[int, Ge(2)] | None = None
    #: Query images per class of the meta-training episodes; None: dataset.query. Reptile adapts
    #: on support and query together, and learns from more images per task than it is tested on
    #: (Nichol et al.'s "train shots").
    query: Annotated[int, Ge(1)] | None = None
    #: Images per mini-batch of an algorithm trained on batches, not episodes (pretrain).
    batch_size: Annotated[int, Ge(1)] | None = None
    #: constant; cosine: meta_lr decays to 0 over `iterations` (per meta-step) along a half
    #: cosine; linear: along a straight line (Nichol et al.'s annealing of Reptile's step).
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    val_every: Annotated[int, Ge(1)] = 100
    val_episodes: Annotated[int, Ge(1)] = 100
    log_every: Annotated[int, Ge(1)] = 10
    #: A step checkpoint every this many iterations (and at every validation and at the end);
    #: a crash loses at most this much work.
    checkpoint_every: Annotated[int, Ge(1)] = 100
    #: How many step checkpoints to keep (best.pt and last.pt are kept apart); resume falls
    #: back through them.
    keep_checkpoints: Annotated[int, Ge(1)] = 3
    #: The backbone's learning rate as a fraction of meta_lr (e.g. 0.1 for a pre-trained
    #: body under a new head); 1: the same.
    body_lr_scale: Annotated[float, Gt(0)] = 1.0
    #: Clip the meta-gradient to this total norm; None: no clipping.
    clip_grad_norm: Annotated[float, Gt(0)] | None = None
    #: fp32, or bf16: meta-training forward passes under torch.autocast(bfloat16) (~1.7x
    #: faster convolutions on CPUs with AMX/AVX512-BF16, and on GPUs). The optimizer, the
    #: weights and validation/meta-testing stay float32. auto: bf16 where the device computes
    #: it natively, else fp32 (emulated bf16 would be slower).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    progress: bool = True
    #: A wall-clock budget for meta-training and the final meta-test, e.g. 10m, 90s, 1.5h or
    #: 1h30m (a number: seconds): the first steps are timed, then the iterations that fit
    #: (at most `iterations`) are fixed, with the lr schedule and the validation, checkpoint
    #: and log cadence scaled to them (meta_cli.engine.budget). None: `iterations` steps.
    time_budget: str | Annotated[float, Gt(0)] | None = None

    def __post_init__(self) -> None:
        if self.time_budget is not None:
            from meta_cli.engine.budget import parse_duration

            parse_duration(self.time_budget)


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` has bfloat16 arithmetic in hardware (CUDA compute capability 8+,
    or an x86 CPU with AVX512-BF16/AMX, which oneDNN reports)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def uses_bf16(precision: str, device_type: str) -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device_type))
