"""`TiledPredictor`: point and box prompts on a tiled image, one seamless object per prompt.

A prompt is decoded in the tile whose interior (halo excluded) contains it; a box, or points, that
span tiles are decoded in every tile they touch, each tile seeing the prompt clipped to its outer
box. An object that runs out of a tile's interior is followed: the neighbour it runs into is
decoded too, prompted with the object's most inner pixel there (and the box, clipped, for boxes).
Every tile contributes only its interior, so the pieces fit without seams or overlaps. The result
is a `RegionMask`: the mask at full resolution for the object's bounding region only.
"""

from dataclasses import dataclass

import numpy as np

from .embeddings import TiledEmbeddings
from .grid import Box, Tile

DEFAULT_MAX_TILES = 64  # tiles one object may span before following it stops


@dataclass(frozen=True)
class RegionMask:
    """mask: (y1 - y0, x1 - x0) bool of the object's bounding `box` (y0, x0, y1, x1) in image pixels;
    score: the mean predicted IoU of the tiles decoded; tiles: the tile indices decoded."""

    mask: np.ndarray
    box: Box
    score: float
    tiles: tuple[int, ...]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def paste(self, labels: np.ndarray, value: int = 1) -> np.ndarray:
        """Write `value` where the object is into an image-sized array (in place); returns it."""
        y0, x0, y1, x1 = self.box
        labels[y0:y1, x0:x1][self.mask] = value
        return labels


class TiledPredictor:
    """Prompts in image pixels on a `TiledEmbeddings`; tiles are encoded when a prompt first needs them."""

    def __init__(self, embeddings: TiledEmbeddings, max_tiles: int = DEFAULT_MAX_TILES) -> None:
        self.embeddings = embeddings
        self.grid = embeddings.grid
        self.max_tiles = max_tiles

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> RegionMask:
        """One object from points (N, 2) (x, y) with labels (N,) 1/0, and/or a box (4,) XYXY, in image pixels."""
        points, labels = _check_points(point_coords, point_labels)
        if box is not None:
            box = np.asarray(box, dtype=np.float64).reshape(4)
            if not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"box {box.tolist()} must be x0, y0, x1, y1 with x1 > x0 and y1 > y0")
            start = self.grid.tiles_in_box((box[1], box[0], box[3], box[2]))
            if not start:
                raise ValueError(
                    f"box {box.tolist()} is outside the {self.grid.image_shape[1]}x"
                    f"{self.grid.image_shape[0]} image"
                )
        elif points is not None and (labels == 1).any():
            start = [self.grid.tile_at(y, x) for x, y in points[labels == 1]]
        else:
            raise ValueError("give a box or at least one foreground point (label 1)")

        pieces: dict[int, tuple[np.ndarray, float]] = {}  # tile index -> (interior mask, score)
        queue = {t.index: None for t in start}  # tile index -> extra point (x, y) found by following
        while queue and len(pieces) < self.max_tiles:
            index, seed = queue.popitem()
            tile = self.grid[index]
            mask, score = self._decode(tile, points, labels, box, seed)
            rows, cols = tile.interior_in_outer()
            pieces[index] = (mask[rows, cols], score)
            if len(pieces) >= self.max_tiles:
                break
            for neighbour in self.grid.neighbours(tile):
                if neighbour.index not in pieces and neighbour.index not in queue:
                    inner = _inner_pixel(mask, tile, neighbour)
                    if inner is not None:
                        queue[neighbour.index] = inner
        return self._assemble(pieces)

    def _decode(self, tile: Tile, points, labels, box, seed) -> tuple[np.ndarray, float]:
        """(OH, OW) mask of the tile's outer box for the prompt parts inside it, and its score."""
        y0, x0, y1, x1 = tile.outer
        local_points, local_labels = [], []
        if points is not None:
            inside = (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
            local_points += (points[inside] - [x0, y0]).tolist()
            local_labels += labels[inside].tolist()
        if seed is not None and box is None:
            local_points.append([seed[0] - x0, seed[1] - y0])
            local_labels.append(1)
        local_box = None
        if box is not None:
            local_box = np.array([max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1)]) - [
                x0,
                y0,
                x0,
                y0,
            ]
        predictor = self.embeddings.predictor
        self.embeddings.set_tile(tile)
        coords = np.array(local_points, dtype=np.float64) if local_points else None
        single_point = local_box is None and len(local_points) == 1
        masks, scores, _ = predictor.predict(
            coords, np.array(local_labels) if local_points else None, local_box, multimask_output=single_point
        )
        best = int(np.argmax(scores))  # an ambiguous single point: the best of SAM's three masks
        return np.asarray(masks[best], dtype=bool), float(scores[best])

    def _assemble(self, pieces: dict) -> RegionMask:
        boxes = []
        for index, (mask, _) in pieces.items():
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            if len(rows):
                iy0, ix0 = self.grid[index].interior[:2]
                boxes.append((iy0 + rows[0], ix0 + cols[0], iy0 + rows[-1] + 1, ix0 + cols[-1] + 1))
        tiles = tuple(sorted(pieces))
        score = float(np.mean([s for _, s in pieces.values()]))
        if not boxes:
            return RegionMask(np.zeros((0, 0), bool), (0, 0, 0, 0), score, tiles)
        y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        region = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for index, (mask, _) in pieces.items():
            iy0, ix0, iy1, ix1 = self.grid[index].interior
            # The part of this interior inside the region (the interior may stick out of it).
            sy0, sx0, sy1, sx1 = max(iy0, y0), max(ix0, x0), min(iy1, y1), min(ix1, x1)
            if sy1 > sy0 and sx1 > sx0:
                region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] |= mask[
                    sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0
                ]
        return RegionMask(region, (int(y0), int(x0), int(y1), int(x1)), score, tiles)


def _check_points(point_coords, point_labels):
    if point_coords is None:
        return None, None
    points = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
    labels = (
        np.ones(len(points), int)
        if point_labels is None
        else np.asarray(point_labels).reshape(-1).astype(int)
    )
    if len(labels) != len(points):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    if not np.isfinite(points).all():
        raise ValueError("point coordinates must be finite")
    return points, labels


def _inner_pixel(mask: np.ndarray, tile: Tile, neighbour: Tile) -> tuple[float, float] | None:
    """The (x, y) image pixel of the mask, inside the neighbour's interior, furthest from the mask's
    edge (a prompt there is safely on the object); None if the mask does not reach that interior."""
    (oy0, ox0, oy1, ox1), (ny0, nx0, ny1, nx1) = tile.outer, neighbour.interior
    y0, x0, y1, x1 = max(oy0, ny0), max(ox0, nx0), min(oy1, ny1), min(ox1, nx1)
    if y1 <= y0 or x1 <= x0:
        return None
    part = mask[y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0]
    if not part.any():
        return None
    from scipy import ndimage

    # Pad with background so that pixels on the cut edge count as near the object's edge too.
    distance = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), part.shape)
    return float(x0 + x) + 0.5, float(y0 + y) + 0.5
