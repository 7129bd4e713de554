"""The configs ship inside the package: a non-editable install runs from any directory."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_configs_and_runs_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("meta_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert len(configs) > 40 and "experiment/maml_omniglot_5w1s.yaml" in configs
    for config in configs:  # every preset of the repo ships, new config groups included
        assert f"meta_cli/conf/{config}" in names, config

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", "import meta_cli.cli, sys; print(meta_cli.cli.__file__); "
         "sys.argv = ['meta-cli', 'train', '+experiment=protonet_omniglot_5w1s', '--cfg', 'job']; meta_cli.cli.main()"],
        cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the repo
    assert "meta_cli.algorithms.protonet.ProtoNet" in result.stdout
