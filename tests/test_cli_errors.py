"""Every bad input stops before any work: one line on stderr, exit 1, no traceback, no run dir."""
from __future__ import annotations

import subprocess
import sys

import pytest

BAD_TRAIN_INPUTS = [
    # (overrides, words the one line must contain)
    (["algorithm.fast_lrr=0.1"], ["algorithm.fast_lrr", "fast_lr", "adaptation_steps"]),
    (["+algorithm.fast_lrr=0.1"], ["algorithm.fast_lrr", "Allowed keys", "fast_lr"]),
    (["+misspelled=1"], ["'misspelled'", "Allowed keys", "train"]),
    (["train.iteratons=5"], ["train.iteratons", "iterations"]),
    (["dataset.ways=abc"], ["dataset.ways", "integer >= 2", "got abc."]),
    (["train.iterations=1.5"], ["train.iterations", "integer >= 1"]),
    (["algorithm.first_order=maybe"], ["algorithm.first_order", "true or false"]),
    (["dataset.ways=1"], ["dataset.ways", ">= 2"]),
    (["dataset.shots=0"], ["dataset.shots", ">= 1"]),
    (["algorithm.fast_lr=0"], ["algorithm.fast_lr", "> 0"]),
    (["train.meta_lr=-0.001"], ["train.meta_lr", "> 0"]),
    (["dataset.ways=60"], ["dataset.ways=60", "59 classes", "val split", "<= 47 (the test split has 47)"]),
    (["dataset.ways=48"], ["dataset.ways=48", "47 classes", "test split", "unless eval.ways"]),
    (["dataset.shots=15", "dataset.query=10"], ["shots + query = 15 + 10", "lower dataset.query to 5"]),
    (["eval.ways=48", "algorithm=protonet"], ["eval.ways=48", "47 classes", "test split"]),
    (["dataset.query=20"], ["shots + query = 1 + 20", "20 images", "dataset.query"]),
    (["train.query=20", "algorithm=reptile"], ["shots + query = 1 + 20", "20 images", "train.query"]),
    (["train.query=0"], ["train.query", ">= 1"]),
    (["dataset.variant=huge"], ["dataset.variant", "minimal, full"]),
    (["algorithm=mamll"], ["algorithm 'mamll'", "fomaml, maml, maml_trpo, mann"]),
    (["backbone=resnet"], ["backbone 'resnet'", "conv4", "mlp"]),
    (["device=cuda"], ["device=cuda", "device=cpu"]),
    (["seed=-1"], ["seed", ">= 0"]),
    (["algorithm=protonet", "dataset=sinusoid"], ["classification", "regression"]),
    (["dataset=sinusoid", "backbone=conv4"], ["conv4", "backbone=mlp"]),
    (["algorithm=maml", "eval.ways=10"], ["eval.ways=10", "5-way", "head"]),
    (["-m", "dataset.ways=5,60"], ["dataset.ways=60", "59 classes"]),  # a sweep fails whole
    (["dataset=sinusoid", "dataset.ways=5"], ["dataset.ways", "Allowed keys of dataset", "shots"]),
    (["algorithm=maml", "train.ways=20"], ["train.ways=20", "output"]),
    (["train.clip_grad_norm=0"], ["train.clip_grad_norm", "> 0"]),
    (["train.keep_checkpoints=0"], ["train.keep_checkpoints", ">= 1"]),
    (["algorithm=fomaml", "algorithm.compile=true"], ["algorithm.compile=true", "algorithm.backend=vmap"]),
    (["resume=no/such/run"], ["resume=", "no such run dir"]),
    # torch.distributed: refused before any rank starts (the relaunch would make a run dir)
    (["distributed.processes=0"], ["distributed.processes", ">= 1", "got 0"]),
    (["distributed.processes=2", "train.meta_batch_size=1"], ["train.meta_batch_size=1", "2 processes"]),
    (["algorithm=pretrain", "distributed.processes=2", "train.batch_size=1"], ["train.batch_size=1", "2 processes"]),
    (["distributed.backend=nccl"], ["distributed.backend=nccl", "CUDA", "gloo"]),
    (["distributed.backend=nccl", "distributed.processes=2"], ["distributed.backend=nccl", "gloo"]),
    (["device=cuda", "distributed.processes=2"], ["device=cuda", "device=cpu"]),
    (["-m", "resume=a,b"], ["resume= resumes one run"]),
    (["eval.tasks=3"], ["eval.tasks applies to meta-RL only", "eval.episodes"]),
    (["dataset=sinusoid", "eval.tasks=3"], ["eval.tasks applies to meta-RL only", "regression"]),
    # a preset the user names must exist (the defaults entry is optional for pairings without one)
    (["algorithm=protonet", "preset=protonet_omniglot_conv4pool"],
     ["Unknown preset 'protonet_omniglot_conv4pool'", "protonet_omniglot_conv4_pool"]),
    (["preset=nonexistent"], ["Unknown preset 'nonexistent'", "maml_omniglot_conv4"]),
    # a preset's value that clashes with the user's setting is blamed on the preset
    (["algorithm=protonet", "distributed.processes=2"],
     ["train.meta_batch_size=1", "preset protonet_omniglot_conv4_pool", "preset=none"]),
    # what Hydra's lexer cannot read: say how to write it
    (["--iterations", "5"], ["unknown option --iterations", "train.iterations=VALUE"]),
    (["hydra.run.dir=/tmp/\u00e4"], ["hydra.run.dir", "must be quoted", "'hydra.run.dir=\"/tmp/\u00e4\"'"]),
    (["experiment=protonet_omniglot_5w1s"], ["+experiment=protonet_omniglot_5w1s"]),
]


