"""`train.workers`: the tasks of a meta-batch split across CPU processes.

On a CPU, learn2learn's task-by-task loop is bound by per-operation overhead on small tensors,
which a second intra-op thread barely helps: first-order MAML's Omniglot step ran at 106 tasks/s
with 2 threads and 83 with 1, while two single-threaded processes side by side ran at 175 in all
(docs/benchmarks.md). Python threads do not help either (the GIL, measured 111). So with
`train.workers=N` the training process and N - 1 helper processes each take a contiguous share
of the meta-batch, one thread each.

The helpers rebuild the algorithm and the dataset from the run's config and splits, and their
parameters are the training process's own tensors in shared memory: the outer optimizer updates
them in place, so nothing is sent per step but the episode numbers. Each helper draws its
episodes by number (the same episodes as one process would), backpropagates its share of the
mean query loss, and hands back the gradient sum through shared buffers; the training process
adds them in helper order, so a step is deterministic and equals the one-process step up to
float rounding (of one thread per process: two intra-op threads round a convolution's sums
otherwise, which a second-order MAML task can amplify, tests/test_workers.py). Random ops in a helper (Reptile's minibatch order) draw from a generator seeded
by (seed, iteration, helper), so runs and resumed runs repeat exactly.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import traceback
from typing import Any, Iterable, Iterator

import torch
import torch.multiprocessing as mp

from meta_cli import allocator
from meta_cli.algorithms.base import Algorithm
from meta_cli.data.base import Episode
from meta_cli.errors import UserError

#: Seconds to wait for a helper to build its model and data, or to finish a share of a step.
TIMEOUT_S = 600.0


def resolve(workers: int | str, algorithm: Algorithm, meta_batch_size: int, device_type: str) -> int:
    """The number of processes: `auto` is one per available core (up to the meta-batch) where
    splitting applies (CPU, learn2learn's loop, no buffers), else 1; a number is checked."""
    if workers == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        workers = max(1, min(cores, meta_batch_size))
        try:
            check(algorithm, workers, meta_batch_size, device_type)
        except UserError:
            return 1
        return workers
    check(algorithm, int(workers), meta_batch_size, device_type)
    return int(workers)


def check(algorithm: Algorithm, workers: int, meta_batch_size: int, device_type: str) -> None:
    """One line for a setting that cannot split a meta-batch across processes."""
    if workers == 1:
        return
    if device_type != "cpu":
        raise UserError(f"train.workers={workers} splits a meta-batch across CPU processes; on {device_type} "
                        f"set train.workers=1 (the accelerator runs the tasks).")
    if getattr(algorithm, "backend", "l2l") == "vmap":
        raise UserError(f"train.workers={workers} needs the task-by-task loop; algorithm.backend=vmap already "
                        f"runs the meta-batch at once: set train.workers=1 or algorithm.backend=l2l.")
    if meta_batch_size < workers:
        raise UserError(f"train.workers={workers} splits the tasks of a meta-batch, and "
                        f"train.meta_batch_size={meta_batch_size} has fewer: set train.workers=1.")
    if any(True for _ in algorithm.buffers()):
        # Running statistics updated in several processes at once would race.
        raise UserError(f"train.workers={workers} needs a model without buffers such as batch-norm running "
                        f"statistics: set backbone.running_stats=false or train.workers=1.")


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """torch on one intra-op thread inside the block (while the helpers use the other cores)."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if enabled:
            torch.set_num_threads(threads)


def backward_tasks(algorithm: Algorithm, episodes: Iterable[Episode],
                   batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Backpropagates each task's 1/batch share of the mean meta-objective, one task's graph at
    a time (freed at once), into .grad; returns the tasks' detached losses and accuracies. The
    training process and the helpers both run this, so their shares are the same computation."""
    losses, accuracies = [], []
    for episode in episodes:
        objective, loss, accuracy = algorithm.meta_objective(episode)
        (objective / batch).backward()
        losses.append(loss.detach())
        if accuracy is not None:
            accuracies.append(accuracy.detach())
    return losses, accuracies


def shares(indices: list[int], workers: int) -> list[list[int]]:
    """Contiguous, near-equal shares of `indices`, the first for the training process."""
    size, extra = divmod(len(indices), workers)
    bounds = [0]
    for w in range(workers):
        bounds.append(bounds[-1] + size + (1 if w < extra else 0))
    return [indices[a:b] for a, b in zip(bounds, bounds[1:])]


def _serve(conn: Any, saved: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
           seed: int, helper: int) -> None:
    """A helper process: build, then one share of a meta-step per message until None."""
    # Ctrl-C, `timeout` and SLURM signal the whole process group: the training process commits
    # its step and then stops the helpers, which must live until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    allocator.tune_process()  # as the training process (meta_cli.job.guarded)
    try:
        from meta_cli.build import build

        run = build(saved["config"], splits=saved.get("splits"))
        algorithm = run.algorithm.train()
        own = list(algorithm.parameters())
        if [p.shape for p in own] != [p.shape for p in params]:
            raise RuntimeError("the helper's model does not match the training process's")
        for p, shared in zip(own, params):
            p.data = shared
        source = run.source
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001 - reported to the training process, which raises
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the training process is gone
            return
        if message is None:
            return
        iteration, indices, ways, shots, query, batch, bf16 = message
        try:
            torch.manual_seed((seed * 1_000_003 + iteration) * 1024 + helper)
            for p in own:
                p.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses, accuracies = backward_tasks(
                    algorithm, (source.episode("train", index, seed, ways, shots, query) for index in indices), batch)
            present = []
            for p, buffer in zip(own, grads):
                present.append(p.grad is not None)
                if p.grad is not None:
                    buffer.copy_(p.grad)
            conn.send(("done", ([x.item() for x in losses], [x.item() for x in accuracies], present)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Helpers:
    """workers - 1 helper processes that share `algorithm`'s parameters."""

    def __init__(self, algorithm: Algorithm, saved: dict[str, Any], workers: int, seed: int) -> None:
        self.params = [p for p in algorithm.parameters()]
        for p in self.params:
            p.data.share_memory_()
        context = mp.get_context("spawn")  # fork after OpenMP has started can hang the child
        self.connections, self.processes, self.grads = [], [], []
        for helper in range(1, workers):
            grads = [torch.zeros_like(p).share_memory_() for p in self.params]
            parent, child = context.Pipe()
            process = context.Process(target=_serve, daemon=True, name=f"meta-cli-worker-{helper}",
                                      args=(child, saved, [p.data for p in self.params], grads, seed, helper))
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
            self.grads.append(grads)
        atexit.register(self.close)  # before multiprocessing's own exit handler, which would wait
        for helper in range(len(self.processes)):
            self._receive(helper, "start")

    def _receive(self, helper: int, doing: str) -> Any:
        connection, process = self.connections[helper], self.processes[helper]
        if not connection.poll(TIMEOUT_S):
            raise RuntimeError(f"train.workers: helper {helper + 1} did not {doing} within {TIMEOUT_S:.0f} s")
        try:
            kind, value = connection.recv()
        except EOFError:
            raise RuntimeError(f"train.workers: helper {helper + 1} died (exit code {process.exitcode}) "
                               f"during {doing}; run with train.workers=1 to see the error in this process") from None
        if kind == "error":
            raise RuntimeError(f"train.workers: helper {helper + 1} failed during {doing}:\n{value}")
        return value

    def submit(self, iteration: int, shares: list[list[int]], ways: int, shots: int, query: int,
               batch: int, bf16: bool) -> None:
        for connection, indices in zip(self.connections, shares):
            connection.send((iteration, indices, ways, shots, query, batch, bf16))

    def collect(self) -> tuple[list[float], list[float]]:
        """Adds each helper's gradient sum to the parameters' .grad, in helper order."""
        losses, accuracies = [], []
        for helper, grads in enumerate(self.grads):
            helper_losses, helper_accuracies, present = self._receive(helper, "a meta-step")
            losses += helper_losses
            accuracies += helper_accuracies
            for p, buffer, has in zip(self.params, grads, present):
                if has:
                    p.grad = buffer.clone() if p.grad is None else p.grad.add_(buffer)
        return losses, accuracies

    def close(self) -> None:
        """Stops the helpers (they ignore SIGTERM, so a stuck one is killed)."""
        for connection in self.connections:
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.connections, self.processes = [], []
        atexit.unregister(self.close)
