"""Meta-training speed: learn2learn's own loop against meta-cli's engine, in one process.

For each setting, on the same episodes and the same initial weights:
  reference  the loop of learn2learn's examples/vision/maml_omniglot.py (clone, adapt per task,
             query loss backward, gradients scaled by 1/meta-batch, Adam), on pre-drawn episodes;
  meta-cli   the Episodes regime's step (episodes sampled on the fly from the tensor on the device), with
             algorithm.backend=l2l (the default) and backend=vmap (torch.func; MAML only); with
             --compile also backend=vmap with algorithm.compile=true (torch.compile).
Prints tasks/s (median of --repeats timings of --steps meta-steps after --warmup; the contenders
take turns) and the ratio to the reference, plus the share of a meta-step spent sampling
episodes; with --memory also each contender's peak memory per meta-step and per task it holds
at once. Runs with a meta-cli job's process settings (malloc tuning, denormals flushed), but
without the malloc tuning under --memory.

  .venv/bin/python scripts/bench.py [--device cpu|cuda] [--settings 5w1s,20w1s,proto60,mini] [--memory] [--compile]

--continual instead times the continual protocol's streams (eval.protocol=continual): the
streams (and rates) of one schedule length learned by a plain Python loop over streams and
rates against one torch.func.vmap over them (meta_cli.evaluation.continual), on real Omniglot
meta-test streams and an OML model (conv4 representation, linear head); streams/s, one run each.

  .venv/bin/python scripts/bench.py --continual [--classes 10] [--streams 20] [--rates 1]

--model-based instead times the model-based family, algorithm.backend=batched against loop (the
episodes one by one), each built as `meta-cli train algorithm=A dataset=D` builds it (the preset
A_D_backbone applies, with its meta-batch size), on Omniglot 5-way 1-shot and sinusoid:

  .venv/bin/python scripts/bench.py --model-based [--settings mann-omniglot,meta_lstm-sinusoid,...]

--eval-cache times meta-testing instead: 600 episodes (--eval-episodes) of 5w1s and 20w5s with
ProtoNet, uncached against eval.cache=true (`bench_eval_cache`).
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from meta_cli.runtime import allocator
from meta_cli._l2l import l2l
from meta_cli.algorithms.maml import MAML
from meta_cli.algorithms.protonet import ProtoNet
from meta_cli.data.base import Episode, TaskSource, episode_rng
from meta_cli.data.omniglot import Omniglot
from meta_cli.engine.regimes.episodes import Episodes
from meta_cli.engine.settings import TrainSettings
from meta_cli.models.conv4 import Conv4

DATA = Path(os.environ.get("META_CLI_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))

SETTINGS = {  # name: (algorithm, ways, shots, query, inner steps, fast lr, meta-batch, backbone)
    "5w1s": ("maml", 5, 1, 1, 1, 0.4, 32, "conv4"),
    "20w1s": ("maml", 20, 1, 1, 5, 0.1, 16, "conv4"),
    "proto60": ("protonet", 60, 5, 5, 0, 0.0, 1, "conv4_pool"),
    "mini": ("maml", 5, 1, 1, 5, 0.01, 4, "cnn4"),  # 84x84x3 random tensors, 32 filters
}


class RandomImages(TaskSource):
    """mini-ImageNet-shaped episodes of random pixels: for timing only."""

    task = "classification"
    input_shape = (3, 84, 84)

    def __init__(self, ways: int, shots: int, query: int) -> None:
        self.ways, self.shots, self.query = ways, shots, query
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> "RandomImages":
        self.device = device
        return self

    def episode(self, split, index, seed, ways, shots, query) -> Episode:
        g = torch.Generator().manual_seed(int(episode_rng(seed, split, index).integers(2**31)))
        s = torch.rand(ways * shots, *self.input_shape, generator=g)
        q = torch.rand(ways * query, *self.input_shape, generator=g)
        labels = lambda n: torch.arange(ways).repeat_interleave(n)  # noqa: E731
        return Episode(s, labels(shots), q, labels(query)).to(self.device)


def make(setting: str, backend: str, device: torch.device, compile: bool = False):
    algorithm, ways, shots, query, steps, lr, batch, backbone = SETTINGS[setting]
    if backbone == "cnn4":
        source: TaskSource = RandomImages(ways, shots, query)
        net = Conv4(input_shape=source.input_shape, hidden=32, max_pool=True)
    else:
        source = Omniglot(root=str(DATA), ways=ways, shots=shots, query=query, flips=False, augment=False,
                          download=False)
        net = Conv4(input_shape=source.input_shape, hidden=64, max_pool=backbone == "conv4_pool")
    torch.manual_seed(0)  # the same initial weights for every contender
    if algorithm == "maml":
        model = MAML(net, "classification", ways, fast_lr=lr, adaptation_steps=steps, backend=backend,
                     compile=compile)
    else:
        model = ProtoNet(net, "classification", ways)
    return source.to(device), model.to(device), batch


def reference_step(maml: l2l.algorithms.MAML, optimizer, episodes: list[Episode], steps: int) -> None:
    """learn2learn's examples/vision/maml_omniglot.py, one meta-step."""
    loss = nn.CrossEntropyLoss()
    optimizer.zero_grad()
    for e in episodes:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(loss(learner(e.support), e.support_labels))
        loss(learner(e.query), e.query_labels).backward()
    for p in maml.parameters():
        p.grad.data.mul_(1.0 / len(episodes))
    optimizer.step()


