"""Run by tests/test_tiling.py in a fresh process: segment a 20000 x 20000 OME-Zarr lazily, tile by
tile, with the object-following stand-in generator, and print peak RSS figures as JSON.

usage: python tiling_memory_probe.py WORKDIR
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import zarr

SIDE, CHUNK, TILE, HALO = 20_000, 1024, 2048, 128
RADIUS = 200
# Disk centres on tile corners, tile borders and inside tiles (x, y).
CENTRES = [
    (2048, 2048),
    (4096, 10000),
    (10240, 6144),
    (15000, 14336),
    (18432, 18432),
    (700, 19000),
    (9000, 9000),
]


def write_ome_zarr(path: Path) -> None:
    """uint8 (y, x) image, two pyramid levels; only chunks that hold an object are written."""
    group = zarr.open_group(str(path), mode="w")
    datasets = []
    for level in (0, 1):
        side = SIDE >> level
        array = group.create_array(
            str(level), shape=(side, side), chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0
        )
        for cx, cy in CENTRES:
            cx, cy, r = cx >> level, cy >> level, RADIUS >> level
            y0, x0, y1, x1 = max(0, cy - r), max(0, cx - r), min(side, cy + r + 1), min(side, cx + r + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            block = np.asarray(array[y0:y1, x0:x1])
            block[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 180
            array[y0:y1, x0:x1] = block
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [2.0**level] * 2}]}
        )
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(workdir: Path) -> None:
    from mobilesam.tiling import open_image, segment_everything_tiled
    from mobilesam.tiling.testing import component_generator

    image_path = workdir / "big.ome.zarr"
    write_ome_zarr(image_path)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    baseline = _status_bytes("VmRSS")
    start = time.perf_counter()
    count = segment_everything_tiled(
        image_path, component_generator, workdir / "labels.zarr", tile_shape=TILE, halo=HALO
    )
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    labels = open_image(workdir / "labels.zarr")
    # Each disk must be one object with its area: read back only around each one.
    areas = []
    for cx, cy in CENTRES:
        region = labels.read((cy - RADIUS - 2, cx - RADIUS - 2, cy + RADIUS + 3, cx + RADIUS + 3))
        values = np.unique(region[region > 0])
        areas.append([int(v) for v in values] + [int(np.count_nonzero(region))])
    outer = (TILE + 2 * HALO) ** 2
    print(
        json.dumps(
            {
                "count": count,
                "seconds": seconds,
                "baseline": baseline,
                "peak": peak,
                "areas": areas,
                "tile_outer_pixels": outer,
                "image_pixels": SIDE * SIDE,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
