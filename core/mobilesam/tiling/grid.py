"""`TileGrid`: an image cut into tiles whose interiors cover it exactly once, each seen with a halo.

The interiors (tile_shape each, smaller on the last row/column) partition the image, so a result
assembled from interiors has no gaps and no overlaps. Each tile is encoded with at least `halo`
pixels of context on every side the image allows: its outer box, of one size for all tiles
(tile_shape + 2 * halo, at most the image), is shifted inward at the image's edges instead of being
clipped, so every tile is encoded at the same scale with no padding and edge tiles get more context.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, image pixels
# 768 + 2 * 128 = 1024: each tile's outer box is exactly the encoder's input, never resampled.
DEFAULT_TILE_SHAPE = 768
DEFAULT_HALO = 128


@dataclass(frozen=True)
class Tile:
    """One tile: `index` in row-major order, `position` (row, column) in the grid, `interior` and
    `outer` (interior + halo, shifted inside the image) as (y0, x0, y1, x1) boxes."""

    index: int
    position: tuple[int, int]
    interior: Box
    outer: Box

    @property
    def outer_shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.outer
        return y1 - y0, x1 - x0

    def interior_in_outer(self) -> tuple[slice, slice]:
        """Slices selecting the interior inside an (outer_shape) array."""
        (iy0, ix0, iy1, ix1), (oy0, ox0, _, _) = self.interior, self.outer
        return slice(iy0 - oy0, iy1 - oy0), slice(ix0 - ox0, ix1 - ox0)


def parse_shape(value: int | str | Sequence[int], name: str) -> tuple[int, int]:
    """1024, "1024", "1024,768" or (1024, 768) -> (rows, columns)."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{name} must be N or ROWS,COLUMNS, got {value!r}") from None
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        value = value * 2
    if len(value) != 2:
        raise ValueError(f"{name} must have 2 entries (rows, columns), got {value}")
    return value


class TileGrid:
    """Tiles of an (H, W) image: interiors of `tile_shape` (rows, columns), outer boxes `halo` wider."""

    def __init__(
        self, image_shape: Sequence[int], tile_shape: int | Sequence[int], halo: int | Sequence[int] = 0
    ) -> None:
        self.image_shape = tuple(int(s) for s in image_shape[:2])
        self.tile_shape = parse_shape(tile_shape, "tile_shape")
        self.halo = parse_shape(halo, "halo")
        if min(self.image_shape) < 1:
            raise ValueError(f"image of shape {self.image_shape} is empty")
        if min(self.tile_shape) < 1:
            raise ValueError(f"tile_shape must be positive, got {self.tile_shape}")
        if min(self.halo) < 0:
            raise ValueError(f"halo must be 0 or more, got {self.halo}")
        self.grid_shape = tuple(-(-s // t) for s, t in zip(self.image_shape, self.tile_shape))

    def __len__(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"tile {index} is outside the grid of {len(self)} tiles")
        row, col = divmod(int(index), self.grid_shape[1])
        (h, w), (th, tw), (hy, hx) = self.image_shape, self.tile_shape, self.halo
        (oh, ow) = self.outer_shape
        interior = (row * th, col * tw, min(h, (row + 1) * th), min(w, (col + 1) * tw))
        y0 = min(max(0, interior[0] - hy), h - oh)
        x0 = min(max(0, interior[1] - hx), w - ow)
        return Tile(int(index), (row, col), interior, (y0, x0, y0 + oh, x0 + ow))

    @property
    def outer_shape(self) -> tuple[int, int]:
        """(rows, columns) of every tile's outer box."""
        return tuple(min(s, t + 2 * h) for s, t, h in zip(self.image_shape, self.tile_shape, self.halo))

    def tile_at(self, y: float, x: float) -> Tile:
        """The tile whose interior contains pixel (y, x)."""
        h, w = self.image_shape
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"point (x={x}, y={y}) is outside the {w}x{h} image")
        row, col = int(y) // self.tile_shape[0], int(x) // self.tile_shape[1]
        return self[row * self.grid_shape[1] + col]

    def tiles_in_box(self, box: Box) -> list[Tile]:
        """Tiles whose interior intersects the (y0, x0, y1, x1) box (clipped to the image)."""
        y0, x0, y1, x1 = box
        h, w = self.image_shape
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        if y1 <= y0 or x1 <= x0:
            return []
        (th, tw), cols = self.tile_shape, self.grid_shape[1]
        rows = range(int(y0) // th, (int(np.ceil(y1)) - 1) // th + 1)
        columns = range(int(x0) // tw, (int(np.ceil(x1)) - 1) // tw + 1)
        return [self[r * cols + c] for r in rows for c in columns]

    def neighbours(self, tile: Tile) -> list[Tile]:
        """The up to 8 tiles around `tile`."""
        row, col = tile.position
        rows, cols = self.grid_shape
        return [
            self[r * cols + c]
            for r in range(max(0, row - 1), min(rows, row + 2))
            for c in range(max(0, col - 1), min(cols, col + 2))
            if (r, c) != (row, col)
        ]

    def __repr__(self) -> str:
        return (
            f"TileGrid(image_shape={self.image_shape}, tile_shape={self.tile_shape}, halo={self.halo}, "
            f"tiles={self.grid_shape[0]}x{self.grid_shape[1]})"
        )