def protonet_reference_step(model: nn.Module, optimizer, episode: Episode, ways: int, shots: int) -> None:
    """learn2learn's examples/vision/protonet_miniimagenet.py fast_adapt, one step."""
    optimizer.zero_grad()
    embeddings = model(torch.cat([episode.support, episode.query]))
    support = embeddings[: ways * shots].reshape(ways, shots, -1).mean(dim=1)
    query = embeddings[ways * shots:]
    logits = -((query.unsqueeze(1) - support.unsqueeze(0)) ** 2).sum(dim=2)
    nn.functional.cross_entropy(logits, episode.query_labels).backward()
    optimizer.step()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(step, n: int, first: int, device: torch.device) -> float:
    """Bytes a meta-step needs above what was resident before it: the peak over `n` steps.

    On CUDA, torch's peak-allocation counter. On CPU (Linux), the process's peak resident set
    (VmHWM), reset through /proc/self/clear_refs after freed heap memory is handed back to the
    OS (malloc_trim), so one contender's peak does not hide the next one's.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS") * 1024
    for i in range(n):
        step(first + i)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kib("VmHWM") * 1024
    return float(peak - base)


def timed(steps: list, n: int, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Median seconds per meta-step of each contender. The contenders take turns, one timing of
    `n` steps each per round, so that drift (heap growth, clock, other load) falls on all of
    them alike rather than on whichever runs first."""
    for step in steps:
        for i in range(warmup):
            step(i)
    sync(device)
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats):
        for step, own in zip(steps, times):
            start = time.perf_counter()
            for i in range(n):
                step(warmup + r * n + i)
            sync(device)
            own.append((time.perf_counter() - start) / n)
    return [statistics.median(own) for own in times]


def bench(setting: str, device: torch.device, args) -> list[tuple[str, float]]:
    algorithm, ways, shots, query, steps, lr, batch, _ = SETTINGS[setting]
    source, model, batch = make(setting, "l2l", device)
    # Reference, on the episodes the engine draws, pre-drawn (its data loading is not timed).
    total = args.warmup + args.repeats * args.steps
    drawn = [[source.episode("train", i * batch + t, 0, ways, shots, query) for t in range(batch)]
             for i in range(total)]
    reference = copy.deepcopy(model)
    if algorithm == "maml":
        ref_maml = l2l.algorithms.MAML(reference.maml.module, lr=lr, first_order=False)
        ref_opt = torch.optim.Adam(ref_maml.parameters(), lr=0.003)
        ref_step = lambda i: reference_step(ref_maml, ref_opt, drawn[i], steps)  # noqa: E731
    else:
        ref_opt = torch.optim.Adam(reference.parameters(), lr=0.001)
        ref_step = lambda i: protonet_reference_step(reference.backbone, ref_opt, drawn[i][0], ways, shots)  # noqa: E731
    contenders = [("reference (learn2learn loop)", ref_step)]
    settings = TrainSettings(meta_batch_size=batch, meta_lr=0.003, progress=False)
    backends = [("l2l", False), ("vmap", False)] if algorithm == "maml" else [("l2l", False)]
    if algorithm == "maml" and args.compile:
        backends.append(("vmap", True))
    for backend, compile in backends:
        _, engine_model, _ = make(setting, backend, device, compile)
        regime = Episodes(engine_model, source)
        regime.start(settings, 0, bf16=False)
        name = f"meta-cli backend={backend}" + (" compile=true" if compile else "")
        if compile:  # the compilation itself is not timed, but reported
            start = time.perf_counter()
            regime.step(1)
            sync(device)
            print(f"({setting}: compiling took {time.perf_counter() - start:.0f} s)", file=sys.stderr)
        contenders.append((name, lambda i, r=regime: r.step(i + 1)))
    sample = lambda i: [source.episode("train", i * batch + t, 0, ways, shots, query)  # noqa: E731
                        for t in range(batch)]
    seconds = timed([step for _, step in contenders] + [sample], args.steps, args.warmup, args.repeats, device)
    results = []
    for (name, step), own in zip(contenders, seconds):
        memory = peak_memory(step, args.steps, 0, device) if args.memory else None
        results.append((name, own, memory))
    results.append(("episode sampling alone", seconds[-1], None))
    return results, batch