def _assert_one_line_error(result, words, tmp_path):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meta-cli: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "outputs").exists()  # nothing started, nothing written


@pytest.mark.parametrize("overrides,words", BAD_TRAIN_INPUTS,
                         ids=[" ".join(o) for o, _ in BAD_TRAIN_INPUTS])
def test_bad_train_input(cli, tmp_path, overrides, words):
    _assert_one_line_error(cli("train", *overrides), words, tmp_path)


def test_missing_dataset_offline_names_files(cli, tmp_path):
    result = cli("train", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false")
    _assert_one_line_error(result, ["images_background_small1.zip", "images_background_small2.zip",
                                    str(tmp_path / "empty" / "omniglot"), "META_CLI_DATA"], tmp_path)


def test_eval_checkpoint_missing(cli, tmp_path):
    result = cli("eval", "checkpoint=nope/best.pt")
    _assert_one_line_error(result, ["does not exist", "best.pt"], tmp_path)


def test_eval_checkpoint_is_a_directory(cli, tmp_path):
    (tmp_path / "run").mkdir()
    result = cli("eval", f"checkpoint={tmp_path / 'run'}")
    _assert_one_line_error(result, ["is a directory"], tmp_path)


@pytest.mark.parametrize("given", ["run", "run/checkpoints"])
def test_eval_of_a_folder_names_the_checkpoint_inside(cli, tmp_path, given):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"x")
    result = cli("eval", f"checkpoint={tmp_path / given}")
    line = result.stderr.strip()
    assert f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}?" in line, line
    assert "checkpoints/checkpoints" not in line


