"""Benchmark: propagate one object through a 64-slice 512x512 volume.

    .venv/bin/python benchmarks/bench_volume.py [--slices 64] [--size 512] [--checkpoint PATH] [--device cpu]

Reference, measured in the same process: one image-encoder call (`SamPredictor.set_image` on one
slice, median of 3). Reported: propagation time relative to `slices x one encoder call` (the
floor for a cold volume: every slice must be encoded once; the rest is prompt encoding, mask
decoding, upsampling and bookkeeping), the same for a second run served from the zarr embedding
cache, and the process's peak RSS. The volume is a uint16 memmap holding a drifting tube that
spans every slice. Without --checkpoint the model has random weights (timings do not depend on
the weights); since random weights give arbitrary masks, the run uses iou_threshold=0 so that
only an empty mask stops it, and reports how many slices were reached.
For timing comparisons with glibc malloc, run both sides under the same allocator settings, e.g.
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592 (both are in this process).
"""

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mobilesam
from mobilesam.testing import save_random_checkpoint
from mobilesam.volume import SlicePrompt, VolumeEmbeddings, model_fingerprint, propagate_object


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_volume(path: Path, slices: int, size: int) -> tuple[np.memmap, np.ndarray]:
    """uint16 memmap with a tube of radius size/8 drifting across the slices; returns (volume, box on slice mid)."""
    volume = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(slices, size, size))
    yy, xx = np.mgrid[:size, :size]
    radius = size / 8
    rng = np.random.default_rng(0)
    for z in range(slices):
        cy, cx = size / 2, size / 3 + z * (size / 3) / slices
        tube = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        volume[z] = (rng.normal(800, 60, (size, size)) + 2500 * tube).clip(0, 65535).astype(np.uint16)
    volume.flush()
    mid = slices // 2
    cx = size / 3 + mid * (size / 3) / slices
    box = np.array([cx - radius, size / 2 - radius, cx + radius, size / 2 + radius])
    return np.load(path, mmap_mode="r"), box


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoint", default=None, help="weights (default: random vit_t weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--projection", default="box")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_volume_") as tmp:  # 64 x 4 MB of cached embeddings
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    checkpoint = args.checkpoint or save_random_checkpoint(work / "random_vit_t.pt", "vit_t", seed=0)
    model = mobilesam.load_model(None, checkpoint, device=args.device, allow_download=False)
    predictor = mobilesam.SamPredictor(model)
    volume, box = make_volume(work / "volume.npy", args.slices, args.size)
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, volume {volume.shape} uint16 "
        f"({volume.nbytes / 2**20:.0f} MiB memmap), projection {args.projection}"
    )
    print(f"peak RSS after loading the model: {peak_rss_mb():.0f} MiB")

    embeddings = VolumeEmbeddings(volume, predictor)
    image = embeddings.slice_image(args.slices // 2)
    predictor.set_image(image)  # warm-up
    encoder_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.set_image(image)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        encoder_times.append(time.perf_counter() - t0)
    t_encoder = statistics.median(encoder_times)
    floor = args.slices * t_encoder
    print(f"one encoder call (set_image, median of 3): {t_encoder:.3f} s -> {args.slices} x = {floor:.1f} s")
    print(f"peak RSS after the encoder calls: {peak_rss_mb():.0f} MiB")

    # Time spent inside the encoder during propagation, so the overhead is measured even when
    # other processes make single encoder timings noisy.
    encoder_seconds = [0.0]
    encoder_forward = model.image_encoder.forward

    def timed_forward(x):
        t0 = time.perf_counter()
        out = encoder_forward(x)
        encoder_seconds[0] += time.perf_counter() - t0
        return out

    model.image_encoder.forward = timed_forward

    model_id = model_fingerprint("vit_t", checkpoint)
    prompt = [SlicePrompt(args.slices // 2, box=box)]
    results = {}
    for run in ("cold", "cached"):
        encoder_seconds[0] = 0.0
        embeddings = VolumeEmbeddings(volume, predictor, cache_dir=work / "cache.zarr", model_id=model_id)
        t0 = time.perf_counter()
        mask = propagate_object(embeddings, prompt, iou_threshold=0.0, projection=args.projection)
        elapsed = time.perf_counter() - t0
        reached = int(mask.any(axis=(1, 2)).sum())
        results[run] = elapsed
        print(
            f"{run:6} propagation: {elapsed:.1f} s, slices with mask {reached}/{args.slices}, "
            f"encoder calls {embeddings.encoder_calls}, from disk cache {embeddings.disk_hits}; "
            f"time / ({args.slices} x encoder) = {elapsed / floor:.3f}; inside the encoder "
            f"{encoder_seconds[0]:.1f} s, everything else {elapsed - encoder_seconds[0]:.1f} s "
            f"({(elapsed - encoder_seconds[0]) / args.slices:.3f} s per slice)"
        )
    print(f"cached / cold = {results['cached'] / results['cold']:.3f}")
    print(
        f"peak RSS: {peak_rss_mb():.0f} MiB (embeddings in memory at most {embeddings.max_in_memory} x 4 MiB)"
    )


if __name__ == "__main__":
    main()
