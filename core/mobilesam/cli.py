"""`mobilesam` command line. Each subcommand lives in `mobilesam.commands.<module>` and exposes
`register(subparsers)`; modules are imported lazily so `mobilesam --help` stays fast and a
front-end's dependencies are needed only by the subcommand that starts it."""

import argparse
import importlib
import re
import sys
import zlib
from collections.abc import Sequence

from .errors import MobileSamError
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
    "serve",
    "labelstudio",
    "info",
)


class UsageError(MobileSamError):
    """Bad command-line arguments: reported as a usage error (exit 2), not a traceback."""


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
    return parser


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
