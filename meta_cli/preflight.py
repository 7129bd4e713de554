"""The pre-flight: a command line is checked before Hydra runs anything.

Every job of a sweep is composed with Hydra's compose API and its config validated
(`meta_cli.validation`: keys, types, ranges; no torch, so this takes a second). Hydra's own
composition errors (a misspelled key, an unknown group option) become one line that names the
key and what is allowed. The command's own checks (`precheck` in each app: data against the
settings, checkpoints, images) then run on the composed configs. Run-level checks live here
too: the run dir must be writable, a launcher's plugin installed.
"""
from __future__ import annotations

import importlib
import itertools
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf, open_dict

from meta_cli import presets
from meta_cli.errors import UserError
from meta_cli.validation import check_config, plain

MAX_COMBINATIONS = 256
# Hydra flags that take a value.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
#: Hydra's --info takes an optional value, one of these.
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """A command line's Hydra flags (with their values) and its overrides."""
    flags, overrides, value = [], [], False
    for i, a in enumerate(args):
        if value or (a in INFO_VALUES and i > 0 and args[i - 1] in ("--info", "-i")):
            flags.append(a)
            value = False
        elif a.startswith("-"):
            flags.append(a)
            value = a in VALUE_FLAGS
        else:
            overrides.append(a)
    return flags, overrides


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper would expand them."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise UserError(f"cannot parse the overrides: {str(exc).splitlines()[0]}")
    options: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # interval()/tags for other sweepers: check the rest only
                continue
            options.append([f"{key}={v}" for v in values])
        else:
            options.append([o.input_line])
    # A large grid is checked on its first jobs only; the product is never materialised.
    return [list(c) for c in itertools.islice(itertools.product(*options), MAX_COMBINATIONS)]


def _explain(exc: Exception) -> str:
    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if isinstance(exc, MissingConfigException) and missing:
        group, option = missing.groups()
        available = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"Unknown {group} '{option}'. Available {group} options: {', '.join(available)}."
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _compose(config_name: str, overrides: list[str]):
    try:
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except HydraException as exc:
        key = re.search(r"Could not override '([^']+)'", str(exc))
        if key and "+" + key.group(1) in str(exc):  # "To append to your config use +key=..."
            # Compose it as an addition so the validator names the allowed keys.
            bad = key.group(1)
            fixed = ["+" + o if o.split("=", 1)[0] == bad else o for o in overrides]
            try:
                return compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
            except HydraException:
                pass
        raise UserError(_explain(exc))


def _check_search_space(config_name: str, overrides: list[str]) -> None:
    """A sweeper's search space (hparams_search=optuna) may only name keys the jobs have."""
    first = next(iter(_combinations(overrides)), overrides)
    try:
        cfg = compose(config_name=config_name, overrides=first, return_hydra_config=True)
    except HydraException:
        return  # already reported by the job's own check
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    for key in params:
        if OmegaConf.select(cfg, str(key), default=None) is None:
            raise UserError(f"the sweeper tunes '{key}', which this config does not have (e.g. "
                            f"protonet has no inner loop); pick an algorithm that has it or set "
                            f"hydra.sweeper.params.")


@dataclass
class Job:
    """One job of a command line: its composed config, its own overrides, its preset choice."""

    config: dict[str, Any]
    overrides: list[str]
    preset: str | None


def compose_jobs(command: str, overrides: list[str]) -> list[Job]:
    """Every job (up to MAX_COMBINATIONS), composed and validated; the first fault is a
    UserError (naming the preset when the faulty key came from it)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
            jobs = []
            for combo in _combinations(overrides):
                composed = _compose(command, combo)
                choice = OmegaConf.select(composed, "hydra.runtime.choices.preset", default=None)
                with open_dict(composed):
                    del composed["hydra"]
                job = Job(plain(composed), combo, choice)
                check(job, lambda config: check_config(command, config))
                jobs.append(job)
            _check_search_space(command, overrides)
    finally:
        GlobalHydra.instance().clear()
    return jobs


def check(job: Job, checker: Callable[[dict[str, Any]], Any]) -> None:
    """`checker(job.config)`, its UserError naming the preset if the faulty key came from it."""
    try:
        checker(job.config)
    except UserError as exc:
        raise presets.blame(exc, job.preset, job.overrides) from None


def check_writable(overrides: list[str], multirun: bool) -> None:
    """The run (or sweep) dir must be creatable and writable before Hydra starts writing.

    Tried for real (permission bits say nothing to root, or on a read-only mount): the dir is
    created (for the default `outputs/<date>/<time>`, only `outputs/`) and a temp file probed.
    """
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [o[len(key):].strip("'\"") for o in overrides if o.startswith(key)]
    target = Path(given[-1] if given else "outputs").expanduser().absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the run dir {target}: {exc.strerror or exc}; choose a "
                        f"writable one with {key}PATH (or run from a writable folder).")


#: Optional plugins behind config options: (override, option) -> (module, pip extra).
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    ("hydra/launcher", "submitit_slurm_ddp"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "launchers"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hparams_search", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("logger", "tensorboard"): ("tensorboard", "tensorboard"),
}


def check_plugins(overrides: list[str]) -> None:
    """A preset whose plugin is not installed: say which extra installs it."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        for option in value.split(","):
            plugin = PLUGINS.get((key, option.strip()))
            if plugin is None:
                continue
            module, extra = plugin
            try:
                importlib.import_module(module)
            except ImportError:
                raise UserError(f"{key}={option} needs the {module.split('.')[-1].replace('_', '-')} "
                                f"package: pip install 'meta-cli[{extra}]' (scripts/setup.sh installs it).")
