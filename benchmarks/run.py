"""Speed and memory of MobileSAM on this machine: the reference vs ours (torch) vs ours (ONNX Runtime).

One command, one process, one image, the same weights for every side:

    .venv/bin/python benchmarks/run.py                 # random weights, 1024x768 image
    .venv/bin/python benchmarks/run.py --checkpoint mobile_sam.pt --image photo.jpg --repeats 7

Prints a Markdown table of medians (encoder per image, decoder per click for a point and for a
box, segment-everything per image), each with its ratio to the reference measured in the same
run, plus peak RSS, parameter counts and the output differences against the reference.

Fair comparison: every side runs in this process under the same allocator settings
(`mobilesam.runtime.configure_allocator()` is applied first unless --no-allocator-tuning), and
sides are interleaved repeat by repeat so a busy machine slows them alike. The ONNX export
happens before any timing. Peak RSS is the exception to "one process": the resident-set
high-water mark of a process only grows, so each side's single-image inference (load, encode,
one click) runs in its own fresh child process to measure it.
"""

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the stand-in model
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bf16_error
SIDES = ("reference", "ours torch", "ours onnx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", help="vit_t weights (default: seeded random weights in the official format)"
    )
    p.add_argument("--image", help="RGB image (default: the packaged sample, resized to --size)")
    p.add_argument("--size", default="1024x768", help="WxH of the default image (default 1024x768)")
    p.add_argument("--repeats", type=int, default=5, help="encoder repeats per side (median reported)")
    p.add_argument("--clicks", type=int, default=20, help="clicks per prompt kind per side")
    p.add_argument(
        "--points-per-side", type=int, default=32, help="segment-everything grid (SAM's default 32)"
    )
    p.add_argument("--everything-repeats", type=int, default=1)
    p.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="segment-everything pred_iou_thresh for every side (default SAM's 0.88; random weights "
        "predict low IoUs, so 0 makes every mask go through upscaling and filtering)",
    )
    p.add_argument("--no-everything", action="store_true", help="skip segment-everything")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also time ONNX int8 (static int8 encoder) and measure its mask IoU vs fp32",
    )
    p.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the bf16 encoder side (skipped anyway on CPUs without AVX512-BF16/AMX)",
    )
    p.add_argument(
        "--no-coarse-to-fine",
        action="store_true",
        help="skip segment everything's coarse-to-fine mode on the stand-in model",
    )
    p.add_argument("--no-cold-start", action="store_true", help="skip the first-encode-in-a-new-process rows")
    p.add_argument("--no-allocator-tuning", action="store_true", help="leave glibc malloc at its defaults")
    p.add_argument(
        "--threads", type=int, default=None, help="torch/onnxruntime threads (default: usable CPUs)"
    )
    p.add_argument("--output", type=Path, help="also write the Markdown report here")
    return p.parse_args(argv)


# ---------------------------------------------------------------- setup


def load_image(args) -> np.ndarray:
    from PIL import Image

    if args.image:
        return np.asarray(Image.open(args.image).convert("RGB"))
    w, h = (int(v) for v in args.size.lower().split("x"))
    sample = Path(__import__("mobilesam").__file__).parent / "data" / "sample_coins.png"
    return np.asarray(Image.open(sample).convert("RGB").resize((w, h), Image.BILINEAR))


def checkpoint_path(args, tmp: Path) -> str:
    if args.checkpoint:
        return args.checkpoint
    import mobile_sam

    torch.manual_seed(0)
    path = tmp / "random_vit_t.pt"
    torch.save(mobile_sam.sam_model_registry["vit_t"]().state_dict(), path)
    return str(path)


def build_predictors(checkpoint: str, onnx_dir: Path, int8: bool, threads, bf16: bool = False):
    import mobile_sam

    import mobilesam

    reference_model = mobile_sam.sam_model_registry["vit_t"]()
    reference_model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    reference_model.eval()
    ours = mobilesam.build_sam("vit_t", checkpoint).eval()
    predictors = {
        "reference": mobile_sam.SamPredictor(reference_model),
        "ours torch": mobilesam.SamPredictor(ours),
        "ours onnx": mobilesam.SamPredictor(ours, backend="onnx", onnx_dir=onnx_dir, num_threads=threads),
    }
    if bf16:  # a separate model: the bf16 setting belongs to the model
        bf16_model = mobilesam.build_sam("vit_t", checkpoint).eval().set_precision("bf16")
        predictors["ours torch bf16"] = mobilesam.SamPredictor(bf16_model)
    if int8:
        predictors["ours onnx int8"] = mobilesam.SamPredictor(
            ours, backend="onnx", onnx_dir=onnx_dir, precision="int8", num_threads=threads
        )
    return predictors


