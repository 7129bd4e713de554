"""The pre-flight: a command line is checked before Hydra runs anything.

Every job of a sweep is composed with Hydra's compose API and its config validated
(`meta_cli.config.validation`: keys, types, ranges; no torch, so this takes a second). Hydra's own
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
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf, open_dict

from meta_cli.cli.commandline import CommandLine, key_of
from meta_cli.config import presets
from meta_cli.rundir import files
from meta_cli.errors import UserError
from meta_cli.config.validation import check_config, plain

MAX_COMBINATIONS = 256


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper would expand them."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException:
        raise UserError(_unparsable(parser, overrides)) from None
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


def check_flags(line: CommandLine) -> None:
    """An option Hydra does not know, as `--iterations 5`: say how meta-cli spells it."""
    unknown = line.unknown_flags()
    if not unknown:
        return
    name = unknown[0].lstrip("-").split("=", 1)[0].replace("-", "_")
    keys = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
            config = OmegaConf.to_container(compose(config_name=line.command), resolve=False)
    finally:
        GlobalHydra.instance().clear()

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key == name:
                keys.append(f"{prefix}{key}")

    walk(config, "")
    example = f"{keys[0]}=VALUE" if keys else "key=value"
    raise UserError(f"unknown option {unknown[0]}: meta-cli {line.command} takes Hydra overrides, "
                    f"key=value without dashes: {example} (meta-cli {line.command} --help lists them).")


def _unparsable(parser: OverridesParser, overrides: list[str]) -> str:
    """Which override Hydra's grammar refuses, and how to write it."""
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            break
    else:
        return "cannot parse the overrides; write each as key=value."
    key, has_value, value = override.partition("=")
    if not has_value:
        return (f"cannot parse '{override}': meta-cli takes key=value overrides "
                f"(e.g. train.iterations=5), not values or --options.")
    if any(ord(c) > 127 or c.isspace() for c in value) or any(c in value for c in "()[]{}<>,:'\"\\$"):
        return (f"cannot parse the value of {key}: a value with spaces, non-ASCII characters or any of "
                f"()[]{{}}<>,:'\" must be quoted for Hydra, inside the shell's quotes: '{key}=\"{value}\"'.")
    return f"cannot parse '{override}': check the key's spelling (letters, digits, _ . / - @ +~ prefixes)."


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
            bad = key.group(1)
            if (resources.files("meta_cli.conf") / bad).is_dir():  # a group outside the defaults list
                if config_name == "eval" and bad == "algorithm":
                    raise UserError("eval takes the checkpoint's algorithm; give only its test-time keys, "
                                    "e.g. algorithm.test_adaptation_steps=10 or algorithm.head=logistic.")
                value = next(o.split("=", 1)[1] for o in overrides if key_of(o) == bad)
                raise UserError(f"{bad} is an optional group, not in the defaults list: add it with a +, "
                                f"+{bad}={value}.")
            # Compose a misspelled key as an addition so the validator names the allowed keys.
            fixed = ["+" + o if o.split("=", 1)[0] == bad else o for o in overrides]
            try:
                return compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
            except HydraException:
                pass
        raise UserError(_explain(exc))


def _untuneable(composed: Any) -> list[str]:
    """The keys a sweeper's search space (hparams_search=optuna) names that the job (its config
    with its hydra node) does not have."""
    params = OmegaConf.select(composed, "hydra.sweeper.params", default=None) or {}
    return [str(key) for key in params if OmegaConf.select(composed, str(key), default=None) is None]


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
            jobs, untuneable = [], []
            if command == "eval" and any(key_of(o).lstrip("+~").split(".")[0] == "backbone" for o in overrides):
                raise UserError("eval takes the checkpoint's model: backbone keys do not apply (the image "
                                "size and channels come from the checkpoint, the images are brought to them).")
            for combo in _combinations(overrides):
                named = [o.split("=", 1)[1] for o in combo if key_of(o) == "preset" and "=" in o]
                if named:
                    presets.check_named(named[-1])
                composed = _compose(command, combo)
                if not jobs:  # the first job's composition serves both checks (each ~0.5 s)
                    untuneable = _untuneable(composed)
                choice = OmegaConf.select(composed, "hydra.runtime.choices.preset", default=None)
                with open_dict(composed):
                    del composed["hydra"]
                job = Job(plain(composed), combo, choice)
                check(job, lambda config: check_config(command, config))
                jobs.append(job)
            if untuneable:
                raise UserError(f"the sweeper tunes '{untuneable[0]}', which this config does not have (e.g. "
                                f"protonet has no inner loop); pick an algorithm that has it or set "
                                f"hydra.sweeper.params.")
    finally:
        GlobalHydra.instance().clear()
    return jobs


def check(job: Job, checker: Callable[[dict[str, Any]], Any]) -> None:
    """`checker(job.config)`, its UserError naming the preset if the faulty key came from it."""
    try:
        checker(job.config)
    except UserError as exc:
        raise presets.blame(exc, job.preset, job.overrides) from None


def check_writable(line: CommandLine) -> None:
    """The run (or sweep) dir must be creatable and writable before Hydra starts writing.

    Tried for real (permission bits say nothing to root, or on a read-only mount): the dir is
    created (for the default `outputs/<date>/<time>`, only `outputs/`) and a temp file probed.
    A given dir that exists must hold only meta-cli's files (`rundir.files.check_folder`).
    """
    key = line.run_dir_key + "="
    given = line.value(line.run_dir_key)
    target = Path(given or "outputs").expanduser().absolute()
    if given:
        files.check_folder(target, line.multirun, key, resuming=line.value("resume") not in (None, "", "null"))
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
    ("backbone", "timm"): ("timm", "timm"),
}


def check_plugins(overrides: tuple[str, ...] | list[str]) -> None:
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
