"""`TiledEmbeddings`: per-tile embeddings of a large image, lazily or all at once, cached.

Each tile's outer box (interior + halo, see `TileGrid`) is encoded as its own image. Tiles are
encoded only when asked for (`get`, e.g. by a click), or all at once with `embed_all` (progress,
cancel). Storage is `mobilesam.volume.VolumeEmbeddings` itself, over the image seen as a stack of
tiles: the same in-memory LRU, the same zarr disk store, the same keys (model identity + sha256 of
the exact RGB tile fed to the encoder), so a tile already encoded — by this process, another run,
or a Dask worker sharing the cache folder — is never encoded again, and changed pixels, contrast
or weights are never served a stale embedding.
"""

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..predictor import EmbeddingState
from ..progress import ProgressCallback, raise_if_cancelled
from ..volume.embeddings import VolumeEmbeddings
from .grid import DEFAULT_HALO, DEFAULT_TILE_SHAPE, Tile, TileGrid
from .scheduling import cached_instance, run_tiles, tile_progress
from .source import ImageSpec, LazyImage, open_image


class _TileStack:
    """The image as a (tiles, OH, OW, 3) uint8 stack of tile RGBs, read one tile at a time."""

    dtype = np.dtype(np.uint8)

    def __init__(self, image: LazyImage, grid: TileGrid) -> None:
        self.image, self.grid = image, grid
        self.shape = (len(grid), *grid.outer_shape, 3)

    def __getitem__(self, index) -> np.ndarray:
        tile = index[0] if isinstance(index, tuple) else index
        return self.image.read_rgb(self.grid[int(tile)].outer)


class TiledEmbeddings:
    """Embeddings of the tiles of `image` (a path, `LazyImage` or array-like; see `open_image`).

    predictor: a `mobilesam.SamPredictor` (or stand-in with the same methods).
    tile_shape, halo: interior size and context (pixels; int or (rows, columns)).
    cache_dir, model_id, max_in_memory: as for `VolumeEmbeddings` (each tile embedding is 4 MB).
    """

    def __init__(
        self,
        image,
        predictor,
        tile_shape: int | tuple[int, int] = DEFAULT_TILE_SHAPE,
        halo: int | tuple[int, int] = DEFAULT_HALO,
        cache_dir: str | Path | None = None,
        max_in_memory: int = 16,
        model_id: str | None = None,
        level: int = 0,
    ) -> None:
        self.image = image if isinstance(image, LazyImage) else open_image(image, level=level)
        self.grid = TileGrid(self.image.shape, tile_shape, halo)
        self.predictor = predictor
        self._tiles = VolumeEmbeddings(
            _TileStack(self.image, self.grid),
            predictor,
            axis=0,
            channel_axis=3,
            cache_dir=cache_dir,
            max_in_memory=max_in_memory,
            model_id=model_id,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def encoder_calls(self) -> int:
        return self._tiles.encoder_calls

    @property
    def disk_hits(self) -> int:
        return self._tiles.disk_hits

    @property
    def memory_hits(self) -> int:
        return self._tiles.memory_hits

    @property
    def model_id(self) -> str | None:
        return self._tiles.model_id

    def tile_image(self, tile: int | Tile) -> np.ndarray:
        """(OH, OW, 3) uint8 RGB of the tile's outer box, as encoded."""
        return self._tiles.slice_image(_index(tile))

    def get(self, tile: int | Tile) -> EmbeddingState:
        """The tile's embedding: from memory, else the disk cache, else encoded now."""
        return self._tiles.get(_index(tile))

    def set_tile(self, tile: int | Tile) -> None:
        """Make the tile the predictor's current image."""
        self._tiles.set_slice(_index(tile))

    def is_cached(self, tile: int | Tile) -> bool:
        return self._tiles.is_cached(_index(tile))

    def embed_all(
        self,
        tiles: Iterable[int] | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Encode the given tiles (default all) that are not cached; returns how many were encoded.

        progress(done, total) after each tile; setting `cancel` raises `mobilesam.errors.Cancelled`
        (finished tiles stay cached). Without a cache folder only the last `max_in_memory` stay.
        """
        tiles = list(range(len(self.grid))) if tiles is None else [_index(t) for t in tiles]
        before = self.encoder_calls
        for done, index in enumerate(tiles):
            raise_if_cancelled(cancel, f"tile embedding stopped after {done} of {len(tiles)} tiles")
            self.get(index)
            if progress is not None:
                progress(done + 1, len(tiles))
        return self.encoder_calls - before

    def __repr__(self) -> str:
        return (
            f"TiledEmbeddings({self.grid!r}, encoded={self.encoder_calls}, cache_dir={self._tiles.cache_dir})"
        )


def _index(tile: int | Tile) -> int:
    return tile.index if isinstance(tile, Tile) else int(tile)


def build_predictor(model_type: str | None, checkpoint, device: str | None = None):
    """A `SamPredictor` for a checkpoint: a picklable predictor factory with functools.partial."""
    from ..serving import build_predictor as build

    return build(model_type=model_type, checkpoint=checkpoint, device=device, allow_download=False)


def embed_tiles(
    image,
    predictor_factory: Callable[[], object],
    cache_dir: str | Path,
    model_id: str,
    tile_shape=DEFAULT_TILE_SHAPE,
    halo=DEFAULT_HALO,
    client=None,
    level: int = 0,
    channel_axis: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[int, int]:
    """Encode every tile of `image` into the cache folder, one task per tile (on `client`'s dask
    workers, or here). Cached tiles are skipped. Returns (tiles encoded now, tiles in the image)."""
    spec = ImageSpec.of(image, level, channel_axis)
    grid = TileGrid(spec.open().shape, tile_shape, halo)
    arguments = [
        (spec, predictor_factory, str(cache_dir), model_id, tile_shape, halo, i) for i in range(len(grid))
    ]
    encoded = run_tiles(client, _embed_tile, arguments, tile_progress(len(grid), progress, cancel))
    return int(sum(encoded)), len(grid)


def _embed_tile(
    spec: ImageSpec, predictor_factory, cache_dir: str, model_id: str, tile_shape, halo, index: int
) -> int:
    embeddings = TiledEmbeddings(
        spec.open(),
        cached_instance(predictor_factory),
        tile_shape,
        halo,
        cache_dir=cache_dir,
        max_in_memory=1,
        model_id=model_id,
    )
    return embeddings.embed_all([index])
