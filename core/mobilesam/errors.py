"""Exceptions with messages meant for people, shared by the core and the front-ends."""


class MobileSamError(Exception):
    """Base class: anything the user can fix (bad file, bad input, missing weights)."""


class CheckpointError(MobileSamError, ValueError):
    """A checkpoint file that is missing, unreadable, truncated or of another architecture."""


class MissingWeightsError(MobileSamError, FileNotFoundError):
    """No local weights and they could not be downloaded."""


class Cancelled(MobileSamError):
    """Long work (embedding a volume, propagation, training) was cancelled by the caller."""


class UsageError(MobileSamError):
    """Bad command-line arguments: the `mobilesam` CLI reports it as a usage error (exit 2), not a
    traceback. Here rather than in `mobilesam.cli` so that subcommands never import the CLI."""
