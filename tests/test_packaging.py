"""The configs ship inside the package: a non-editable install runs from any directory, and a
new config group or subpackage ships with no edit to pyproject.toml."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

# Added to a copy of the repo before the wheel is built: neither is named in pyproject.toml.
NEW_GROUP = "conf/zz_new_group/probe.yaml"
NEW_PACKAGE = "meta_cli/zz_new_package/__init__.py"


def _copy_of_the_repo(target):
    """The files git knows (committed or not, but not ignored), plus a new group and package."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    (target / NEW_GROUP).parent.mkdir()
    (target / NEW_GROUP).write_text("# @package _global_\ntrain:\n  iterations: 7\n")
    (target / NEW_PACKAGE).parent.mkdir()
    (target / NEW_PACKAGE).write_text('"""A subpackage pyproject.toml does not name."""\n')


def test_wheel_contains_configs_and_runs_from_elsewhere(tmp_path):
    source = tmp_path / "source"
    _copy_of_the_repo(source)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("meta_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    configs = {p.relative_to(source / "conf").as_posix() for p in (source / "conf").rglob("*.yaml")}
    assert len(configs) > 40 and "experiment/maml_omniglot_5w1s.yaml" in configs
    shipped = {n.removeprefix("meta_cli/conf/") for n in names
               if n.startswith("meta_cli/conf/") and n.endswith(".yaml")}
    assert shipped == configs  # every config of the repo, the new group's included; nothing else
    modules = {p.relative_to(source).as_posix() for p in (source / "meta_cli").rglob("*.py")}
    assert NEW_PACKAGE in modules and modules <= names, sorted(modules - names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", "import meta_cli.cli.main, sys; print(meta_cli.cli.__file__); "
         "sys.argv = ['meta-cli', 'train', '+experiment=protonet_omniglot_5w1s', '+zz_new_group=probe', "
         "'--cfg', 'job']; meta_cli.cli.main()"],
        cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the repo
    assert "meta_cli.algorithms.protonet.ProtoNet" in result.stdout
    assert "iterations: 7" in result.stdout  # the new group, found through pkg://meta_cli.conf
