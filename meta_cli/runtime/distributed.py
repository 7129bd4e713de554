"""One run across processes, GPUs and nodes on torch.distributed: torchrun, SLURM, or
`distributed.processes=N` (which relaunches the command through torchrun's own launcher).

Data parallel over numbered work: each rank takes a contiguous share of a meta-batch's
episode numbers (the episodes one process would draw), backpropagates its share of the mean
objective, and the meta-gradient is summed across ranks with one `all_reduce`; every rank then
steps the same optimizer on the same gradient, so the weights stay identical without a
broadcast. Evaluation splits its episodes the same way and gathers the per-episode results in
episode order. Rank 0 alone writes; the others only compute.

A rank that dies or stops answering makes the collective of the others fail within
`distributed.timeout_s`; that is one line (`RankLost`), never a hang.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Literal, Sequence

from meta_cli.errors import UserError
from meta_cli.params import Ge, Gt


@dataclass
class DistributedSettings:
    """`distributed.*`: how many processes share one run."""

    #: Processes on this machine. >1: the command relaunches itself through torch's elastic
    #: launcher (as `torchrun --standalone --nproc_per_node=N -m meta_cli ...` would); each
    #: process takes a share of every meta-batch. auto: one per GPU on CUDA, else one per CPU
    #: core, at most the meta-batch size. Under torchrun or SLURM the launcher decides and this
    #: is not read.
    processes: Annotated[int, Ge(1)] | Literal["auto"] = 1
    #: gloo on CPU, nccl on CUDA (auto), or one of them.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    #: A collective that waits longer than this for a rank fails with one line.
    timeout_s: Annotated[float, Gt(0)] = 300.0


class RankLost(UserError):
    """Another rank of the run died or did not answer in time. The message says which and
    during what; the job adds what to do (`meta_cli.rundir.job`: the resume command)."""


def launched() -> bool:
    """Whether this process is one rank of a torchrun/torch elastic or SLURM multi-task launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or _slurm_tasks() > 1


