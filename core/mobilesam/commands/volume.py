"""`mobilesam embed` and `mobilesam volume`: volume embeddings and 3-D segmentation.

    mobilesam embed VOLUME --cache DIR
    mobilesam volume VOLUME --prompt 'z=12:point=140,88' --prompt 'object=2:z=30:box=10,20,90,80' -o labels.tif

Prompt syntax: colon-separated KEY=VALUE fields.
    z=Z                  slice index along --axis (required), 0-based
    point=X,Y[,LABEL]    a point, (x, y) pixels within the slice (x = column, y = row, as in SAM);
                         LABEL 1 = object (default), 0 = background; repeatable
    box=X0,Y0,X1,Y1      a box within the slice (at most one per object and slice)
    object=K             which object the prompt belongs to (default 1); the label it gets
Several --prompt for one object on different slices fill the volume between them from both ends.
"""

import argparse
from pathlib import Path

from ..errors import MobileSamError, UsageError
from ._common import add_model_arguments, precision_from_args, progress_bar
from .tiled import add_tiling_arguments, run_embed_tiled, wants_tiling

PROMPT_HELP = (
    "'z=Z:point=X,Y[,LABEL]:box=X0,Y0,X1,Y1:object=K' (x, y in pixels within slice Z; "
    "point and box optional but at least one; point repeatable; object default 1)"
)


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "embed",
        help="precompute a volume's slice embeddings into a cache folder",
        description="Encode every slice of a TIFF stack or NIfTI volume and store the embeddings in a zarr "
        "cache folder, so later `mobilesam volume --cache` runs (and the napari plugin) need no "
        "encoder pass. Slices already cached for the same data and weights are skipped.",
    )
    e.add_argument("volume", metavar="VOLUME", help="TIFF stack (.tif) or NIfTI (.nii, .nii.gz)")
    e.add_argument(
        "--cache", required=True, metavar="DIR", help="embedding cache folder (created if missing)"
    )
    add_volume_arguments(e)
    add_model_arguments(e)
    add_tiling_arguments(e)
    e.set_defaults(func=run_embed)

    v = subparsers.add_parser(
        "volume",
        help="segment objects through a volume from prompts on some slices",
        description="Segment objects in a 3-D volume: prompted slices are segmented, then each object is "
        "propagated slice by slice until it ends. Prompt syntax: " + PROMPT_HELP + ".",
        epilog="example: mobilesam volume stack.tif --prompt 'z=12:point=140,88' "
        "--prompt 'object=2:z=30:box=10,20,90,80' -o labels.tif",
    )
    v.add_argument("volume", metavar="VOLUME", help="TIFF stack (.tif) or NIfTI (.nii, .nii.gz)")
    v.add_argument(
        "--prompt",
        action="append",
        default=[],
        type=parse_prompt,
        metavar="SPEC",
        help="prompt for one object on one slice, repeatable: " + PROMPT_HELP,
    )
    v.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="label volume, .tif or .nii/.nii.gz (0 = background, K = object K), spacing kept",
    )
    v.add_argument("--cache", metavar="DIR", help="embedding cache folder (see `mobilesam embed`)")
    v.add_argument(
        "--projection",
        default=None,
        help="how a slice's mask prompts the next one: "
        "box (default), mask, box_and_mask, points, single_point",
    )
    v.add_argument(
        "--iou-threshold",
        type=float,
        default=None,
        help="stop an object when its mask's IoU with the previous slice falls below this (default 0.5)",
    )
    add_volume_arguments(v)
    add_model_arguments(v)
    v.set_defaults(func=run_volume)


def add_volume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", type=int, default=0, help="axis to slice along (default 0, i.e. Z)")
    parser.add_argument("--channel-axis", type=int, default=None, help="axis of channels in a 4-D volume")
    parser.add_argument(
        "--max-in-memory",
        type=int,
        default=16,
        metavar="N",
        help="slice embeddings kept in memory (4 MB each, default 16)",
    )


def parse_prompt(text: str):
    """'object=2:z=12:point=140,88:point=150,90,0:box=1,2,3,4' -> (object, SlicePrompt)."""
    from ..volume import SlicePrompt

    fields = {"points": [], "labels": []}
    for part in filter(None, text.split(":")):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise argparse.ArgumentTypeError(f"prompt {text!r}: {part!r} is not KEY=VALUE")
        try:
            if key == "z":
                fields["z"] = int(value)
            elif key in ("object", "obj"):
                fields["object"] = int(value)
            elif key == "point":
                numbers = [float(v) for v in value.split(",")]
                if len(numbers) not in (2, 3):
                    raise ValueError
                fields["points"].append(numbers[:2])
                fields["labels"].append(int(numbers[2]) if len(numbers) == 3 else 1)
            elif key == "box":
                if "box" in fields:
                    raise argparse.ArgumentTypeError(f"prompt {text!r}: more than one box")
                fields["box"] = [float(v) for v in value.split(",")]
                if len(fields["box"]) != 4:
                    raise ValueError
            else:
                raise argparse.ArgumentTypeError(
                    f"prompt {text!r}: unknown key {key!r} (use z, point, box, object)"
                )
        except ValueError:
            raise argparse.ArgumentTypeError(f"prompt {text!r}: bad value in {part!r}") from None
    if "z" not in fields:
        raise argparse.ArgumentTypeError(f"prompt {text!r} has no slice: add z=Z")
    if fields.get("object", 1) < 1:
        raise argparse.ArgumentTypeError(f"prompt {text!r}: object must be 1 or more")
    try:
        prompt = SlicePrompt(
            fields["z"], fields["points"] or None, fields["labels"] or None, fields.get("box")
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"prompt {text!r}: {exc}") from None
    return fields.get("object", 1), prompt


