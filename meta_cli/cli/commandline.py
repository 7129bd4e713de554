"""A meta-cli command line, parsed once into the `CommandLine` every later step reads: the
pre-flight, `resume=`'s expansion, the relaunch over several processes, and Hydra's argv."""
from __future__ import annotations

from dataclasses import dataclass, replace

#: Hydra flags that take a value.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
#: Hydra's --info takes an optional value, one of these.
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
#: Flags that print instead of running a job: the overrides are still checked (one line on a
#: bad key), but nothing is loaded, built or written.
INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p"}
#: Flags after which Hydra neither composes the overrides nor runs a job, or which point Hydra
#: at other configs than the packaged ones the pre-flight composes: no pre-flight.
UNCHECKED_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc",
                   "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                   "--experimental-rerun"}
MULTIRUN_FLAGS = {"-m", "--multirun"}
#: Every flag Hydra's parser knows.
HYDRA_FLAGS = VALUE_FLAGS | INFO_FLAGS | UNCHECKED_FLAGS | MULTIRUN_FLAGS | {"--run", "-r"}


def unquote(value: str) -> str:
    return value.strip("'\"")


def quote(value: object) -> str:
    """A path as an override value Hydra's parser reads back as it was."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def key_of(override: str) -> str:
    """`+key=value`, `~key`, `key=value` -> key."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass(frozen=True)
class CommandLine:
    """`meta-cli <command> [flags] [overrides]`: Hydra's flags (each with its value, where it
    takes one) and the `key=value` overrides, in their order. A flag may stand anywhere."""

    command: str
    flags: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, command: str, args: list[str]) -> "CommandLine":
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
        if command in ("eval", "predict"):  # their `algorithm: {}` takes new keys: Hydra wants a `+`
            overrides = [f"+{o}" if o.startswith("algorithm.") else o for o in overrides]
        return cls(command, tuple(flags), tuple(overrides))

    def unknown_flags(self) -> list[str]:
        """Flags Hydra does not know (`--iterations`: an option of some other tool's style)."""
        return [f for f in self.flags if f.startswith("-") and f.split("=", 1)[0] not in HYDRA_FLAGS]

    @property
    def multirun(self) -> bool:
        return bool(MULTIRUN_FLAGS & set(self.flags))

    @property
    def info(self) -> bool:
        """Whether Hydra only prints (--cfg, --info): checked, but nothing runs."""
        return bool(INFO_FLAGS & set(self.flags))

    @property
    def unchecked(self) -> bool:
        """Whether Hydra runs no job of the packaged configs (--help, -sc, --config-path ...)."""
        return bool(UNCHECKED_FLAGS & set(self.flags))

    @property
    def run_dir_key(self) -> str:
        return "hydra.sweep.dir" if self.multirun else "hydra.run.dir"

    def value(self, key: str) -> str | None:
        """The value the last override of `key` sets (unquoted), or None."""
        given = [o.split("=", 1)[1] for o in self.overrides if "=" in o and key_of(o) == key]
        return unquote(given[-1]) if given else None

    def without(self, key: str) -> "CommandLine":
        return replace(self, overrides=tuple(o for o in self.overrides if key_of(o) != key))

    def merged(self, *groups: list[str] | tuple[str, ...]) -> "CommandLine":
        """These overrides, then `groups`' in order, one entry per key: a later value replaces
        an earlier one in its place, so replaying a run's overrides never repeats a key."""
        merged: dict[str, str] = {}
        for override in (o for group in (self.overrides, *groups) for o in group):
            merged[key_of(override)] = override
        return replace(self, overrides=tuple(merged.values()))

    def argv(self) -> list[str]:
        """The arguments after the command, as Hydra (or a relaunched rank) reads them."""
        return [*self.flags, *self.overrides]
