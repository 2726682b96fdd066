"""Subcommands of the `mobilesam` CLI; each module has `register(subparsers)` (see mobilesam.cli)."""