def open_embeddings(args: argparse.Namespace, volume):
    """Model + `VolumeEmbeddings` for the CLI; the cache is keyed by the checkpoint's sha256."""
    from ..build_sam import detect_model_type, load_model
    from ..predictor import SamPredictor
    from ..serving import model_identity
    from ..volume import VolumeEmbeddings
    from ..weights import resolve_checkpoint

    if args.max_in_memory < 1:
        raise UsageError("--max-in-memory must be at least 1")
    if args.cache and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise MobileSamError(f"--cache {args.cache} is a file, not a folder")
    checkpoint = resolve_checkpoint(
        args.model_type or "vit_t", args.checkpoint, allow_download=not args.no_download
    )
    model = load_model(
        args.model_type,
        checkpoint,
        device=args.device,
        allow_download=False,
        precision=precision_from_args(args),
    )
    model_type = args.model_type or detect_model_type(model.state_dict()) or "vit_t"
    # a bf16 encoder's embeddings are cached apart from fp32 ones
    model_id = (
        model_identity(model_type=model_type, checkpoint=checkpoint, precision=model.precision)
        if args.cache
        else None
    )
    try:
        return VolumeEmbeddings(
            volume,
            SamPredictor(model),
            axis=args.axis,
            channel_axis=args.channel_axis,
            cache_dir=args.cache,
            max_in_memory=args.max_in_memory,
            model_id=model_id,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def geometry(volume, axis: int, channel_axis):
    """(num_slices, (H, W)) of the volume sliced along `axis`, checked before loading a model."""
    shape = tuple(volume.shape)
    ndim = len(shape)
    if ndim not in (3, 4):
        raise UsageError(f"the volume has shape {shape}; need (Z, Y, X) or (Z, Y, X, C)")
    if not -ndim <= axis < ndim:
        raise UsageError(f"--axis {axis} is out of range for a {ndim}-D volume {shape}")
    axis %= ndim
    channel = None
    if ndim == 4:
        channel = (-1 if channel_axis is None else channel_axis) % ndim
    rest = [a for a in range(ndim) if a not in (axis, channel)]
    return shape[axis], (shape[rest[0]], shape[rest[1]])


def naming_the_volume(run):
    """Errors reading slices during the work name the volume file."""

    def wrapped(args: argparse.Namespace) -> int:
        from ..volume.embeddings import VolumeReadError

        try:
            return run(args)
        except VolumeReadError as exc:
            raise MobileSamError(f"volume {args.volume}: {exc}") from None

    return wrapped


@naming_the_volume
def run_embed(args: argparse.Namespace) -> int:
    from ..volume import read_volume

    if wants_tiling(args, args.volume):  # one large 2-D image, embedded tile by tile
        return run_embed_tiled(args)
    volume, _ = read_volume(args.volume)
    geometry(volume, args.axis, args.channel_axis)
    embeddings = open_embeddings(args, volume)
    with progress_bar("Embedding slices", "slice") as (update, _):
        encoded = embeddings.embed_all(progress=update)
    print(
        f"{embeddings.num_slices} slices: {encoded} encoded, {embeddings.num_slices - encoded} already cached "
        f"-> {args.cache}"
    )
    return 0


@naming_the_volume
def run_volume(args: argparse.Namespace) -> int:
    import numpy as np

    from ..atomic import check_writable_path
    from ..volume import (
        DEFAULT_IOU_THRESHOLD,
        DEFAULT_PROJECTION,
        PROJECTIONS,
        read_volume,
        segment_objects,
        write_labels,
    )

    if not args.prompt:
        raise UsageError("give at least one --prompt, e.g. --prompt 'z=12:point=140,88'")
    projection = args.projection or DEFAULT_PROJECTION
    if projection not in PROJECTIONS:
        raise UsageError(f"--projection must be one of {', '.join(PROJECTIONS)}, not {projection!r}")
    iou_threshold = DEFAULT_IOU_THRESHOLD if args.iou_threshold is None else args.iou_threshold
    if not 0 <= iou_threshold <= 1:
        raise UsageError(f"--iou-threshold must be between 0 and 1, got {iou_threshold}")
    check_writable_path(args.output)  # before hours of work, not after
    volume, spacing = read_volume(args.volume)
    num_slices, slice_shape = geometry(volume, args.axis, args.channel_axis)
    for _, prompt in args.prompt:  # before loading any model: a typo costs nothing
        try:
            prompt.check_inside(num_slices, slice_shape)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    object_ids = sorted({obj for obj, _ in args.prompt})
    objects = [[p for obj, p in args.prompt if obj == k] for k in object_ids]

    embeddings = open_embeddings(args, volume)
    with progress_bar("Propagating", "slice") as (update, _):
        labels = segment_objects(
            embeddings, objects, iou_threshold=iou_threshold, projection=projection, progress=update
        )
    # Label i + 1 of segment_objects is the user's object number object_ids[i].
    lookup = np.array([0, *object_ids], dtype=np.int64)
    labels = lookup[labels]
    write_labels(args.output, labels, spacing)  # labels keep the volume's spatial axis order
    cached = embeddings.disk_hits
    print(
        f"{len(object_ids)} object(s): "
        + ", ".join(f"{k}: {int((labels == k).sum())} voxels" for k in object_ids)
        + f"; {embeddings.encoder_calls} slices encoded, {cached} from cache -> {args.output}"
    )
    return 0
