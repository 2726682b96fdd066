"""`mobilesam segment IMAGE --point x,y[,label] --box x0,y0,x1,y1 -o OUT`: one object from prompts."""

import argparse

import numpy as np

from ..errors import UsageError
from ._common import add_model_arguments, load_model_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment one object in an image from points and/or a box",
        description="Segment one object from point and box prompts. Coordinates are (x, y) pixels of "
        "the image, x to the right, y down. IMAGE may be 'sample' for the bundled image.",
    )
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG/TIFF image, or 'sample'")
    p.add_argument(
        "--point",
        action="append",
        default=[],
        type=parse_point,
        metavar="X,Y[,LABEL]",
        help="a prompt point; LABEL 1 = object (default), 0 = background; repeatable",
    )
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box around the object")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="mask file, .png or .tif (0 = background, 255 = object)",
    )
    p.add_argument(
        "--all-masks",
        action="store_true",
        help="write all 3 candidate masks (TIFF: one 3-plane file; PNG: OUT_0.png ...)",
    )
    p.add_argument("--channel-axis", type=int, default=None, help="axis of channels in IMAGE, if any")
    add_model_arguments(p)
    p.set_defaults(func=run)


def parse_point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} must be X,Y or X,Y,LABEL (numbers)") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (object) or 0 (background), got {label}")
    return x, y, label


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} must be X0,Y0,X1,Y1 (four numbers)") from None
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"box {text!r} needs X1 > X0 and Y1 > Y0")
    return x0, y0, x1, y1


def check_prompts_inside(points, box, height: int, width: int) -> None:
    for x, y, _ in points:
        if not (0 <= x < width and 0 <= y < height):
            raise UsageError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    if box is not None:
        x0, y0, x1, y1 = box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise UsageError(f"box {box} does not overlap the {width}x{height} image")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable_path
    from ..image import to_rgb_uint8
    from ..io import read_image_with_channel_axis, write_image
    from ..predictor import SamPredictor
    from ..prompt import Prompt

    if not args.point and args.box is None:
        raise UsageError("give at least one --point or a --box")
    check_writable_path(args.output)
    data, stated_axis = read_image_with_channel_axis(args.image)
    image = to_rgb_uint8(data, channel_axis=stated_axis if args.channel_axis is None else args.channel_axis)
    height, width = image.shape[:2]
    check_prompts_inside(args.point, args.box, height, width)

    predictor = SamPredictor(load_model_from_args(args))
    predictor.set_image(image)
    points = args.point or []
    prompt = Prompt([p[:2] for p in points], [p[2] for p in points], args.box)
    # One point alone is ambiguous (SAM's advice): ask for 3 candidates and keep the best.
    masks, scores, _ = predictor.predict(**prompt.predict_kwargs(), multimask_output=True)

    if args.all_masks:
        write_all_masks(args.output, masks, write_image)
        for i, score in enumerate(scores):
            print(f"mask {i}: score {score:.4f}, area {int(masks[i].sum())} px")
    else:
        best = int(np.argmax(scores))
        write_image(args.output, masks[best].astype(np.uint8) * 255)
        print(f"score {scores[best]:.4f}, area {int(masks[best].sum())} px -> {args.output}")
    return 0


def write_all_masks(output: str, masks: np.ndarray, write_image) -> None:
    stack = masks.astype(np.uint8) * 255
    if output.lower().endswith(".png"):
        stem = output[: -len(".png")]
        for i, mask in enumerate(stack):
            write_image(f"{stem}_{i}.png", mask)
    else:
        write_image(output, stack)
