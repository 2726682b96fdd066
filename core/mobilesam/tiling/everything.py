"""Tiled segment everything: per-tile automatic masks, merged across tile borders, written tile by tile.

Each tile's outer box (interior + halo) goes through a `SamAutomaticMaskGenerator` (or anything
with `generate(rgb) -> records`); its masks become a label image of the outer box, of which only
the interior is kept, so an object lying in two tiles' boxes is counted once (duplicates gone).
An object cut by an interior border appears on both sides; the halo made both tiles see it whole
enough to give it the same outline at the border, so labels facing each other across the border
along most of their run are joined (union-find) into one object.

Memory is bounded by the tile: pass 1 writes each tile's local labels (uint16) into a zarr store
chunked by tile and returns only the tile's four border lines; pass 2 maps local labels to final
ones tile by tile; a TIFF output is then streamed from the store tile by tile. Tiles are
independent tasks: with a `dask.distributed` client they run on its workers (a lost worker's
tiles are simply recomputed: each task writes only its own chunks).
"""

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import MobileSamError
from ..mask_outputs import records_to_label_image
from .grid import DEFAULT_HALO, DEFAULT_TILE_SHAPE, TileGrid
from .scheduling import cached_instance, run_tiles, tile_progress
from .source import ImageSpec

BORDER_MATCH = 0.5  # labels touching across a border along this fraction of the shorter run are one object
TIFF_TILE = 512  # tile side of TIFF output (a multiple of 16, as TIFF requires)
MAX_LOCAL_LABELS = 65535


@dataclass(frozen=True)
class TileLabels:
    """Pass-1 result of one tile: its number of local labels and its interior's border lines
    (top row, bottom row, left column, right column) of local labels."""

    index: int
    count: int
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