def parameter_counts(predictors) -> dict:
    counts = {}
    for side in ("reference", "ours torch"):
        model = predictors[side].model
        counts[side] = {
            part: sum(p.numel() for p in getattr(model, part).parameters())
            for part in ("image_encoder", "prompt_encoder", "mask_decoder")
        }
        counts[side]["total"] = sum(p.numel() for p in model.parameters())
    return counts


# ---------------------------------------------------------------- timing


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def click_prompts(image_shape, count, seed=0):
    h, w = image_shape[:2]
    rng = np.random.default_rng(seed)
    points = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], size=(count, 2))
    sizes = rng.uniform(0.1, 0.4, size=(count, 2)) * [w, h]
    boxes = np.concatenate([points - sizes / 2, points + sizes / 2], axis=1).clip(0, [w, h, w, h])
    return points, boxes


def time_encoder(predictors, image, repeats):
    times = {side: [] for side in predictors}
    for _ in range(repeats):
        for side, predictor in predictors.items():  # interleaved: machine load hits all sides alike
            times[side].append(timed(lambda p=predictor: p.set_image(image)))
    return times


CLICK_BURST = 5


def time_clicks(predictors, image, clicks):
    """Clicks come in bursts of CLICK_BURST per side, as an annotator clicks several times on
    one image; the sides take turns per burst, so machine load hits all sides alike. (Turns per
    single click would time every side with its caches just flushed by the other models.)"""
    points, boxes = click_prompts(image.shape, clicks)
    times = {side: {"point": [], "box": []} for side in predictors}
    for start in range(0, clicks, CLICK_BURST):
        burst = slice(start, start + CLICK_BURST)
        for side, predictor in predictors.items():
            for point in points[burst]:
                times[side]["point"].append(
                    timed(lambda p=predictor, q=point: p.predict(q[None], np.array([1])))
                )
            for box in boxes[burst]:
                times[side]["box"].append(
                    timed(lambda p=predictor, b=box: p.predict(box=b, multimask_output=False))
                )
    return times


def time_everything(predictors, image, points_per_side, repeats, pred_iou_thresh):
    import mobile_sam

    import mobilesam

    if not hasattr(mobilesam, "SamAutomaticMaskGenerator"):
        return {}, {}
    generators = {}
    for side, predictor in predictors.items():
        if side == "ours torch bf16":
            continue  # the decoder is the fp32 one: segment everything would time the same code
        if side == "reference":
            generators[side] = mobile_sam.SamAutomaticMaskGenerator(
                predictor.model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh
            )
        else:
            generator = mobilesam.SamAutomaticMaskGenerator(
                predictor.model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh
            )
            generator.predictor = predictor  # same backend as the side being measured
            generators[side] = generator
    times, counts = {side: [] for side in generators}, {}
    for _ in range(repeats):
        for side, generator in generators.items():
            result = []
            times[side].append(timed(lambda r=result, g=generator: r.extend(g.generate(image))))
            counts[side] = len(result)
    return times, counts


# ---------------------------------------------------------------- accuracy


def differences(predictors, image) -> dict:
    """max |diff| of embedding and low-res logits against the reference, and mask IoU."""
    point, box = click_prompts(image.shape, 1, seed=1)
    reference = predictors["reference"]
    reference.set_image(image)
    ref_out = [reference.predict(point, np.array([1])), reference.predict(box=box[0], multimask_output=False)]
    report = {}
    for side, predictor in predictors.items():
        if side == "reference":
            continue
        predictor.set_image(image)
        out = [predictor.predict(point, np.array([1])), predictor.predict(box=box[0], multimask_output=False)]
        report[side] = {
            "embedding": float((predictor.features - reference.features).abs().max()),
            "logits": max(float(np.abs(o[2] - r[2]).max()) for o, r in zip(out, ref_out)),
            "mask_iou": min(_iou(o[0], r[0]) for o, r in zip(out, ref_out)),
        }
    return report


