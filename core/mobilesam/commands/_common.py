"""Argument helpers shared by subcommands."""

import argparse
import os
from contextlib import contextmanager

from ..build_sam import MODEL_TYPES
from ..runtime import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-type / --checkpoint / --no-download, resolved by `mobilesam.load_model`."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        default=None,
        help="architecture (default: that of --checkpoint, else vit_t)",
    )
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights file (default: $MOBILESAM_CHECKPOINT, else the cached official weights, "
        "downloaded on first use)",
    )
    group.add_argument("--no-download", action="store_true", help="never download weights")
    group.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="encoder arithmetic: bf16 needs a CPU with AVX512-BF16/AMX (~20%% faster, embeddings "
        "~5e-3 off fp32); auto picks bf16 where available (default: $MOBILESAM_PRECISION, else auto; "
        "see `mobilesam info`)",
    )


def load_model_from_args(args: argparse.Namespace):
    from ..build_sam import load_model

    return load_model(
        args.model_type,
        args.checkpoint,
        device=args.device,
        allow_download=not args.no_download,
        precision=precision_from_args(args),
    )


def precision_from_args(args: argparse.Namespace) -> str:
    """--precision, else $MOBILESAM_PRECISION, else "auto" (the front-ends' default)."""
    from ..serving.backend import PRECISION_ENV, parse_precision

    return getattr(args, "precision", None) or parse_precision(os.environ.get(PRECISION_ENV))


@contextmanager
def progress_bar(desc: str, unit: str, enabled: bool = True):
    """A tqdm bar and a `progress(done, total)` callback for the core's long-running functions."""
    from tqdm.auto import tqdm

    with tqdm(desc=desc, unit=unit, disable=not enabled) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress, bar
