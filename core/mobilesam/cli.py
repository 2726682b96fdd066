"""`mobilesam` command line. Built-in subcommands live in `mobilesam.commands.<module>` and expose
`register(subparsers)`; modules are imported lazily so `mobilesam --help` stays fast.

Front-ends add their own subcommands through the `mobilesam.commands` entry-point group: each entry
point names a `register(subparsers)` callable (`NAME = "package.module:function"` in the front-end's
pyproject.toml, NAME being the subcommand), so the core never imports a front-end. A plugin that
fails to load is skipped with a warning naming it; the other commands keep working.
"""

import argparse
import importlib
import re
import sys
import warnings
import zlib
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points

from .errors import MobileSamError, UsageError
from .runtime import configure_allocator

# module name in mobilesam.commands -> the subcommands it registers
COMMAND_MODULES = (
    "segment",
    "weights",
    "everything",
    "ais",
    "volume",
    "distill",
    "evaluate",
    "onnx",
    "info",
)

# Entry-point group through which installed packages contribute subcommands.
PLUGIN_GROUP = "mobilesam.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilesam", description="MobileSAM segmentation tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mobilesam.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mobilesam.commands.{name}":
                continue  # subcommand not part of this build
            raise
        module.register(subparsers)
    for plugin in plugin_commands():
        register_plugin(subparsers, plugin)
    return parser


def plugin_commands() -> list[EntryPoint]:
    """The installed `mobilesam.commands` entry points, by name (one per name: the first found)."""
    unique: dict[str, EntryPoint] = {}
    for plugin in entry_points(group=PLUGIN_GROUP):
        unique.setdefault(plugin.name, plugin)
    return [unique[name] for name in sorted(unique)]


def register_plugin(subparsers, plugin: EntryPoint) -> bool:
    """Add one plugin's subcommand(s); a plugin that is broken or clashes with a command is skipped
    with a warning naming it, so one bad package never takes the whole CLI down."""
    source = f"{plugin.name} = {plugin.value}"
    if plugin.name in subparsers.choices:
        warnings.warn(
            f"mobilesam: command plugin {source!r} skipped: a command {plugin.name!r} already exists",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    try:
        plugin.load()(subparsers)
    except Exception as exc:  # a plugin's bug must not break `mobilesam --help`
        warnings.warn(
            f"mobilesam: command plugin {source!r} failed to load and is skipped: "
            f"{type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


# Options whose value is a list of coordinates; "-5,3" after them is a value, not an option.
COORDINATE_OPTIONS = ("--point", "--box", "--prompt")
_NEGATIVE_VALUE = re.compile(r"^-[\d.]")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """["--point", "-5,3"] -> ["--point=-5,3"]: argparse takes "-5,3" for an option otherwise."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in COORDINATE_OPTIONS and _NEGATIVE_VALUE.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    # Before any model is built: keeps torch's large buffers in the heap (~2x faster encoder on glibc).
    configure_allocator()
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    except (MobileSamError, ValueError, OSError, EOFError, zlib.error) as exc:
        # OSError: FileExistsError, NotADirectoryError, PermissionError, ... all name their file.
        print(f"mobilesam {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mobilesam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