def _iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def bf16_vs_fp32(predictors, image, clicks) -> dict:
    """The bf16 encoder against ours in fp32: embedding relative error (Frobenius) and mask IoU
    over `clicks` point and `clicks` box prompts (random weights)."""
    fp32, bf16 = predictors["ours torch"], predictors["ours torch bf16"]
    fp32.set_image(image)
    bf16.set_image(image)
    error = float((bf16.features - fp32.features).norm() / fp32.features.norm())
    points, boxes = click_prompts(image.shape, clicks, seed=3)
    ious = []
    for point, box in zip(points, boxes):
        for kwargs in (dict(point_coords=point[None], point_labels=np.array([1])), dict(box=box)):
            ious.append(
                _iou(
                    fp32.predict(**kwargs, multimask_output=False)[0],
                    bf16.predict(**kwargs, multimask_output=False)[0],
                )
            )
    from bf16_error import standin_ious

    stand_in = standin_ious((bf16.features - fp32.features) / fp32.features.norm())
    return {
        "relative_error": error,
        "mean_iou": float(np.mean(ious)),
        "min_iou": float(np.min(ious)),
        "standin_min_iou": float(np.min(stand_in)),
    }


# ---------------------------------------------------------------- segment everything, coarse to fine

STAND_IN_SETTINGS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.01, stability_score_offset=0.02)


def coarse_to_fine(points_per_side: int) -> dict:
    """Segment everything on the stand-in model of tests/test_amg.py (masks follow the colour
    regions of its test image): the official generator's full grid vs ours, full grid and
    coarse to fine. Returns seconds, decoded point prompts and records per side, and the recall
    of the full grid's objects: the fraction of its records whose mask has IoU >= 0.5 (the usual
    detection criterion) or >= 0.9 with a coarse-to-fine record."""
    import mobile_sam
    from test_amg import STRUCTURED_CASES, blobs_image, structured_pair

    import mobilesam

    reference_model, ours = structured_pair(encoder_seed=STRUCTURED_CASES["no crops"][0])
    ours.set_exact(False)
    image = blobs_image()
    generators = {
        "reference": mobile_sam.SamAutomaticMaskGenerator(
            reference_model, points_per_side=points_per_side, **STAND_IN_SETTINGS
        ),
        "ours torch": mobilesam.SamAutomaticMaskGenerator(
            ours, points_per_side=points_per_side, **STAND_IN_SETTINGS
        ),
        "ours coarse-to-fine": mobilesam.SamAutomaticMaskGenerator(
            ours, points_per_side=points_per_side, coarse_to_fine=True, **STAND_IN_SETTINGS
        ),
    }
    result = {}
    for side, generator in generators.items():
        records = []
        seconds = timed(lambda r=records, g=generator: r.extend(g.generate(image)))
        calls = getattr(generator, "decoded_points", points_per_side**2)  # the official decodes every point
        result[side] = {"seconds": seconds, "calls": calls, "records": records}
    full, fast = result["ours torch"]["records"], result["ours coarse-to-fine"]["records"]
    result["recall"] = {iou: _recall(full, fast, iou) for iou in (0.5, 0.9)}
    return result


