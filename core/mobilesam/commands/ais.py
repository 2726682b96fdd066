"""`mobilesam ais IMAGE -o labels.tif`: whole-image instance segmentation with a micro-sam model's
automatic instance segmentation decoder (one encoder pass, a decoder pass and a watershed)."""

import argparse

from ..model_zoo import MODEL_VARIANTS
from ..runtime import PRECISIONS

AIS_MODELS = tuple(name for name, v in MODEL_VARIANTS.items() if v.ais_decoder is not None)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ais",
        help="automatic instance segmentation with a micro-sam model (vit_t_lm, vit_t_em_organelles)",
        description="Label every object of IMAGE with micro-sam's instance segmentation decoder. IMAGE may be "
        "'sample' for the bundled image. The labels are written as a uint32 TIFF (0 = background).",
    )
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG/TIFF image, or 'sample'")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="label image, .tif")
    p.add_argument(
        "--model-type", choices=AIS_MODELS, default="vit_t_lm", help="micro-sam model (default vit_t_lm)"
    )
    p.add_argument(
        "--checkpoint", metavar="PATH", help="the model's weights (default: cached, else downloaded)"
    )
    p.add_argument(
        "--decoder-checkpoint",
        metavar="PATH",
        help="its *_decoder.pt (default: $MOBILESAM_DECODER_CHECKPOINT, else cached, else downloaded)",
    )
    p.add_argument("--no-download", action="store_true", help="never download weights")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="encoder arithmetic (default: $MOBILESAM_PRECISION, else auto: bf16 where the CPU has it)",
    )
    p.add_argument("--channel-axis", type=int, default=None, help="axis of channels in IMAGE, if any")
    p.add_argument("--min-size", type=int, default=0, help="drop objects smaller than this many pixels")
    p.add_argument("--foreground-threshold", type=float, default=0.5)
    p.add_argument("--center-distance-threshold", type=float, default=0.5)
    p.add_argument("--boundary-distance-threshold", type=float, default=0.5)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..image import to_rgb_uint8
    from ..instance_segmentation import AISParameters, InstanceSegmenter
    from ..io import read_image, write_image
    from ._common import precision_from_args

    if not args.output.lower().endswith((".tif", ".tiff")):
        raise UsageError(f"output {args.output} must end in .tif or .tiff (labels are uint32)")
    image = to_rgb_uint8(read_image(args.image), channel_axis=args.channel_axis)
    segmenter = InstanceSegmenter.from_checkpoints(
        args.model_type,
        args.checkpoint,
        args.decoder_checkpoint,
        allow_download=not args.no_download,
        device=args.device,
        precision=precision_from_args(args),
    )
    params = AISParameters(
        center_distance_threshold=args.center_distance_threshold,
        boundary_distance_threshold=args.boundary_distance_threshold,
        foreground_threshold=args.foreground_threshold,
        min_size=args.min_size,
    )
    labels = segmenter.segment(image, params)
    write_image(args.output, labels)
    print(f"{int(labels.max())} objects -> {args.output}")
    return 0
