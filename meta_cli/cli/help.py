"""`meta-cli <command> --help` and shell completion, answered without running a Hydra app.

Hydra's own `--help` lists the options of every config group by building a config repository
per group (96 of them with Hydra's own), which took 4-5 s on 2 cores; here the groups are read
from the packaged conf/ folders and the config composed once (the pre-flight's compose API),
and the command's help template (`hydra.help.template`) is filled in as Hydra fills it.

Completion: Hydra's bash script (`meta-cli train -sc install=bash`) asks `meta-cli -sc
query=bash` with the line typed so far in COMP_LINE; the dispatcher answers for the command
named on that line (`complete`).
"""
from __future__ import annotations

import os
import string
from importlib import resources

from omegaconf import OmegaConf, open_dict


def groups() -> dict[str, list[str]]:
    """Config group -> its options, as conf/ ships them (hydra/launcher among them)."""
    root = resources.files("meta_cli.conf")
    found: dict[str, list[str]] = {}

    def walk(folder, prefix: str) -> None:  # noqa: ANN001 - an importlib Traversable
        options = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
        if options and prefix:
            found[prefix] = options
        for child in sorted(folder.iterdir(), key=lambda f: f.name):
            if child.is_dir() and not child.name.startswith("__"):
                walk(child, f"{prefix}/{child.name}" if prefix else child.name)

    walk(root, "")
    return found


def app_help(command: str) -> str:
    """The text Hydra's `--help` prints for `command`, from its help template."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
            config = compose(config_name=command, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    template = str(config.hydra.help.template)
    with open_dict(config):
        del config["hydra"]
    listed = groups()
    mine = "\n".join(f"{g}: {', '.join(o)}" for g, o in listed.items() if not g.startswith("hydra"))
    hydra = "\n".join(f"{g}: {', '.join(o)}" for g, o in listed.items() if g.startswith("hydra/"))
    return string.Template(template).safe_substitute(
        APP_CONFIG_GROUPS=mine, HYDRA_CONFIG_GROUPS=hydra, FLAGS_HELP="",
        CONFIG=OmegaConf.to_yaml(config, resolve=False))


def complete(commands: list[str]) -> list[str]:
    """`meta-cli -sc query=bash`: the suggestions for the line the shell is completing
    (COMP_LINE). The command word completes to the commands; after it, Hydra completes the
    command's overrides, asked with the line as the command's own app would see it."""
    words = os.environ.get("COMP_LINE", "").split()
    typing_command = len(words) < 2 or (len(words) == 2 and not os.environ.get("COMP_LINE", "").endswith(" "))
    if typing_command:
        return commands
    command, rest = words[1], os.environ["COMP_LINE"].split(words[1], 1)[1]
    if command not in commands or command == "report":
        return []  # report takes a folder: the shell's own completion (-o default)
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.plugins.completion_plugin import DefaultCompletionPlugin

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="meta_cli.conf", version_base="1.3"):
            plugin = DefaultCompletionPlugin(GlobalHydra.instance().config_loader())
            return plugin._query(config_name=command, line=rest.lstrip())
    finally:
        GlobalHydra.instance().clear()