def bench_continual(device: torch.device, classes: int, streams: int, rates: int) -> None:
    """Streams/s of the continual protocol, looped against vmapped, on the same streams."""
    from meta_cli.algorithms.oml import OML
    from meta_cli.evaluation.continual import cut, draw, run_batched, run_looped

    torch.manual_seed(0)
    source = Omniglot(str(DATA)).to(device)
    model = OML(Conv4(source.input_shape), "classification", 5, source.num_classes("train")).to(device).eval()
    shots, heldout = 15, 5
    data = [cut(draw(source, model, "test", s, 0, classes, shots, heldout), classes, shots, heldout)
            for s in range(streams)]
    lrs = [0.03 * 3 ** k for k in range(rates)]
    print(f"| contender | streams x rates | steps per stream | seconds | streams/s | ratio to the loop |")
    print("|---|---|---|---|---|---|")
    times = {}
    for name, run in (("loop", run_looped), ("vmap", run_batched)):
        start = time.perf_counter()
        out = run(model, data, classes, lrs)
        sync(device)
        times[name] = time.perf_counter() - start
        n = streams * rates
        print(f"| {name} | {streams} x {rates} | {classes * shots} | {times[name]:.2f} | {n / times[name]:.2f} | "
              f"{times['loop'] / times[name]:.2f}x |")
        if name == "loop":
            reference = out
    for a, b in zip(reference, out):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), "vmap and loop disagree"


def bench_eval_cache(device: torch.device, episodes: int, body: str) -> None:
    """Meta-testing `episodes` Omniglot test episodes, 5w1s and 20w5s (query 5), with ProtoNet on
    a running-statistics body: uncached (each episode's images embedded in the episode) against
    eval.cache=true (each image of the split embedded once). One run of each, the same episodes;
    the table says whether the accuracies are equal."""
    from meta_cli.engine.cross_domain import fit_source
    from meta_cli.engine.instantiate import instantiate
    from meta_cli.evaluation.episodes import EvalSettings, test_rows

    node = ({"_target_": "meta_cli.models.timm.Timm", "name": "test_resnet", "image_size": 28} if body == "timm"
            else {"_target_": "meta_cli.models.resnet12.ResNet12"})
    source = fit_source(Omniglot(str(DATA)), node).to(device)
    torch.manual_seed(0)
    model = ProtoNet(instantiate(node, input_shape=source.input_shape), "classification", 5).to(device)
    # Untimed: the split's pixels loaded (and decoded into the cache, on a first run), the body warm.
    with torch.no_grad():
        model.eval().backbone(source.episode("test", 0, 0, 5, 1, 5).support)
    label = "timm test_resnet at 28x28 (3 channels)" if body == "timm" else "resnet12"
    print(f"ProtoNet, {label}, random init; Omniglot minimal test split "
          f"({source.num_classes('test')} classes), {episodes} episodes per setting\n")
    print("| setting | uncached s | cached s (embedding the split included) | speed-up | same accuracy |")
    print("|---|---|---|---|---|")
    for ways, shots in ((5, 1), (20, 5)):
        timings, rows = {}, {}
        for cache in (False, True):
            settings = EvalSettings(episodes=episodes, ways=[ways], shots=[shots], query=5, cache=cache)
            start = time.perf_counter()
            rows[cache] = test_rows(model, source, settings, {})[0]
            sync(device)
            timings[cache] = time.perf_counter() - start
        same = rows[False]["_episodes"].episode_accuracies == rows[True]["_episodes"].episode_accuracies
        print(f"| {ways}w{shots}s | {timings[False]:.1f} | {timings[True]:.1f} | "
              f"{timings[False] / timings[True]:.1f}x | {'yes' if same else 'NO'} "
              f"({100 * rows[True]['accuracy']:.2f} %) |")
        sys.stdout.flush()


MODEL_BASED = {  # name: `meta-cli train` overrides; the preset for the pair applies as in the CLI
    "mann-omniglot": ["algorithm=mann", "dataset=omniglot"],
    "mann-sinusoid": ["algorithm=mann", "dataset=sinusoid"],
    "meta_lstm-omniglot": ["algorithm=meta_lstm", "dataset=omniglot"],
    "meta_lstm-sinusoid": ["algorithm=meta_lstm", "dataset=sinusoid"],
}