def _recall(full, fast, min_iou: float = 0.9) -> float:
    if not full:
        return 1.0
    if not fast:
        return 0.0
    a = np.stack([r["segmentation"].ravel() for r in full]).astype(np.float32)
    b = np.stack([r["segmentation"].ravel() for r in fast]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return float(((inter / union).max(1) >= min_iou).mean())


# ---------------------------------------------------------------- cold start (fresh interpreter)

COLD_START_SCRIPT = """
import json, time
import numpy as np
import mobilesam
from mobilesam.runtime import configure_allocator, configure_threads, warm_up
if {tune}:
    configure_allocator()
configure_threads({threads!r})
image = np.load({image!r})
predictor = mobilesam.SamPredictor(mobilesam.build_sam("vit_t", {checkpoint!r}).eval())
warm = warm_up(predictor) if {warm} else 0.0
times = []
for _ in range(3):
    start = time.perf_counter()
    predictor.set_image(image)
    times.append(time.perf_counter() - start)
print(json.dumps({{"warm_up": warm, "first": times[0], "steady": min(times[1:])}}))
"""


def cold_start(checkpoint, image, tune, threads, tmp: Path) -> dict:
    """First encode in a new Python process vs the steady one, without and with
    `mobilesam.runtime.warm_up` at model load."""
    import json
    import subprocess

    np.save(tmp / "cold.npy", image)
    result = {}
    for warm in (False, True):
        script = COLD_START_SCRIPT.format(
            tune=tune, threads=threads, image=str(tmp / "cold.npy"), checkpoint=checkpoint, warm=warm
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        result["warm_up" if warm else "cold"] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- peak RSS (fresh child per side)


def _rss_child(side, checkpoint, onnx_dir, image, tune, threads, queue):
    from mobilesam.runtime import configure_allocator, configure_threads

    if tune:
        configure_allocator()
    configure_threads(threads)
    resident = {"imports": _current_rss()}
    predictors = build_predictors_for_side(side, checkpoint, onnx_dir, threads)
    resident["model"] = _current_rss()
    predictors.set_image(image)
    resident["encode"] = _high_water_rss()
    predictors.predict(np.array([[image.shape[1] // 2, image.shape[0] // 2]]), np.array([1]))
    resident["click"] = _high_water_rss()
    # Where the peak goes (stderr, beside the progress lines): resident after the imports (torch)
    # and after building the predictor, peak after the encode and after the click.
    steps = ", ".join(f"{step} {size / 1e6:.0f}" for step, size in resident.items())
    print(f"  peak RSS of {side!r}, MB: {steps}", file=sys.stderr, flush=True)
    queue.put(_high_water_rss())


def _proc_status_bytes(field: str) -> int | None:
    """A `/proc/self/status` memory field ("VmRSS:", "VmHWM:") in bytes, None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _current_rss() -> int:
    """Resident set of this process now in bytes (VmRSS), or 0 where /proc is not there."""
    return _proc_status_bytes("VmRSS:") or 0


def _high_water_rss() -> int:
    """Peak resident set of this process in bytes. VmHWM belongs to the process's own address
    space; ru_maxrss would also count the parent's peak inherited through fork."""
    peak = _proc_status_bytes("VmHWM:")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def build_predictors_for_side(side, checkpoint, onnx_dir, threads):
    import mobilesam

    if side == "reference":
        import mobile_sam

        model = mobile_sam.sam_model_registry["vit_t"]()
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return mobile_sam.SamPredictor(model.eval())
    model = mobilesam.build_sam("vit_t", checkpoint).eval()
    if side == "ours torch":
        return mobilesam.SamPredictor(model)
    return mobilesam.SamPredictor(model, backend="onnx", onnx_dir=onnx_dir, num_threads=threads)


STANDALONE_RSS_SCRIPT = """
import json, sys
import numpy as np
from pathlib import Path
from mobilesam.runtime import configure_allocator
from mobilesam.onnx.standalone import StandalonePredictor
if {tune}:
    configure_allocator()
image = np.load({image!r})
p = StandalonePredictor({onnx_dir!r}, num_threads={threads!r})
p.set_image(image)
p.predict(np.array([[image.shape[1] // 2, image.shape[0] // 2]]), np.array([1]))
assert "torch" not in sys.modules
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")][0]
print(json.dumps(int(hwm.split()[1]) * 1024))
"""


def standalone_peak_rss(onnx_dir, image, tune, threads, tmp: Path) -> int:
    """Peak RSS of the torch-free ONNX predictor (`mobilesam.onnx.standalone`) in a fresh
    interpreter: a spawned child would re-import this script, and with it torch."""
    import json
    import subprocess

    np.save(tmp / "image.npy", image)
    script = STANDALONE_RSS_SCRIPT.format(
        tune=tune, image=str(tmp / "image.npy"), onnx_dir=str(onnx_dir), threads=threads
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss(checkpoint, onnx_dir, image, tune, threads) -> dict:
    ctx = multiprocessing.get_context("spawn")
    result = {}
    for side in SIDES:
        queue = ctx.Queue()
        child = ctx.Process(target=_rss_child, args=(side, checkpoint, onnx_dir, image, tune, threads, queue))
        child.start()
        child.join()  # the queue holds one int, so the child can exit before it is read
        if child.exitcode != 0:
            raise RuntimeError(f"peak-RSS child for {side!r} failed (exit code {child.exitcode})")
        result[side] = queue.get(timeout=10)
    return result


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def cpu_flag_summary() -> str:
    from mobilesam.runtime import CPU_FLAGS, bf16_supported, cpu_flags

    flags = cpu_flags()
    present = " ".join(f for f in CPU_FLAGS if f in flags) or "none of " + " ".join(CPU_FLAGS)
    return f"{present} (bf16 encoder {'available' if bf16_supported() else 'not available'})"


def extra_report(bf16, c2f, cold, points_per_side) -> str:
    out = []
    if bf16:
        out.append(
            f"bf16 encoder vs ours fp32 (random weights): embedding relative error {bf16['relative_error']:.2e}; "
            f"mask IoU mean {bf16['mean_iou']:.4f}, min {bf16['min_iou']:.4f} over point and box clicks."
        )
    if c2f:
        ref = c2f["reference"]
        out += [
            "",
            f"Segment everything on the stand-in model of tests/test_amg.py (320x240 image, "
            f"{points_per_side}x{points_per_side} points, pred_iou_thresh 0, stability 0.01 at offset 0.02):",
            "",
            "| | reference | ours torch | ours coarse-to-fine |",
            "|---|---|---|---|",
        ]
        sides = ("reference", "ours torch", "ours coarse-to-fine")
        out.append(
            "| time (ms) | "
            + " | ".join(
                f"{c2f[s]['seconds'] * 1e3:.0f}"
                + ("" if s == "reference" else f" ({c2f[s]['seconds'] / ref['seconds']:.2f}x)")
                for s in sides
            )
            + " |"
        )
        out.append(
            "| decoded point prompts | "
            + " | ".join(
                f"{c2f[s]['calls']}"
                + ("" if s == "reference" else f" ({c2f[s]['calls'] / ref['calls']:.2f}x)")
                for s in sides
            )
            + " |"
        )
        out.append("| records | " + " | ".join(str(len(c2f[s]["records"])) for s in sides) + " |")
        out.append(
            f"| recall of the full grid's objects, mask IoU >= 0.5 / >= 0.9 | - | - | "
            f"{c2f['recall'][0.5]:.3f} / {c2f['recall'][0.9]:.3f} |"
        )
    if cold:
        c, w = cold["cold"], cold["warm_up"]
        out += [
            "",
            f"First encode in a new process: {c['first'] * 1e3:.0f} ms, {c['first'] / c['steady']:.2f}x the "
            f"steady {c['steady'] * 1e3:.0f} ms; after `mobilesam.runtime.warm_up` at load "
            f"({w['warm_up']:.2f} s): {w['first'] * 1e3:.0f} ms, {w['first'] / w['steady']:.2f}x the steady "
            f"{w['steady'] * 1e3:.0f} ms.",
        ]
    return "\n".join(out)


def goals_table(enc, clicks, everything, rss, bf16, c2f, cold, points_per_side: int = 32) -> str:
    """The issue's goals table (issue 18), filled in from this run: ratios to the reference."""

    def ratio(times, side):
        return statistics.median(times[side]) / statistics.median(times["reference"])

    def na(value, text):
        return text if value else "not measured (skipped)"

    rows = [("encoder, fp32", f"{ratio(enc, 'ours torch'):.2f}x", "<= 0.6x")]
    if "ours torch bf16" in enc and bf16:
        rows.append(
            (
                "encoder, bf16 (AVX512-BF16/AMX; front-ends' default, `precision='auto'`)",
                f"{ratio(enc, 'ours torch bf16'):.2f}x, embedding rel. error {bf16['relative_error']:.1e}, "
                f"mask IoU vs fp32 min {bf16['min_iou']:.3f} (random weights) / "
                f"{bf16['standin_min_iou']:.3f} (stand-in)",
                "<= 0.35x, <= 1e-2, >= 0.98",
            )
        )
    else:
        rows.append(("encoder, low precision", "no bf16 on this CPU (or --no-bf16)", "<= 0.35x"))
    point = {s: clicks[s]["point"] for s in clicks}
    rows.append(("point click", f"{ratio(point, 'ours torch'):.2f}x", "<= 0.3x"))
    text = "not measured (--no-everything)"
    if everything:
        text = f"{ratio(everything, 'ours torch'):.2f}x (full grid)"
    if c2f:
        ref = c2f["reference"]
        fast = c2f["ours coarse-to-fine"]
        text += (
            f"; coarse-to-fine on the stand-in {fast['seconds'] / ref['seconds']:.2f}x, "
            f"{fast['calls']} of {ref['calls']} decoder calls, recall {c2f['recall'][0.5]:.3f} (IoU >= 0.5)"
        )
    grid = f"{points_per_side}x{points_per_side} grid" + (" (default)" if points_per_side == 32 else "")
    rows.append((f"segment everything, {grid}", text, "<= 0.15x with the fast mode at >= 0.95 recall"))
    if cold:
        c, w = cold["cold"], cold["warm_up"]
        text = (
            f"{c['first'] / c['steady']:.2f}x steady; {w['first'] / w['steady']:.2f}x after `warm_up` at load"
        )
    rows.append(("first encode in a new process", na(cold, text if cold else ""), "<= 1.2x steady"))
    rows.append(
        (
            "peak RSS one image + click (torch) / torch-free ONNX",
            f"{rss['ours torch'] / rss['reference']:.2f}x / {rss['ours onnx, no torch'] / 1e6:.0f} MB",
            "<= 0.6x / <= 400 MB",
        )
    )
    lines = ["| measure | this run | goal |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {goal} |" for name, value, goal in rows]
    return "\n".join(lines)


def _ms(values) -> float:
    return statistics.median(values) * 1000


def report(image, args, allocator, enc, clicks, everything, everything_counts, rss, params, diffs) -> str:
    sides = list(enc)
    rows = [
        ("encoder (ms / image)", {s: _ms(enc[s]) for s in sides}),
        ("decoder, point click (ms)", {s: _ms(clicks[s]["point"]) for s in sides}),
        ("decoder, box click (ms)", {s: _ms(clicks[s]["box"]) for s in sides}),
    ]
    if everything:
        rows.append(
            (
                f"segment everything, {args.points_per_side}x{args.points_per_side} points, "
                f"pred_iou_thresh {args.pred_iou_thresh:g} (ms)",
                {s: _ms(everything[s]) for s in everything},
            )
        )
    else:
        rows.append(("segment everything (ms)", {}))
    header = "| | " + " | ".join(sides) + " |"
    lines = [header, "|" + "---|" * (len(sides) + 1)]
    for name, values in rows:
        ref = values.get("reference")
        cells = []
        for s in sides:
            if s not in values:
                cells.append("n/a")
            elif s == "reference":
                cells.append(f"{values[s]:.0f}" if values[s] >= 100 else f"{values[s]:.1f}")
            else:
                v = values[s]
                cells.append(f"{v:.0f} ({v / ref:.2f}x)" if v >= 100 else f"{v:.1f} ({v / ref:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if rss:
        ref = rss["reference"]
        lines.append(
            "| peak RSS, one image + one click (MB) | "
            + " | ".join(
                (f"{rss[s] / 1e6:.0f}" + ("" if s == "reference" else f" ({rss[s] / ref:.2f}x)"))
                if s in rss
                else "n/a"
                for s in sides
            )
            + " |"
        )
    if "ours onnx, no torch" in rss:
        lines.append(
            f"| peak RSS, torch-free ONNX predictor (`mobilesam.onnx.StandalonePredictor`) (MB) | - | - | "
            f"{rss['ours onnx, no torch'] / 1e6:.0f} ({rss['ours onnx, no torch'] / rss['reference']:.2f}x) |"
            + " - |"
            * (len(sides) - 3)
        )
    lines.append(
        "| max abs diff vs reference: embedding / logits | - | "
        + " | ".join(f"{diffs[s]['embedding']:.1e} / {diffs[s]['logits']:.1e}" for s in sides[1:])
        + " |"
    )
    lines.append(
        "| min mask IoU vs reference (point, box) | - | "
        + " | ".join(f"{diffs[s]['mask_iou']:.4f}" for s in sides[1:])
        + " |"
    )
    if everything_counts:
        lines.append(
            "| masks found by segment everything | "
            + " | ".join(str(everything_counts.get(s, "n/a")) for s in sides)
            + " |"
        )
    p_ref, p_ours = params["reference"], params["ours torch"]
    out = [
        f"Image {image.shape[1]}x{image.shape[0]}; medians of {args.repeats} encoder runs, {args.clicks} clicks "
        f"per kind, {args.everything_repeats} segment-everything run(s); ratios are to the reference in the same run.",
        f"Machine: {machine()}.",
        f"CPU flags: {cpu_flag_summary()}.",
        f"Allocator: {allocator}. Threads: torch {torch.get_num_threads()}.",
        "",
        *lines,
        "",
        f"Parameters (reference / ours): image encoder {p_ref['image_encoder']:,} / {p_ours['image_encoder']:,}; "
        f"prompt encoder {p_ref['prompt_encoder']:,} / {p_ours['prompt_encoder']:,}; "
        f"mask decoder {p_ref['mask_decoder']:,} / {p_ours['mask_decoder']:,}; total {p_ref['total']:,} / {p_ours['total']:,}.",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mobilesam.runtime import configure_allocator, configure_threads

    allocator = "glibc defaults (--no-allocator-tuning)"
    if not args.no_allocator_tuning:
        status = configure_allocator()
        allocator = f"mobilesam.runtime.configure_allocator(): {status.reason}"
    threads = configure_threads(args.threads)
    image = load_image(args)
    with tempfile.TemporaryDirectory(prefix="mobilesam-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = checkpoint_path(args, tmp)
        print("exporting ONNX models and building predictors ...", file=sys.stderr, flush=True)
        from mobilesam.runtime import bf16_supported

        use_bf16 = bf16_supported() and not args.no_bf16
        predictors = build_predictors(checkpoint, tmp / "onnx", args.int8, threads, bf16=use_bf16)
        params = parameter_counts(predictors)
        with torch.inference_mode():
            for predictor in predictors.values():  # warm-up: first-call costs are not per-image costs
                predictor.set_image(image)
                predictor.predict(np.array([[10, 10]]), np.array([1]))
            print("encoder ...", file=sys.stderr, flush=True)
            enc = time_encoder(predictors, image, args.repeats)
            print("clicks ...", file=sys.stderr, flush=True)
            clicks = time_clicks(predictors, image, args.clicks)
            diffs = differences(predictors, image)
            everything, everything_counts = {}, {}
            if not args.no_everything:
                print("segment everything ...", file=sys.stderr, flush=True)
                everything, everything_counts = time_everything(
                    predictors, image, args.points_per_side, args.everything_repeats, args.pred_iou_thresh
                )
            bf16 = bf16_vs_fp32(predictors, image, args.clicks) if use_bf16 else None
            c2f = None
            if not args.no_coarse_to_fine:
                print("segment everything, coarse to fine (stand-in) ...", file=sys.stderr, flush=True)
                c2f = coarse_to_fine(args.points_per_side)
        if args.int8:
            diffs["ours onnx int8"]["mask_iou_vs_fp32"] = _int8_vs_fp32(predictors, image)
        cold = None
        if not args.no_cold_start:
            print("cold start (fresh process) ...", file=sys.stderr, flush=True)
            cold = cold_start(checkpoint, image, not args.no_allocator_tuning, threads, tmp)
        print("peak RSS (fresh process per side) ...", file=sys.stderr, flush=True)
        rss = peak_rss(checkpoint, tmp / "onnx", image, not args.no_allocator_tuning, threads)
        rss["ours onnx, no torch"] = standalone_peak_rss(
            tmp / "onnx", image, not args.no_allocator_tuning, threads, tmp
        )
    text = report(image, args, allocator, enc, clicks, everything, everything_counts, rss, params, diffs)
    goals = goals_table(enc, clicks, everything, rss, bf16, c2f, cold, args.points_per_side)
    text = f"Goals of issue 18 (CPU flags: {cpu_flag_summary()}):\n\n{goals}\n\n{text}"
    extra = extra_report(bf16, c2f, cold, args.points_per_side)
    if extra:
        text += "\n\n" + extra
    if args.int8:
        text += (
            f"\n\nONNX int8 (static int8 encoder, fp32 decoder; benchmarks/int8.py has more) vs ONNX fp32: mean mask IoU "
            f"{diffs['ours onnx int8']['mask_iou_vs_fp32']:.4f} over {args.clicks} point and box clicks."
        )
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


def _int8_vs_fp32(predictors, image) -> float:
    fp32, int8 = predictors["ours onnx"], predictors["ours onnx int8"]
    fp32.set_image(image)
    int8.set_image(image)
    points, boxes = click_prompts(image.shape, 20, seed=2)
    ious = []
    for point, box in zip(points, boxes):
        for kwargs in (dict(point_coords=point[None], point_labels=np.array([1])), dict(box=box)):
            ious.append(
                _iou(
                    fp32.predict(**kwargs, multimask_output=False)[0],
                    int8.predict(**kwargs, multimask_output=False)[0],
                )
            )
    return float(np.mean(ious))


if __name__ == "__main__":
    sys.exit(main())