def segment_everything_tiled(
    image,
    generator_factory: Callable[[], object],
    output: str | os.PathLike,
    tile_shape=DEFAULT_TILE_SHAPE,
    halo=DEFAULT_HALO,
    client=None,
    level: int = 0,
    channel_axis: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    cache_dir=None,
    model_id: str | None = None,
    embeddings=None,
) -> int:
    """Segment everything in a large image tile by tile into a label image at `output`.

    image: path (TIFF, OME-Zarr folder, PNG...) or array-like (see `open_image`).
    generator_factory: picklable callable returning the mask generator (called once per process),
        e.g. `functools.partial(build_generator, "vit_t", checkpoint, points_per_side=32)`.
    output: .tif/.tiff (uint32, tiled, BigTIFF when large) or .zarr (OME-Zarr, uint32, chunked by tile).
    client: a `dask.distributed.Client` to run tiles on its workers; None runs them here.
    progress(done, total) counts tiles of both passes; `cancel` stops with `Cancelled`, leaving no output.
    cache_dir, model_id: the tile embedding cache of `TiledEmbeddings` / `mobilesam embed --tile-shape`:
        tiles found there are not encoded again, the others are added (generators without crop layers).
    embeddings: instead, a `TiledEmbeddings` of this image on the same grid held by this process (e.g.
        the one a viewer's clicks were decoded with): the tiles it holds are not encoded again, the
        others are encoded by it and kept for later prompts. Only without `client`; `cancel` then also
        stops inside a tile.
    Returns the number of objects (labels 1..N).
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".tif", ".tiff", ".zarr"):
        raise ValueError(f"output {output} must end in .tif, .tiff or .zarr")
    spec = ImageSpec.of(image, level, channel_axis)
    lazy = spec.open()
    grid = TileGrid(lazy.shape, tile_shape, halo)
    if embeddings is not None:
        _check_shared_embeddings(embeddings, grid, client)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        store = _create_label_store(work / ("labels.zarr" if suffix != ".zarr" else output.name), grid)
        total = 2 * len(grid)
        ticker = tile_progress(total, progress, cancel)
        cache = (
            embeddings
            if embeddings is not None
            else None
            if cache_dir is None
            else (str(cache_dir), model_id)
        )
        within = cancel if embeddings is not None else None  # an Event is not sent to dask workers
        results = run_tiles(
            client,
            _segment_tile,
            [(spec, grid, i, generator_factory, store, cache, within) for i in range(len(grid))],
            ticker,
        )
        lookups, count = _join_across_borders(grid, sorted(results, key=lambda r: r.index))
        ticker.total = len(grid) + sum(r.count > 0 for r in results)
        run_tiles(
            client,
            _relabel_tile,
            [(grid, r.index, lookups[r.index], store) for r in results if r.count],
            ticker,
        )
        if suffix == ".zarr":
            _write_ome_metadata(store.parent)
            _replace(store.parent, output)
        else:
            _write_tiff(store, output, count)
        return count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_generator(model_type: str | None, checkpoint, device: str | None = None, **settings):
    """A `SamAutomaticMaskGenerator` for a checkpoint: a picklable generator factory with functools.partial."""
    from ..automatic_mask_generator import SamAutomaticMaskGenerator
    from ..build_sam import load_model

    model = load_model(model_type, checkpoint, device=device, allow_download=False)
    return SamAutomaticMaskGenerator(model, **settings)


# ---- pass 1: one tile ---------------------------------------------------------------------------


def tile_labels(rgb: np.ndarray, generator, cancel: threading.Event | None = None) -> np.ndarray:
    """(h, w) int32 labels of everything in one (h, w, 3) tile RGB (smaller masks on top)."""
    records = generator.generate(rgb) if cancel is None else generator.generate(rgb, cancel=cancel)
    return records_to_label_image(records, shape=rgb.shape[:2], order="area")


def _segment_tile(
    spec: ImageSpec,
    grid: TileGrid,
    index: int,
    factory,
    store: Path,
    cache=None,
    cancel: threading.Event | None = None,
) -> TileLabels:
    """cache: None, (cache folder, model id), or an in-process `TiledEmbeddings` of the image."""
    import zarr

    tile, generator, image = grid[index], cached_instance(factory), spec.open()
    if cache is not None and getattr(generator, "crop_n_layers", None) == 0:
        from .embeddings import TiledEmbeddings

        embeddings = (
            cache
            if isinstance(cache, TiledEmbeddings)
            else TiledEmbeddings(
                image,
                generator.predictor,
                grid.tile_shape,
                grid.halo,
                cache_dir=cache[0],
                model_id=cache[1],
                max_in_memory=1,
            )
        )
        with _encoded_as(generator.predictor, embeddings.get(index)):
            labels = tile_labels(embeddings.tile_image(index), generator, cancel)
    else:
        labels = tile_labels(image.read_rgb(tile.outer), generator, cancel)
    labels = labels[tile.interior_in_outer()]
    # Consecutive local labels for the objects present in the interior (masks cut away by it vanish).
    present = np.flatnonzero(np.bincount(labels.reshape(-1)))  # O(pixels), unlike np.unique's sort
    present = present[present > 0]
    count = len(present)
    if count > MAX_LOCAL_LABELS:
        raise MobileSamError(
            f"tile {index} has {count} objects, more than {MAX_LOCAL_LABELS}: use smaller tiles"
        )
    renumber = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    renumber[present] = np.arange(1, count + 1)
    local = renumber[labels]
    if count:  # the store is new and reads 0 where nothing was written
        y0, x0, y1, x1 = tile.interior
        zarr.open_array(str(store), mode="r+")[y0:y1, x0:x1] = local
    return TileLabels(
        index, int(count), local[0].copy(), local[-1].copy(), local[:, 0].copy(), local[:, -1].copy()
    )


def _check_shared_embeddings(embeddings, grid: TileGrid, client) -> None:
    if client is not None:
        raise ValueError(
            "embeddings held by this process cannot be used on a dask client's workers: "
            "share them through cache_dir instead"
        )
    theirs = embeddings.grid
    if (theirs.image_shape, theirs.tile_shape, theirs.halo) != (grid.image_shape, grid.tile_shape, grid.halo):
        raise ValueError(f"the embeddings' tiles ({theirs!r}) are not the tiles asked for ({grid!r})")


@contextlib.contextmanager
def _encoded_as(predictor, state):
    """Within the block, `predictor.set_image` restores `state` (the tile's cached embedding, of the
    very RGB the generator is given) instead of running the encoder."""
    predictor.set_image = lambda image, image_format="RGB": predictor.set_embedding(state)
    try:
        yield
    finally:
        del predictor.set_image  # the class's method again


# ---- joining across borders ---------------------------------------------------------------------


def _join_across_borders(grid: TileGrid, results: list[TileLabels]) -> tuple[list[np.ndarray], int]:
    """Per tile, a lookup local label -> final label, and the number of final labels."""
    offsets = np.cumsum([0] + [r.count for r in results])  # node of (tile, local) = offsets[tile] + local - 1
    parent = np.arange(offsets[-1])

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    rows, cols = grid.grid_shape
    for r in results:
        row, col = divmod(r.index, cols)
        facing = []  # (neighbour, my border line, its border line facing mine)
        if col + 1 < cols:
            facing.append((r.index + 1, r.right, results[r.index + 1].left))
        if row + 1 < rows:
            facing.append((r.index + cols, r.bottom, results[r.index + cols].top))
        for other, mine, theirs in facing:
            for a, b in _matching_pairs(mine, theirs):
                ra, rb = find(offsets[r.index] + a - 1), find(offsets[other] + b - 1)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    # Final labels in order of first appearance (tile order, then local order): deterministic.
    final = np.zeros(len(parent), dtype=np.int64)
    names: dict[int, int] = {}
    for node in range(len(parent)):
        final[node] = names.setdefault(find(node), len(names) + 1)
    lookups = [
        np.concatenate([[0], final[offsets[i] : offsets[i + 1]]]).astype(np.uint32)
        for i in range(len(results))
    ]
    return lookups, len(names)


def _matching_pairs(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Label pairs facing each other across a border along at least BORDER_MATCH of the shorter run."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, contact = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    run_a = np.bincount(a, minlength=int(a.max()) + 1)
    run_b = np.bincount(b, minlength=int(b.max()) + 1)
    keep = contact >= BORDER_MATCH * np.minimum(run_a[pairs[0]], run_b[pairs[1]])
    return [(int(x), int(y)) for x, y in pairs[:, keep].T]


# ---- pass 2 and output --------------------------------------------------------------------------


def _relabel_tile(grid: TileGrid, index: int, lookup: np.ndarray, store: Path) -> None:
    import zarr

    array = zarr.open_array(str(store), mode="r+")
    y0, x0, y1, x1 = grid[index].interior
    array[y0:y1, x0:x1] = lookup[np.asarray(array[y0:y1, x0:x1]).astype(np.int64)]


def _create_label_store(path: Path, grid: TileGrid) -> Path:
    import zarr

    group = zarr.open_group(str(path.parent / path.name), mode="w")
    create = getattr(group, "create_array", None) or group.create_dataset  # zarr 3 / zarr 2
    create("0", shape=grid.image_shape, chunks=grid.tile_shape, dtype="uint32", fill_value=0)
    return path / "0"


def _write_ome_metadata(group_path: Path) -> None:
    import zarr

    group = zarr.open_group(str(group_path), mode="r+")
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": datasets, "name": "labels"}],
    }


def _replace(source: Path, target: Path) -> None:
    """Move a finished output into place; an older output of the same name is removed only then."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def _write_tiff(store: Path, output: Path, count: int) -> None:
    import tifffile
    import zarr

    array = zarr.open_array(str(store), mode="r")
    h, w = array.shape
    side = TIFF_TILE

    def tiles():
        for y in range(0, h, side):
            for x in range(0, w, side):
                block = np.zeros((side, side), np.uint32)
                data = np.asarray(array[y : y + side, x : x + side])
                block[: data.shape[0], : data.shape[1]] = data
                yield block

    with atomic_write(output) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(h, w),
            dtype=np.uint32,
            tile=(side, side),
            compression="zlib",
            bigtiff=h * w * 4 > 2**31,
            photometric="minisblack",
        )
