"""Shared fixtures: the real Omniglot minimal zips from ../shared and a CLI runner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"

# pytest-xdist runs one test per worker at once; torch's default of one intra-op thread per core
# in each would put workers x cores threads on the cores, and OpenMP threads spin while they wait.
# Set before torch is imported, so it holds here and in every meta-cli the tests start.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

#: No test may run longer than this: a hung launcher or rank fails its test, never the suite.
TEST_LIMIT_S = 420


def _descendants(pid: int) -> list[int]:
    """Every live process below pid, from /proc (ranks are grandchildren of a launcher)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(autouse=True)
def bounded_in_time():
    """Fail a test that runs past TEST_LIMIT_S, and kill whatever processes it left behind."""

    def expire(signum, frame):
        raise TimeoutError(f"the test ran past {TEST_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding omniglot/; a missing copy is a failure, never a skip."""
    folder = SHARED_DATA / "omniglot"
    assert (folder / "images_background_small1.zip").is_file(), (
        f"the shared Omniglot zips are missing from {folder}: the tests need ../shared/datasets"
    )
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli(tmp_path: Path, data_root: Path, cache_dir: Path):
    """Run `meta-cli ARGS` in a subprocess, in tmp_path, offline; returns CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 360) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        extra = dict(env or {})
        if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):
            # A test's own path (a sitecustomize that kills the run) goes first; the caller's
            # stays, so the run is of the checkout under test, not of the venv's install.
            extra["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
        full_env.update({"META_CLI_DATA": str(data_root), "META_CLI_CACHE": str(cache_dir), **extra})
        exe = Path(sys.executable).with_name("meta-cli")
        # A session of its own, so a timeout kills the ranks a launcher started as well: they
        # hold the pipes, and subprocess.run would wait on them forever.
        proc = subprocess.Popen([str(exe), *args], cwd=cwd or tmp_path, env=full_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"meta-cli {' '.join(args)} ran past {timeout} s:\n{err[-3000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run


def run_dirs(root: Path) -> list[Path]:
    """Run dirs under root/outputs (those with a .hydra folder)."""
    return sorted(p.parent for p in (root / "outputs").rglob(".hydra"))


def config_options(group: str) -> list[str]:
    """The options of a config group, as conf/ ships them: tests discover what to cover."""
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def algorithm_class(name: str):
    """The class conf/algorithm/<name>.yaml builds."""
    import yaml
    from hydra.utils import get_object

    return get_object(yaml.safe_load((REPO / "conf" / "algorithm" / f"{name}.yaml").read_text())["_target_"])


def algorithms(task: str, regime: str = "episodes") -> list[str]:
    """The algorithm options that learn `task` ("classification", "regression", "rl") in the
    regime named `regime` ("episodes", "batches", "rollouts", ...)."""
    from meta_cli.engine.regimes.base import regime_of

    found = []
    for name in config_options("algorithm"):
        cls = algorithm_class(name)
        if task in cls.tasks and regime_of(cls).name == regime:
            found.append(name)
    return found
