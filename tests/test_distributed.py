"""One run across processes on torch.distributed (gloo on loopback): the CLI's short form and
torchrun agree with one process; a dead rank is one line, not a hang; resume takes any number
of processes."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meta_cli.runtime.distributed import World

TINY = ["train.iterations=4", "train.meta_batch_size=4", "train.val_every=2", "train.val_episodes=6",
        "train.log_every=1", "eval.episodes=8", "train.progress=false"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_shares_are_contiguous_and_cover_every_number():
    for count in (1, 4, 5, 16):
        for size in (1, 2, 3):
            shares = [World(rank, size).share(count) for rank in range(size)]
            assert [i for s in shares for i in s] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(cli, tmp_path):
    """distributed.processes=2: rank 0 alone writes; the learning curve is one process's up to
    float rounding; eval of its best.pt on 2 processes gives exactly the one-process files."""
    one_thread = {"OMP_NUM_THREADS": "1"}
    two = cli("train", *TINY, "distributed.processes=2", "hydra.run.dir=two", env=one_thread)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr and "WARNING" not in two.stderr
    one = cli("train", *TINY, "hydra.run.dir=one", env=one_thread)
    assert one.returncode == 0, one.stderr[-3000:]
    run = tmp_path / "two"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    rows = list(zip(_rows(run / "metrics.csv"), _rows(tmp_path / "one" / "metrics.csv"), strict=True))
    for a, b in rows:
        assert (a["iteration"], a["split"]) == (b["iteration"], b["split"])
        # Adam turns the rounding of differently summed gradients into small weight changes
        # (tests below check the meta-gradient itself to 1e-12); the first step sees none.
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=2e-2)
    assert float(rows[0][0]["loss"]) == pytest.approx(float(rows[0][1]["loss"]), rel=1e-5)
    best = run / "checkpoints" / "best.pt"
    outputs = {}
    # As a user runs them: one process with the threads of every core (2 here), two processes
    # with one thread each (what the relaunch gives them on 2 cores). MAML's test-time inner
    # loop sums its gradients in thread-sized chunks: these differ unless eval pins its threads.
    for processes, threads in ((1, "2"), (2, "1")):
        result = cli("eval", f"checkpoint={best}", "eval.episodes=10", f"distributed.processes={processes}",
                     f"hydra.run.dir=eval{processes}", env={"OMP_NUM_THREADS": threads})
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[processes] = [(tmp_path / f"eval{processes}" / name).read_text()
                              for name in ("accuracy.csv", "episodes.csv")]
    assert outputs[1] == outputs[2]
    # The training run's own meta-test (two single-threaded ranks) is the same as well.
    trained = (run / "episodes.csv").read_text().splitlines()
    assert trained == (tmp_path / "eval1" / "episodes.csv").read_text().splitlines()[:len(trained)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRADIENT = '''
import os, sys, torch, torch.distributed as dist
from meta_cli.runtime.distributed import World
from meta_cli.engine.settings import TrainSettings
from meta_cli.engine.regimes.episodes import Episodes
sys.path.insert(0, {tests!r})
from test_distributed import tiny_run

rank, size, port, name, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if size > 1:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=size)
torch.set_num_threads(1)
algorithm, source = tiny_run(name)
regime = Episodes(algorithm, source, World(rank, size))
regime.start(TrainSettings(meta_batch_size=4), 7, bf16=False)
regime.update.optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.0)  # keeps the weights, leaves .grad
regime.step(1)
if rank == 0:
    torch.save([p.grad for p in algorithm.parameters()], out)
if size > 1:
    # As meta_cli.runtime.distributed.finish ends a rank: meet, then leave without the
    # interpreter's teardown, where gloo's threads can abort a finished rank (SIGABRT,
    # "terminate called without an active exception").
    dist.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
'''


def tiny_run(name: str):
    """A float64 model and a source of random 3-way 1-shot 12x12 episodes (numbered, seeded)."""
    from meta_cli.algorithms.maml import MAML
    from meta_cli.algorithms.mann import MANN
    from meta_cli.algorithms.meta_lstm import MetaLSTM
    from meta_cli.algorithms.protonet import ProtoNet
    from meta_cli.algorithms.reptile import Reptile
    from meta_cli.data.base import Episode, TaskSource, episode_rng
    from meta_cli.models.conv4 import Conv4

    class Random(TaskSource):
        task, input_shape, ways, shots, query = "classification", (1, 12, 12), 3, 1, 2

        def episode(self, split, index, seed, ways, shots, query):
            rng = episode_rng(seed, split, index)
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            images = torch.rand(ways * (shots + query), 1, 12, 12, generator=g, dtype=torch.float64)
            labels = torch.arange(ways)
            return Episode(images[:ways * shots], labels.repeat_interleave(shots), images[ways * shots:],
                           labels.repeat_interleave(query), seed=int(rng.integers(2**62)))

    torch.manual_seed(0)
    body = Conv4((1, 12, 12), hidden=4, max_pool=name == "protonet", layers=2, channels_last=False)
    algorithm = {
        "maml-l2l": lambda: MAML(body, "classification", 3, fast_lr=0.1, backend="l2l"),
        "maml-vmap": lambda: MAML(body, "classification", 3, fast_lr=0.1, backend="vmap"),
        "protonet": lambda: ProtoNet(body, "classification", 3),
        "reptile": lambda: Reptile(body, "classification", 3, inner_batch=2, inner_steps=3),
        "mann": lambda: MANN(body, "classification", 3, controller=8, memory_slots=6, memory_width=3, read_heads=2),
        "meta_lstm": lambda: MetaLSTM(body, "classification", 3, steps=2, hidden=3),
    }[name]()
    return algorithm.double(), Random()


@pytest.mark.parametrize("name", ["maml-l2l", "maml-vmap", "protonet", "reptile", "mann", "meta_lstm"])
def test_two_process_meta_gradient_equals_one_process_in_float64(tmp_path, name):
    script = tmp_path / "gradient.py"
    script.write_text(GRADIENT.format(tests=str(Path(__file__).parent)))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), "0", "1", "0", name, str(tmp_path / "one.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    ranks = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(port), name, str(tmp_path / "two.pt")],
                              env=env, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err
    single = torch.load(tmp_path / "one.pt", weights_only=True)
    shared = torch.load(tmp_path / "two.pt", weights_only=True)
    assert any(g.abs().sum() > 0 for g in single)
    for a, b in zip(single, shared, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def _rank_pids(launcher: int) -> dict[int, int]:
    """The worker processes under a launcher, by their RANK."""
    found = {}
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int((child / "stat").read_text().split(") ")[1].split()[1]) != launcher:
                continue
            environ = dict(kv.split("=", 1) for kv in (child / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = int(child.name)
    return found


LONG = ["algorithm=fomaml", "train.iterations=60", "train.checkpoint_every=5", "train.val_every=30",
        "train.val_episodes=4", "eval.episodes=4", "train.progress=false", "train.meta_batch_size=4"]


def _start(tmp_path, data_root, cache_dir, *args) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir)}
    return subprocess.Popen([str(exe), "train", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), (path, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")


@pytest.mark.slow
def test_a_dead_rank_is_one_line_and_the_run_resumes(tmp_path, data_root, cache_dir, cli):
    proc = _start(tmp_path, data_root, cache_dir, *LONG, "distributed.processes=2",
                  "distributed.timeout_s=30", "hydra.run.dir=run")
    _wait_for(tmp_path / "run" / "checkpoints" / "step-0000005.json", proc)
    started = time.time()
    victim = _rank_pids(proc.pid)[1]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert time.time() - started < 90  # bounded, not a hang
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("meta-cli: error:")]
    assert len(errors) == 1 and ("died" in errors[0] or "stopped" in errors[0]), err
    assert "Traceback" not in err
    if "died" in errors[0]:  # (the launcher may have stopped rank 0 first: then it says so)
        # The dead rank by number and pid, no wait to sit out, and the command that goes on.
        assert errors[0].startswith(f"meta-cli: error: rank 0 of 2: rank 1 (pid {victim}) died during "), errors[0]
        assert "timeout_s" not in errors[0]
        assert errors[0].endswith(f"resume with: meta-cli train resume={tmp_path / 'run'}"), errors[0]
    resumed = cli("train", "resume=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(tmp_path / "run" / "metrics.csv")
    iterations = [int(r["iteration"]) for r in rows if r["split"] == "train"]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 60


def test_a_lost_rank_is_named_where_it_can_be(tmp_path):
    """A rank on this host whose process ended is named with its pid; a timeout says so, and
    a connection closed by a rank on another host says that much."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: gone from /proc
    here = socket.gethostname()
    world = World(0, 3, peers=((here, os.getpid()), (here, ended.pid), ("elsewhere", 1)), timeout_s=30)
    closed = "[pair.cc:561] Connection closed by peer [127.0.0.1]:54928"
    assert world._lost("the stop check", closed).startswith(
        f"rank 0 of 3: rank 1 (pid {ended.pid}) died during the stop check ([pair.cc:561]")
    alive = World(0, 2, peers=((here, os.getpid()), ("elsewhere", 1)), timeout_s=30)
    assert alive._lost("a barrier", "Timed out waiting 30000ms for recv operation to complete").startswith(
        "rank 0 of 2: a rank did not answer within distributed.timeout_s=30 s during a barrier")
    assert alive._lost("a barrier", closed).startswith("rank 0 of 2: another rank died (it closed its connection")


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one(tmp_path, data_root, cache_dir, cli):
    proc = _start(tmp_path, data_root, cache_dir, *LONG, "distributed.processes=2", "hydra.run.dir=run")
    _wait_for(tmp_path / "run" / "checkpoints" / "step-0000005.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "death signal" not in err  # the launcher's own log line: the ranks' one line says it
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "stopped"
    resumed = cli("train", "resume=run", "distributed.processes=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(tmp_path / "run" / "metrics.csv")
    iterations = [int(r["iteration"]) for r in rows if r["split"] == "train"]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 60
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "ok"


def test_a_slurm_job_of_several_tasks_is_one_rank_per_task(monkeypatch):
    """submitit_slurm_ddp: SLURM's task variables become torch.distributed's (through
    submitit's TorchDistributedEnvironment), and rank 0 alone writes .hydra/ and the log."""
    from omegaconf import OmegaConf

    import meta_cli.rundir.job  # noqa: F401 - registers the meta_cli.rank0 resolver
    from meta_cli.runtime import distributed

    # submitit exports into os.environ itself: a copy keeps its RANK=1 from every later test
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "123", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_NODEID": "0", "SLURM_STEP_ID": "0",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_NODELIST": "node1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert distributed.launched() and distributed.env_rank() == 1
    distributed._from_slurm()
    assert [os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")] == ["1", "2", "1", "node1"]
    config = OmegaConf.create({"a": "${meta_cli.rank0:.hydra}", "b": "${meta_cli.rank0:x.log,/dev/null}"})
    assert (config.a, config.b) == (None, "/dev/null")
    monkeypatch.setenv("RANK", "0")
    assert (config.a, config.b) == (".hydra", "x.log")


def test_ranks_started_with_other_configs_are_refused(tmp_path, data_root, cache_dir):
    """Two ranks of one launch with different command lines (seed=0, seed=1): one line from rank
    0 naming the config hashes, exit 1 on both, and no run dir."""
    exe = Path(sys.executable).with_name("meta-cli")
    env = {**os.environ, "META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([str(exe), "train", "algorithm=fomaml", f"seed={rank}", "hydra.run.dir=run"],
                              cwd=tmp_path, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=180) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [1, 1], outputs
    (line,) = outputs[0][1].strip().splitlines()
    assert line.startswith("meta-cli: error: rank 1 was started with another config than rank 0"), line
    assert "config hash" in line and outputs[1][1].strip() == ""
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_under_torchrun_a_refused_run_makes_no_run_dir(tmp_path, cache_dir):
    """Rank 0's pre-flight verdict reaches every rank: none goes on into Hydra, which would
    make the run dir of a run that rank 0 refused."""
    env = {**os.environ, "META_CLI_DATA": str(tmp_path / "nowhere"), "META_CLI_CACHE": str(cache_dir),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "meta_cli", "train", "algorithm=fomaml", "dataset.download=false"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert result.stderr.startswith("meta-cli: error: Omniglot files missing"), result.stderr[:3000]
    assert not (tmp_path / "outputs").exists()
    # torchrun then prints its own report of the failed ranks (README: what torchrun adds); each
    # rank's "traceback" in it is meta-cli's line, read from the rank's error file.
    assert "traceback : meta-cli: error: Omniglot files missing" in result.stderr
    assert "To enable traceback" not in result.stderr


def test_a_relaunch_warns_when_omp_threads_outnumber_the_cores(monkeypatch, capsys):
    """OMP_NUM_THREADS set by the user is kept (as torchrun keeps it), with one warning when
    the ranks' threads outnumber the cores."""
    import torch.distributed.run

    from meta_cli.cli import launch
    from meta_cli.cli.commandline import CommandLine

    launched = []
    monkeypatch.setattr(torch.distributed.run, "run", lambda args: launched.append(args))
    monkeypatch.setattr(launch, "_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    command = CommandLine.parse("train", ["hydra.run.dir=x"])
    assert launch.relaunch(command, 2) == 0 and launched
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("meta-cli: warning: OMP_NUM_THREADS=2 gives 2 processes 4 threads on 2 cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launch.relaunch(command, 2)
    assert capsys.readouterr().err == ""


def test_relaunched_eval_and_predict_keep_their_own_run_dirs():
    """The relaunch fixes the run dir before the ranks start: each command's own, as
    conf/<command>.yaml names it (eval and predict apart from training runs)."""
    import re

    from meta_cli.cli import launch

    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", launch.run_dir_default(False))
    assert re.fullmatch(r"outputs/eval/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", launch.run_dir_default(False, "eval"))
    assert re.fullmatch(r"outputs/eval/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}",
                        launch.run_dir_default(True, "eval"))
    assert launch.run_dir_default(False, "predict").startswith("outputs/predict/")