def test_eval_checkpoint_not_a_checkpoint(cli, tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    result = cli("eval", f"checkpoint={tmp_path / 'notes.pt'}")
    _assert_one_line_error(result, ["notes.pt", "not a readable PyTorch file"], tmp_path)


def test_classification_eval_refuses_eval_tasks(cli, tmp_path):
    """eval.tasks counts meta-RL's test tasks: a classification eval would ignore it."""
    trained = cli("train", "preset=none", "train.iterations=1", "train.meta_batch_size=1", "train.val_episodes=1",
                  "eval.episodes=1", "train.progress=false", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = cli("eval", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "eval.tasks=10")
    _assert_one_line_error(result, ["eval.tasks applies to meta-RL only", "classification", "eval.episodes"],
                           tmp_path)


BAD_EVAL_INPUTS = [
    # the checkpoint decides the episodes' shots (eval dataset=NAME or not): eval.shots sets them
    (["dataset.shots=5"], ["dataset.shots", "eval.shots"]),
    (["algorithm=protonet"], ["eval takes the checkpoint's algorithm", "algorithm.head=logistic"]),
]


@pytest.mark.parametrize("overrides,words", BAD_EVAL_INPUTS, ids=[" ".join(o) for o, _ in BAD_EVAL_INPUTS])
def test_bad_eval_input(cli, tmp_path, overrides, words):
    """eval's messages name what eval takes: never dataset.* keys, never Hydra's group advice."""
    _assert_one_line_error(cli("eval", "checkpoint=no/such.pt", *overrides), words, tmp_path)


def test_eval_requires_checkpoint(cli, tmp_path):
    _assert_one_line_error(cli("eval"), ["checkpoint= is required", "meta-cli eval checkpoint="], tmp_path)
    assert "???" not in cli("eval").stderr


def test_cfg_job_with_a_bad_key_is_one_line(cli, tmp_path):
    _assert_one_line_error(cli("train", "--cfg", "job", "algorithm.fast_lrr=1"),
                           ["algorithm.fast_lrr", "Allowed keys"], tmp_path)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_help_lists_only_what_the_command_takes(cli, command):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "device: auto, cpu, cuda" in result.stdout and "checkpoint" in result.stdout
    groups = result.stdout.split("== Config ==")[0]  # eval's config has `algorithm: {}`, test-time keys
    taken = ("dataset:",) if command == "eval" else ()  # eval dataset=NAME: another dataset to meta-test on
    for group in ("algorithm:", "dataset:", "backbone:", "experiment:", "logger:"):
        assert (group in groups) == (group in taken), group


def test_an_argument_error_loads_no_heavy_library(tmp_path):
    """The pre-flight refuses a bad key without torch, learn2learn, pandas or matplotlib:
    those take seconds to import (docs/benchmarks.md, start-up)."""
    code = ("import sys\nfrom meta_cli.cli.main import run\n"
            "assert run(['train', 'algorithm.fast_lrr=1']) == 1\n"
            "print(sorted(m for m in ('torch', 'learn2learn', 'pandas', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "algorithm.fast_lrr" in result.stderr


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_help_loads_no_heavy_library(tmp_path, command):
    """--help reads the config groups from conf/ without Hydra's group scan or torch: it is as
    quick as an argument error (docs/benchmarks.md, start-up)."""
    code = ("import sys\nfrom meta_cli.cli.main import run\n"
            f"assert run([{command!r}, '--help']) == 0\n"
            "print(sorted(m for m in ('torch', 'learn2learn', 'pandas', 'matplotlib') if m in sys.modules), "
            "file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
    assert f"meta-cli {command}" in result.stdout


@pytest.mark.parametrize("line,offered", [("meta-cli train algo", "algorithm="),
                                          ("meta-cli train algorithm=proto", "algorithm=protonet"),
                                          ("meta-cli ev", "eval")])
def test_tab_completion_answers_the_shell(cli, line, offered):
    """The completion script Hydra installs (--hydra-help: -sc install=bash) calls
    `meta-cli -sc query=bash` with COMP_LINE set: it must answer with the candidates."""
    result = cli("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr
    assert offered in result.stdout.split(), result.stdout


def test_full_error_env_shows_traceback(cli, tmp_path):
    result = cli("train", "dataset.ways=1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "eval" in result.stdout


@pytest.mark.parametrize("module", ["meta_cli", "meta_cli.cli.main"])
def test_python_dash_m_is_the_console_script(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "eval" in result.stdout


def test_unknown_command_is_a_usage_error(cli):
    result = cli("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr and "train, eval" in result.stderr
    assert cli().returncode == 2


def test_command_help_shows_config_groups(cli):
    result = cli("train", "--help")
    assert result.returncode == 0
    for group in ("algorithm", "dataset", "backbone", "device"):
        assert group in result.stdout
    assert "protonet" in result.stdout and "sinusoid" in result.stdout and "conv4_pool" in result.stdout


def test_cfg_job_prints_config_without_running(cli, tmp_path):
    result = cli("train", "algorithm=protonet", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "meta_cli.algorithms.protonet.ProtoNet" in result.stdout
    assert not (tmp_path / "outputs").exists()
