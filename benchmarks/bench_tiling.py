"""Benchmark: large images with tiling, against what an untiled predictor does with them.

    .venv/bin/python benchmarks/bench_tiling.py [--size 8192] [--everything-size 2304] [--checkpoint PATH]

References measured in the same run (the machine may be loaded: read the ratios, not the seconds):
- first click on a SIZE^2 image: tiled (read + encode one 768+2x128 = 1024 px tile + decode) vs the
  untiled predictor, which shrinks the whole image into one 1024 px embedding (resize + encode);
- warm click (tile already encoded) vs a click on an ordinary 1024^2 image;
- segment everything, seconds per megapixel on an EVERYTHING_SIZE^2 crop: one process (torch with
  all threads) vs a 2-worker dask LocalCluster (one thread each).
Random weights (default) give masks that span whole tiles, so clicks are capped at one tile
(`max_tiles=1`); with real weights (--checkpoint) clicks follow the object as in use.
"""

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mobilesam
from mobilesam.testing import save_random_checkpoint
from mobilesam.tiling import (
    TiledEmbeddings,
    TiledPredictor,
    build_generator,
    local_cluster_client,
    segment_everything_tiled,
)


def make_image(size: int) -> np.ndarray:
    """A SIZE^2 RGB image of soft blobs on a textured background (built in strips: no float copy)."""
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), np.uint8)
    centres = rng.uniform(0, size, (max(4, size // 128), 2))
    for y0 in range(0, size, 512):
        yy, xx = np.mgrid[y0 : min(size, y0 + 512), :size]
        strip = rng.normal(70, 10, yy.shape)
        for cx, cy in centres:
            if abs(cy - y0 - 256) < 300:
                strip += 120 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 40**2)
        image[y0 : y0 + 512] = np.clip(strip, 0, 255).astype(np.uint8)[..., None]
    return image


def timed(function, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--everything-size", type=int, default=2304, help="side of the segment-everything crop")
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--checkpoint", help="vit_t weights (default: seeded random weights)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_tiling_"))
    checkpoint = args.checkpoint or save_random_checkpoint(work / "vit_t_random.pt", "vit_t", seed=0)
    model = mobilesam.load_model("vit_t", checkpoint, allow_download=False)
    image = make_image(args.size)
    print(
        f"image {args.size}^2, torch threads {torch.get_num_threads()}; machine may be shared: compare ratios"
    )

    untiled = mobilesam.SamPredictor(model)
    point = np.array([[args.size * 0.4, args.size * 0.45]])
    full_encode = timed(lambda: untiled.set_image(image))
    full_click = timed(lambda: untiled.predict(point, np.array([1])))
    max_tiles = 64 if args.checkpoint else 1

    def first_click():
        tiled = TiledPredictor(TiledEmbeddings(image, mobilesam.SamPredictor(model)), max_tiles=max_tiles)
        return tiled, tiled.predict(point, np.array([1]))

    start = time.perf_counter()
    tiled, region = first_click()
    tiled_first = time.perf_counter() - start

    small = mobilesam.SamPredictor(model)
    small.set_image(image[:1024, :1024])
    warm, reference = [], []
    for _ in range(args.clicks):  # interleaved, so a busy machine slows both alike
        warm.append(timed(lambda: tiled.predict(point, np.array([1]))))
        reference.append(timed(lambda: small.predict(np.array([[500.0, 500.0]]), np.array([1]))))
    tiled_warm, small_click = statistics.median(warm), statistics.median(reference)
    print(
        f"first click: tiled {tiled_first:.2f} s ({len(region.tiles)} tile(s) encoded) vs untiled downscaled "
        f"encode {full_encode:.2f} s + click {full_click:.3f} s -> ratio {tiled_first / (full_encode + full_click):.2f}; "
        f"untiled sees the image at {1024 / args.size:.3f}x, tiled at 1x"
    )
    print(
        f"warm click: tiled {tiled_warm * 1e3:.1f} ms ({len(region.tiles)} tile(s), mask {region.mask.shape}) vs "
        f"1024^2 click {small_click * 1e3:.1f} ms -> ratio {tiled_warm / small_click:.2f}"
    )

    crop = np.ascontiguousarray(image[: args.everything_size, : args.everything_size])
    megapixels = crop.shape[0] * crop.shape[1] / 1e6
    factory = functools.partial(
        build_generator, "vit_t", str(checkpoint), None, points_per_side=args.points_per_side
    )
    start = time.perf_counter()
    count_here = segment_everything_tiled(crop, factory, work / "here.zarr")
    here = time.perf_counter() - start
    client = local_cluster_client(2)
    try:
        start = time.perf_counter()
        count_there = segment_everything_tiled(crop, factory, work / "cluster.zarr", client=client)
        there = time.perf_counter() - start
    finally:
        client.close()
        client.cluster.close()
    print(
        f"segment everything {args.everything_size}^2 ({megapixels:.1f} MP, {args.points_per_side}^2 points a tile): "
        f"one process {here / megapixels:.1f} s/MP ({count_here} objects), 2-worker LocalCluster "
        f"{there / megapixels:.1f} s/MP ({count_there} objects) -> speed-up {here / there:.2f}x "
        "(includes starting the workers' models)"
    )


if __name__ == "__main__":
    main()
