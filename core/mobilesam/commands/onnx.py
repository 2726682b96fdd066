"""`mobilesam export-onnx`: write the image encoder and the prompt decoder as ONNX models."""

import argparse
from pathlib import Path

from ._common import add_model_arguments, load_model_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export encoder.onnx and decoder.onnx for onnxruntime",
        description="Writes OUTPUT/encoder.onnx (preprocessed 1x3xSxS image -> embedding) and "
        "OUTPUT/decoder.onnx (prompt encoder + mask decoder: any number of points, box as "
        "corner points labelled 2 and 3, optional mask input), and the same decoder in two parts "
        "for segment everything (decoder_head.onnx, decoder_upscale.onnx). Use them with "
        "mobilesam.SamPredictor(model, backend='onnx', onnx_dir=OUTPUT).",
    )
    p.add_argument("output", type=Path, help="directory for the .onnx files (created if missing)")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="also write the statically calibrated int8 encoder (encoder.int8-static.onnx) used by "
        "precision 'int8': faster on CPUs with VNNI/AMX-INT8, less accurate",
    )
    add_model_arguments(p)
    p.set_defaults(func=export_onnx_command)


def export_onnx_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..onnx.export import export_onnx
    from ..onnx.int8 import quantize_encoder_static, warn_without_int8_instructions
    from ..onnx.layout import DECODER_HEAD_FILE, DECODER_UPSCALE_FILE, INT8_ENCODER_FILE

    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"{args.output} exists and is not a directory")
    model = load_model_from_args(args).cpu()
    with tqdm(total=2 if args.quantize else 1, desc="export-onnx", unit="step") as bar:
        encoder, decoder = export_onnx(model, args.output)
        bar.update()
        written = [encoder, decoder]
        written += [
            path
            for path in (args.output / DECODER_HEAD_FILE, args.output / DECODER_UPSCALE_FILE)
            if path.exists()
        ]
        if args.quantize:
            warn_without_int8_instructions()
            written.append(quantize_encoder_static(encoder, args.output / INT8_ENCODER_FILE))
            bar.update()
    for path in written:
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0
