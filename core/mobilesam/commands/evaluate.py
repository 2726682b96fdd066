"""`mobilesam evaluate --model A.pt --reference B.pt --images DIR|sa_*.tar`: the MobileSAM paper's mIoU measure."""

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ._common import progress_bar
from .distill import IMAGES_HELP, check_image_size


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="mIoU of a model's masks against a reference model's, plus speed and size",
        description="For each object, prompt both models with a random point inside it (or its box) and report "
        "the mean IoU of the model's masks against the reference's, with image-encoder time and "
        "parameter counts side by side. Objects are the images' SA-1B annotations (in the tar shards, "
        "or <image>.json next to an image) where there are any, else the reference model's masks.",
    )
    p.add_argument(
        "--model", required=True, metavar="A.pt", help="model to evaluate (e.g. a distilled student)"
    )
    p.add_argument("--reference", required=True, metavar="B.pt", help="reference model (e.g. the teacher)")
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        metavar="PATH",
        help=IMAGES_HELP + "; use images not trained on (e.g. a held-out shard)",
    )
    p.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="only the first N images (sorted)"
    )
    p.add_argument("--prompt", choices=("point", "box"), default="point")
    p.add_argument("--n", type=int, default=16, help="objects per image (default 16)")
    p.add_argument("--image-size", type=int, default=1024, help="model input size (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", metavar="OUT.json", help="also write the results (with per-object IoUs) here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_bytes
    from ..distill.evaluate import evaluate

    check_image_size(args.image_size)
    if args.n < 1 or (args.max_images is not None and args.max_images < 1):
        raise UsageError("--n and --max-images must be at least 1")
    with progress_bar("evaluate", "image") as (progress, _):
        result = evaluate(
            args.model,
            args.reference,
            args.images,
            args.prompt,
            args.n,
            args.image_size,
            args.seed,
            args.device,
            args.max_images,
            progress=progress,
        )
    print(
        f"{args.prompt} prompts, {result.objects} objects ({result.objects_from}) in {result.images} images: "
        f"mIoU {result.miou:.4f}"
    )
    print(f"{'':10} {'type':6} {'encoder params':>15} {'total params':>13} {'encode ms':>10}")
    for label, report in (("model", result.model), ("reference", result.reference)):
        print(
            f"{label:10} {report.model_type:6} {report.encoder_params:>15,} {report.total_params:>13,} "
            f"{report.encode_ms:>10.1f}"
        )
    if args.json:
        data = (json.dumps(result.as_dict(), indent=2) + "\n").encode()
        atomic_write_bytes(Path(args.json), lambda tmp: Path(tmp).write_bytes(data))
    return 0
