"""`mobilesam everything IMAGE -o labels.tif [--json masks.json]`: masks for every object, no prompts."""

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ._common import add_model_arguments, load_model_from_args, progress_bar
from .tiled import add_tiling_arguments, run_everything_tiled, wants_tiling

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "everything",
        help="segment everything in an image (automatic masks, no prompts)",
        description="Prompt the model with a grid of points, keep the good masks, remove duplicates, and "
        "write an instance label image (0 = background, 1..N = objects, largest first; smaller "
        "objects are drawn on top of larger ones). IMAGE may be 'sample' for the bundled image.",
    )
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG/TIFF image, or 'sample'")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="LABELS",
        help="label image, .tif/.tiff (int32) or .png (uint16, at most 65535 objects)",
    )
    p.add_argument(
        "--json", metavar="MASKS_JSON", help="also write the masks as COCO JSON (RLE segmentations)"
    )
    p.add_argument(
        "--order",
        choices=("area", "score"),
        default="area",
        help="which mask wins where masks overlap: the smaller (area) or the better scored (score)",
    )
    g = p.add_argument_group("mask generation (segment_anything's SamAutomaticMaskGenerator settings)")
    g.add_argument(
        "--points-per-side", type=positive_int, default=32, metavar="N", help="grid points per side (32)"
    )
    g.add_argument(
        "--points-per-batch", type=positive_int, default=64, metavar="N", help="prompts decoded at once (64)"
    )
    g.add_argument(
        "--crop-layers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="extra layers of overlapping crops, for small objects (0)",
    )
    g.add_argument(
        "--pred-iou-thresh", type=float, default=0.88, metavar="T", help="predicted IoU cut-off (0.88)"
    )
    g.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        metavar="T",
        help="stability score cut-off (0.95)",
    )
    g.add_argument(
        "--box-nms-thresh",
        type=float,
        default=0.7,
        metavar="T",
        help="box IoU above which masks are duplicates (0.7)",
    )
    g.add_argument(
        "--min-region-area",
        type=non_negative_int,
        default=0,
        metavar="PIXELS",
        help="fill holes and remove islands smaller than this (0: off)",
    )
    p.add_argument("--channel-axis", type=int, default=None, help="axis of channels in IMAGE, if any")
    add_model_arguments(p)
    add_tiling_arguments(p, cache=True)
    p.set_defaults(func=run)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable_path
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..image import to_rgb_uint8
    from ..io import read_image_with_channel_axis, write_image
    from ..mask_outputs import records_to_coco_json, records_to_label_image

    if wants_tiling(args, args.image):
        return run_everything_tiled(args)
    if Path(args.output).suffix.lower() not in LABEL_SUFFIXES:
        raise UsageError(f"output {args.output} must end in .tif, .tiff or .png")
    if args.json is not None and not args.json.lower().endswith(".json"):
        raise UsageError(f"--json {args.json} must end in .json")
    check_writable_path(args.output)
    data, stated_axis = read_image_with_channel_axis(args.image)
    image = to_rgb_uint8(data, channel_axis=stated_axis if args.channel_axis is None else args.channel_axis)
    generator = SamAutomaticMaskGenerator(
        load_model_from_args(args),
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_layers,
        min_mask_region_area=args.min_region_area,
        output_mode="binary_mask",
    )
    with progress_bar("segment everything", "step") as (progress, _):
        records = generator.generate(image, progress=progress)

    labels = records_to_label_image(records, shape=image.shape[:2], order=args.order)
    if args.output.lower().endswith(".png"):
        if labels.max() > 65535:
            raise ValueError(f"{labels.max()} objects do not fit a 16-bit PNG; write a .tif")
        labels = labels.astype("uint16")
    coco = None
    if args.json is not None:  # built before anything is written, so a failure leaves no output
        coco = records_to_coco_json(
            records, file_name="sample" if args.image == "sample" else Path(args.image).name
        )
    write_image(args.output, labels)
    if coco is not None:
        write_json_atomically(args.json, coco)
    print(f"{len(records)} masks -> {args.output}" + (f" and {args.json}" if args.json else ""))
    return 0


def write_json_atomically(path: str, data: dict) -> None:
    from ..atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data))
