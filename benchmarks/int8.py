"""The ONNX backend's int8 encoder (static calibration, `mobilesam.onnx.int8`) against fp32 and
against the dynamic quantisation it replaced: speed, embedding error and masks, in one run.

    .venv/bin/python benchmarks/int8.py                  # random weights, 1024x768 sample image
    .venv/bin/python benchmarks/int8.py --checkpoint mobile_sam.pt --repeats 5

Sides, all on the same weights and image, encoders timed interleaved repeat by repeat (a busy
machine slows them alike) on the same threads, wall time and the process's CPU time:
  reference        the official mobile_sam encoder (torch fp32)
  ours torch       our torch fp32 fast path
  onnx fp32        `StandalonePredictor(dir)`: the exported fp32 encoder and decoder
  onnx int8        `precision="int8"`: static int8 encoder (linear layers), fp32 decoder
  dyn int8 enc     the old scheme's encoder (`quantize_onnx`, dynamic) with the fp32 decoder
  dyn int8 both    the old precision="int8": dynamic int8 encoder and decoder
Accuracy is against onnx fp32: the embedding's relative error ||a - b|| / ||b|| and the mask IoU
over point and box clicks (multimask off), on the random-weight model, on the same weights with
randomised norm layers (non-trivial BatchNorm statistics, LayerNorm affine and attention biases,
as tests/test_fast_encoder.py uses: the official random initialisation starts them as identities,
which trained weights are not), and on the stand-in model of tests/test_amg.py, whose masks
follow objects (its encoder has no linear layers, so it gets each int8 encoder's relative error
pattern transplanted onto its embedding, as benchmarks/bf16_error.py does for bf16).
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="vit_t weights (default: seeded random weights, official format)")
    p.add_argument("--repeats", type=int, default=3, help="encoder runs per side (median reported)")
    p.add_argument("--clicks", type=int, default=20, help="point clicks and box clicks each")
    p.add_argument(
        "--threads", type=int, default=None, help="torch/onnxruntime threads (default: usable CPUs)"
    )
    p.add_argument(
        "--no-randomised-norms", action="store_true", help="skip the accuracy of the randomised-norm weights"
    )
    return p.parse_args(argv)


def onnx_sides(model, folder: Path, threads: int) -> tuple[dict, float]:
    """StandalonePredictors for the ONNX sides (dynamic variants in folders of their own under the
    standard file names) and the seconds the static int8 encoder took to make."""
    from mobilesam.onnx import OnnxSamPredictor, StandalonePredictor, quantize_onnx
    from mobilesam.onnx.layout import DECODER_FILE, ENCODER_FILE

    main = folder / "onnx"
    OnnxSamPredictor(model, onnx_dir=main)  # exports
    start = time.perf_counter()
    OnnxSamPredictor(model, onnx_dir=main, precision="int8")  # calibrates and quantises
    quantise_seconds = time.perf_counter() - start
    for name, quantised in (("dyn_enc", (ENCODER_FILE,)), ("dyn_both", (ENCODER_FILE, DECODER_FILE))):
        (folder / name).mkdir()
        for file in (ENCODER_FILE, DECODER_FILE):
            if file in quantised:
                quantize_onnx(main / file, folder / name / file)
            else:
                shutil.copy(main / file, folder / name / file)
    sides = {
        "onnx fp32": StandalonePredictor(main, num_threads=threads),
        "onnx int8": StandalonePredictor(main, precision="int8", num_threads=threads),
        "dyn int8 enc": StandalonePredictor(folder / "dyn_enc", num_threads=threads),
        "dyn int8 both": StandalonePredictor(folder / "dyn_both", num_threads=threads),
    }
    return sides, quantise_seconds


def time_encoders(predictors: dict, image: np.ndarray, repeats: int) -> dict:
    """side -> (median wall seconds, median CPU seconds) of set_image, interleaved."""
    wall = {side: [] for side in predictors}
    cpu = {side: [] for side in predictors}
    with torch.inference_mode():
        for predictor in predictors.values():  # warm-up
            predictor.set_image(image)
        for _ in range(repeats):
            for side, predictor in predictors.items():
                w, c = time.perf_counter(), time.process_time()
                predictor.set_image(image)
                wall[side].append(time.perf_counter() - w)
                cpu[side].append(time.process_time() - c)
    return {side: (statistics.median(wall[side]), statistics.median(cpu[side])) for side in predictors}


def features(predictor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(predictor.features, np.float32))


def accuracy(onnx: dict, image: np.ndarray, clicks: int, stand_in: bool = True) -> list:
    """(side, embedding relative error, mask IoUs, stand-in mask IoUs or None) per int8 side,
    against the onnx fp32 side."""
    from bf16_error import mask_ious, standin_ious

    fp32 = onnx["onnx fp32"]
    fp32.set_image(image)
    rows = []
    for side in ("onnx int8", "dyn int8 enc", "dyn int8 both"):
        quantised = onnx[side]
        quantised.set_image(image)
        a, b = features(quantised), features(fp32)
        ious = mask_ious(fp32, quantised, image, clicks)
        stand_in_ious = standin_ious((a - b) / b.norm()) if stand_in else None
        rows.append((side, float((a - b).norm() / b.norm()), ious, stand_in_ious))
    return rows


def randomised_norms_accuracy(checkpoint: str, folder: Path, image, clicks: int, threads: int) -> list:
    """`accuracy` on the same weights with randomised norm layers (tests/test_fast_encoder.py)."""
    from test_fast_encoder import _randomise_norms

    import mobilesam

    model = mobilesam.build_sam("vit_t", checkpoint)
    _randomise_norms(model.image_encoder, 0)
    folder.mkdir()
    sides, _ = onnx_sides(model.eval(), folder, threads)
    return accuracy(sides, image, clicks, stand_in=False)


def main(argv=None) -> int:
    import mobile_sam
    from run import checkpoint_path, cpu_flag_summary, load_image, machine
    from run import parse_args as run_args

    import mobilesam
    from mobilesam.runtime import configure_allocator, configure_threads, int8_supported

    args = parse_args(argv)
    configure_allocator()
    threads = configure_threads(args.threads)
    image = load_image(run_args([]))
    with tempfile.TemporaryDirectory(prefix="mobilesam-int8-") as tmp:
        tmp = Path(tmp)
        checkpoint = checkpoint_path(argparse.Namespace(checkpoint=args.checkpoint), tmp)
        reference = mobile_sam.sam_model_registry["vit_t"]()
        reference.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        ours = mobilesam.build_sam("vit_t", checkpoint).eval()
        print("exporting, quantising ...", file=sys.stderr, flush=True)
        onnx, quantise_seconds = onnx_sides(ours, tmp, threads)
        predictors = {
            "reference": mobile_sam.SamPredictor(reference.eval()),
            "ours torch": mobilesam.SamPredictor(ours),
            **onnx,
        }
        print("encoder ...", file=sys.stderr, flush=True)
        times = time_encoders(predictors, image, args.repeats)
        print("accuracy ...", file=sys.stderr, flush=True)
        rows = accuracy(onnx, image, args.clicks)
        normed = None
        if not args.no_randomised_norms:
            print("randomised norms: export, quantisation, accuracy ...", file=sys.stderr, flush=True)
            normed = randomised_norms_accuracy(checkpoint, tmp / "normed", image, args.clicks, threads)
    ref_wall, ref_cpu = times["reference"]
    fp32_cpu = times["onnx fp32"][1]
    print(f"Machine: {machine()}. CPU flags: {cpu_flag_summary()}; int8 dot products: {int8_supported()}.")
    print(
        f"Image {image.shape[1]}x{image.shape[0]}, {threads} thread(s), medians of {args.repeats} "
        "interleaved encoder runs (set_image); ratios in the same run. Static int8 encoder made in "
        f"{quantise_seconds:.1f} s (calibration + quantisation, once per weights).\n"
    )
    print("| encoder | wall ms | vs reference | CPU ms | CPU vs reference | CPU vs onnx fp32 |")
    print("|---|---|---|---|---|---|")
    for side, (wall, cpu) in times.items():
        print(
            f"| {side} | {wall * 1e3:.0f} | {wall / ref_wall:.2f}x | {cpu * 1e3:.0f} | "
            f"{cpu / ref_cpu:.2f}x | {cpu / fp32_cpu:.2f}x |"
        )
    print(
        f"\nAgainst onnx fp32 ({args.clicks} point + {args.clicks} box clicks; stand-in: the side's "
        "encoder error pattern on the stand-in's embedding):\n"
    )
    print(
        "| side | rel. error | mask IoU min / mean | stand-in mask IoU min / mean "
        "| randomised norms: rel. error | randomised norms: mask IoU min / mean |"
    )
    print("|---|---|---|---|---|---|")
    for i, (side, relative, ious, stand_in) in enumerate(rows):
        other = "n/a | n/a"
        if normed:
            _, n_relative, n_ious, _ = normed[i]
            other = f"{n_relative:.2e} | {min(n_ious):.4f} / {np.mean(n_ious):.4f}"
        print(
            f"| {side} | {relative:.2e} | {min(ious):.4f} / {np.mean(ious):.4f} | "
            f"{min(stand_in):.4f} / {np.mean(stand_in):.4f} | {other} |"
        )
    print(
        "\nGoals (issue 18): encoder <= 0.35x the reference, embedding rel. error <= 1e-2, "
        "mask IoU vs fp32 >= 0.98."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
