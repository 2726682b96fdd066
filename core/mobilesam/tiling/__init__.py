"""Large images: tiled embeddings, tiled prompts and tiled segment everything.

- `TileGrid(image_shape, tile_shape, halo)`: interiors that partition the image, outer boxes with context.
- `open_image(path_or_array, level)` -> `LazyImage`: TIFF, OME-Zarr (any level), dask/zarr/numpy, read by region.
- `TiledEmbeddings(image, predictor, tile_shape, halo, cache_dir=...)`: per-tile embeddings, lazy or
  all at once, in the same cache (LRU + zarr store, content + model keys) as volume embeddings.
- `TiledPredictor(embeddings).predict(points, labels, box)` -> `RegionMask`: one seamless object,
  full resolution over its bounding region only.
- `segment_everything_tiled(image, generator_factory, output, ...)`: label image (TIFF / OME-Zarr)
  written tile by tile, objects joined across borders, optionally on a `dask.distributed` client.
"""

from .embeddings import TiledEmbeddings, build_predictor, embed_tiles
from .everything import build_generator, segment_everything_tiled, tile_labels
from .grid import Tile, TileGrid, parse_shape
from .prompts import RegionMask, TiledPredictor
from .scheduling import local_cluster_client
from .source import ImageSpec, LazyImage, open_image

__all__ = [
    "TileGrid",
    "Tile",
    "parse_shape",
    "LazyImage",
    "open_image",
    "TiledEmbeddings",
    "TiledPredictor",
    "RegionMask",
    "segment_everything_tiled",
    "build_generator",
    "tile_labels",
    "local_cluster_client",
    "build_predictor",
    "embed_tiles",
    "ImageSpec",
]