def cli_regime(overrides: list[str], device: torch.device):
    """The Episodes regime of `meta-cli train <overrides>` (preset included), built as a job
    builds it: the config composed by Hydra, checked, the model seeded and built."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from meta_cli.engine.build import build, check_train
    from meta_cli.runtime.distributed import World

    with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
        config = compose(config_name="train", overrides=[*overrides, f"device={device.type}"])
    config = OmegaConf.to_container(config, resolve=True)
    if "root" in config["dataset"]:
        config["dataset"].update(root=str(DATA), download=False)
    run = build(check_train(config), World())
    return run.regime, run.spec.train.meta_batch_size


def bench_model_based(name: str, device: torch.device, args) -> None:
    """One row per backend: tasks/s of the engine's training step, and batched / loop."""
    regimes = {backend: cli_regime([*MODEL_BASED[name], f"algorithm.backend={backend}"], device)
               for backend in ("loop", "batched")}
    batch = regimes["loop"][1]
    seconds = timed([lambda i, r=regime: r.step(i + 1) for regime, _ in regimes.values()],
                    args.steps, args.warmup, args.repeats, device)
    loop = seconds[0]
    for (backend, _), own in zip(regimes.items(), seconds):
        print(f"| {name} | {batch} | {backend} | {batch / own:,.1f} | {loop / own:.2f}x |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=5, help="meta-steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also backend=vmap with algorithm.compile=true (MAML settings; compiling takes minutes)")
    parser.add_argument("--model-based", action="store_true",
                        help="time MANN and Meta-LSTM, algorithm.backend=batched against loop (settings: "
                             + ",".join(MODEL_BASED) + ")")
    parser.add_argument("--memory", action="store_true",
                        help="also the peak memory of a meta-step above the resident baseline, per task")
    parser.add_argument("--continual", action="store_true", help="time the continual protocol's streams instead")
    parser.add_argument("--classes", type=int, default=10, help="--continual: classes per stream")
    parser.add_argument("--streams", type=int, default=20, help="--continual: streams")
    parser.add_argument("--rates", type=int, default=1, help="--continual: learning rates per stream")
    parser.add_argument("--eval-cache", action="store_true",
                        help="only the meta-test section: eval.cache=true against uncached (ProtoNet, 5w1s and 20w5s)")
    parser.add_argument("--eval-episodes", type=int, default=600)
    parser.add_argument("--eval-body", choices=["timm", "resnet12"], default="timm")
    args = parser.parse_args()
    # The process settings of a meta-cli job (meta_cli/job.py), so the engine is timed as it
    # trains. They are process-wide: the reference, in the same process, gets them too. Not the
    # malloc tuning under --memory: freed blocks it keeps resident would count in the peaks.
    tuned = allocator.tune_process(malloc=not args.memory)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"device: {device.type} ({name}); torch {torch.__version__}; python {sys.version.split()[0]}")
    if args.continual:
        bench_continual(device, args.classes, args.streams, args.rates)
        return
    if args.eval_cache:
        bench_eval_cache(device, args.eval_episodes, args.eval_body)
        return
    print(f"median of {args.repeats} timings of {args.steps} meta-steps after {args.warmup} warm-up steps, "
          f"the contenders in turn; malloc tuning {'on' if tuned else 'off'}\n")
    if args.model_based:
        print("| setting (preset) | meta-batch | algorithm.backend | tasks/s | ratio to loop |")
        print("|---|---|---|---|---|")
        names = args.settings.split(",") if args.settings != ",".join(SETTINGS) else list(MODEL_BASED)
        for name in names:
            bench_model_based(name, device, args)
        return
    # learn2learn's loop (and backend=l2l) holds one task's graph at a time, the vmap backend
    # the whole meta-batch's: memory per task is the peak over the tasks held at once.
    memory = " peak MiB per meta-step | tasks held at once | peak MiB per task held | ratio |" if args.memory else ""
    print("| setting | contender | tasks/s | ratio to reference |" + memory)
    print("|---|---|---|---|" + ("---|---|---|---|" if args.memory else ""))
    for setting in args.settings.split(","):
        results, batch = bench(setting, device, args)
        reference = results[0][1]
        reference_memory = results[0][2]
        for contender, seconds, peak in results:
            if contender == "episode sampling alone":
                engine = results[1][1]
                print(f"| {setting} | {contender} | {batch / seconds:,.0f} | "
                      f"{100 * seconds / engine:.1f} % of a meta-cli step |" + (" | | | |" if args.memory else ""))
            else:
                held = batch if "vmap" in contender else 1
                extra = (f" {peak / 2**20:,.1f} | {held} | {peak / held / 2**20:,.1f} | "
                         f"{peak / held / reference_memory:.2f}x |") if args.memory else ""
                print(f"| {setting} | {contender} | {batch / seconds:,.1f} | {reference / seconds:.2f}x |" + extra)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