def env_rank() -> int:
    """This process's rank as its launcher set it (0 outside torchrun/SLURM), before `init`."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("SLURM_PROCID", "0")) if _slurm_tasks() > 1 else 0


def _slurm_tasks() -> int:
    # srun's own tasks (not a batch script's allocation): SLURM_STEP_NUM_TASKS is set per step.
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))) \
        if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ else 1


def _from_slurm() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from a SLURM multi-task job step (as
    submitit's TorchDistributedEnvironment sets them), when torchrun did not set them."""
    if "RANK" in os.environ or _slurm_tasks() <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        raise UserError("a SLURM job with several tasks trains data-parallel through submitit's "
                        "environment: pip install 'meta-cli[launchers]'.") from None
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@dataclass
class World:
    """This process's place in the run: rank of size, and its device's local rank."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 300.0
    #: (host, pid) of every rank, learnt when the group forms: which of them is gone, when a
    #: collective fails, is read from /proc for the ranks on this host.
    peers: tuple[tuple[str, int], ...] = ()

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run dir."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This rank's contiguous share of 0..count-1 (the first ranks take one more)."""
        size, extra = divmod(count, self.size)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (1 if self.rank < extra else 0))

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ValueError) as exc:  # gloo/NCCL: a peer closed, a timeout
            raise RankLost(self._lost(what, str(exc))) from None

    def _lost(self, what: str, error: str) -> str:
        """Which rank is gone (a rank on this host whose process ended), or that one did not
        answer within the timeout; the backend's own words shortened."""
        first = textwrap.shorten(error, width=160, placeholder=" ...")
        dead = self.dead_peers()
        if dead:
            ranks = ", ".join(f"{r} (pid {self.peers[r][1]})" for r in dead)
            cause = f"rank{'s' if len(dead) > 1 else ''} {ranks} died"
        elif re.search(r"time[sd]? ?out", error, re.IGNORECASE):
            cause = f"a rank did not answer within distributed.timeout_s={self.timeout_s:g} s"
        else:  # a connection closed: a rank on another host ended
            cause = "another rank died (it closed its connection; it runs on another host)"
        return f"rank {self.rank} of {self.size}: {cause} during {what} ({first})"

    def dead_peers(self, wait_s: float = 1.0) -> list[int]:
        """The other ranks on this host whose process has ended (gone from /proc, or a zombie).
        A connection closes as its process exits, a moment before the process is a zombie:
        look again for up to `wait_s`."""
        here = socket.gethostname()
        mine = [(r, pid) for r, (host, pid) in enumerate(self.peers) if r != self.rank and host == here]
        if not mine or not os.path.isdir("/proc/self"):
            return []
        deadline = time.monotonic() + wait_s
        while True:
            dead = [r for r, pid in mine if not _running(pid)]
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(0.05)

    def all_reduce_grads(self, parameters: Sequence[Any]) -> None:
        """Sum every parameter's .grad across ranks (a missing grad counts as zeros), as one
        flat buffer: a single collective per meta-step."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        with self._collective("the meta-gradient's all-reduce"):
            dist.all_reduce(flat)
        offset = 0
        for p in parameters:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums across ranks (float64)."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64)
        with self._collective("a sum of metrics"):
            dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64)
        with self._collective("the stop check"):
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's `items` concatenated in rank order (so shares come back in order)."""
        if self.size == 1:
            return list(items)
        import torch.distributed as dist

        parts: list[Any] = [None] * self.size
        with self._collective("gathering results"):
            dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        with self._collective("a broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            with self._collective("a barrier"):
                dist.barrier()

    def buffers_mean(self, buffers: Sequence[Any]) -> None:
        """Average floating-point buffers (batch norm's running statistics) across ranks."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for b in buffers:
            if b.is_floating_point():
                with self._collective("averaging running statistics"):
                    dist.all_reduce(b)
                b.div_(self.size)


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


_WORLD = World()


def world() -> World:
    """The world of this process: size 1 unless `init` joined a process group."""
    return _WORLD


def init(settings: DistributedSettings, device_kind: str) -> World:
    """Join the run's process group when this process was launched as one of several ranks
    (torchrun, SLURM); the same World, of size 1, otherwise. Idempotent."""
    global _WORLD
    if _WORLD.size > 1 or not launched():
        return _WORLD
    import torch
    import torch.distributed as dist

    _from_slurm()
    backend = settings.backend
    if backend == "auto":
        backend = "nccl" if device_kind == "cuda" else "gloo"
    check_backend(backend, device_kind)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=settings.timeout_s))
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local_rank, settings.timeout_s)
    _WORLD.peers = tuple(tuple(p) for p in _WORLD.gather([(socket.gethostname(), os.getpid())]))
    return _WORLD


def check_backend(backend: str, device_kind: str) -> None:
    """NCCL reduces CUDA tensors only: refuse it for a job that runs on the CPU (`auto`
    chooses the device's own)."""
    if backend == "nccl" and device_kind != "cuda":
        raise UserError("distributed.backend=nccl needs CUDA GPUs and this job runs on the CPU "
                        "(no GPU is visible, or device=cpu); use distributed.backend=gloo or auto.")


def finish(code: int) -> None:
    """End a rank of a launch with exit status `code`; nothing for a single process.

    After a run that went well the ranks meet at a barrier, so none leaves while a peer still
    reads from it; then the rank leaves without the interpreter's teardown, in which libtorch's
    distributed threads can abort a rank whose work is done ("terminate called without an active
    exception": the launcher then reports the whole run as failed). Everything the run wrote is
    closed by then; the log handlers and stdio are flushed here."""
    if _WORLD.size == 1:
        return
    if code == 0:
        with contextlib.suppress(RankLost):
            _WORLD.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def check_same_config(world: World, config: Any) -> None:
    """Every rank must run the same experiment: compare a hash of the resolved config."""
    if world.size == 1:
        return
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    digests = world.gather([digest])
    odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise UserError(f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} "
                        f"{'were' if len(odd) > 1 else 'was'} started with another config than rank 0 "
                        f"(config hash {digests[odd[0]][:12]} vs {digests[0][:12]}); start every rank "
                        f"with the same command line.")
