"""`TiledImages`: clicks on large task images decoded tile by tile by the core's `TiledPredictor`.

SAM's encoder sees 1024 px, so one embedding of a 6000 x 4000 task image is the image shrunk ~6x:
small objects vanish. Above `MOBILESAM_TILE_ABOVE` px on the long side, an interactive click or box
is decoded through `mobilesam.tiling` instead: the image is cut into tiles (768 px interiors with a
128 px halo, exactly the encoder's input), only the tiles the prompt (and the object it finds)
touch are encoded, and the object comes back at full resolution over its bounding region.

Storage is the core's: each image's `TiledEmbeddings` keeps its last tile embeddings in memory and,
when the backend has an embedding folder, in the core tile cache (a zarr store in `<dir>/tiles`,
keyed by model version + sha256 of the tile's pixels), so a restarted server or a changed file is
handled as by every other core cache. Images are kept per URL in a small LRU (count and bytes).

Encoding runs on the backend's encoder thread and decoding on its decoder thread (`encode` and
`decode` callables), as for untiled images; clicks on the same image take turns (one lock per image).
Refinement (feeding the previous low-res mask back) is not used on tiled images: a tile's mask
logits do not describe the object beyond the tile.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadRequest
from .results import same_aspect

logger = logging.getLogger(__name__)

MAX_IMAGES = 4  # large images kept open (their pixels and tile embeddings) at once
MAX_IMAGE_BYTES = 1 << 30  # memory those images' pixels may take
TILES_IN_MEMORY = 16  # tile embeddings kept in memory per image (4 MB each with MobileSAM)


class _RoutedPredictor:
    """The `SamPredictor` methods `TiledEmbeddings` and `TiledPredictor` call, routed to the backend:
    encodes through `encode(image) -> EmbeddingState`, decodes through
    `decode(state, coords, labels, box, multimask) -> (masks, scores, logits)`. Used under its image's lock."""

    def __init__(self, encode: Callable, decode: Callable, model=None) -> None:
        self._encode, self._decode, self.model = encode, decode, model
        self._encoded = self._current = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self._encoded = self._encode(image)

    def get_embedding_state(self):
        return self._encoded

    def set_embedding(self, state) -> None:
        self._current = state

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output: bool = True, **_):
        return self._decode(self._current, point_coords, point_labels, box, multimask_output)


@dataclass
class _OpenImage:
    embeddings: object  # mobilesam.tiling.TiledEmbeddings
    predictor: object  # mobilesam.tiling.TiledPredictor
    lock: threading.Lock
    nbytes: int


class TiledImages:
    """Large task images by URL, each with its tile embeddings; `segment` answers a click.

    tile_above: long side (px) above which an image is tiled; 0 never tiles.
    cache_dir: the core tile cache folder (None: memory only); model_id: the backend's model version.
    """

    def __init__(
        self,
        tile_above: int,
        encode: Callable,
        decode: Callable,
        model: Callable[[], object],
        cache_dir: Path | None = None,
        model_id: str = "",
        max_images: int = MAX_IMAGES,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        self.tile_above = int(tile_above)
        self._encode, self._decode, self._model = encode, decode, model
        self.cache_dir, self.model_id = cache_dir, model_id
        self.max_images, self.max_bytes = max_images, max_bytes
        self._images: OrderedDict[str, _OpenImage] = OrderedDict()
        self._lock = threading.Lock()

    def wants(self, size: tuple[int, int] | None) -> bool:
        """Whether an image of (H, W) `size` is decoded tile by tile."""
        return bool(size) and self.tile_above > 0 and max(size) > self.tile_above

    def __contains__(self, url: str) -> bool:
        with self._lock:
            return url in self._images

    def open(
        self,
        url: str,
        load: Callable[[], np.ndarray],
        expected_size: tuple[int, int] | None = None,
        image: np.ndarray | None = None,
    ) -> tuple[_OpenImage, bool]:
        """(the image's tiles, whether it was already open). An open image whose aspect ratio disagrees
        with `expected_size` (what Label Studio says now) is stale (the file changed) and is read again."""
        with self._lock:
            entry = self._images.get(url)
            if entry is not None:
                if expected_size is None or same_aspect(entry.embeddings.shape, expected_size):
                    self._images.move_to_end(url)
                    return entry, True
                logger.info(
                    "open tiled image %s has size %s, Label Studio says %s: reading it again",
                    url,
                    entry.embeddings.shape,
                    expected_size,
                )
                del self._images[url]
        entry = self._build(load() if image is None else image)
        with self._lock:
            self._images[url] = entry
            self._images.move_to_end(url)
            while len(self._images) > 1 and (
                len(self._images) > self.max_images
                or sum(e.nbytes for e in self._images.values()) > self.max_bytes
            ):
                self._images.popitem(last=False)
        return entry, False

    def _build(self, image: np.ndarray) -> _OpenImage:
        from mobilesam.tiling import TiledEmbeddings, TiledPredictor

        predictor = _RoutedPredictor(self._encode, self._decode, self._model())
        embeddings = TiledEmbeddings(
            image, predictor, cache_dir=self.cache_dir, max_in_memory=TILES_IN_MEMORY, model_id=self.model_id
        )
        return _OpenImage(embeddings, TiledPredictor(embeddings), threading.Lock(), int(image.nbytes))

    def segment(
        self, entry: _OpenImage, coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
    ):
        """The `RegionMask` (object's bounding region, full resolution) for a prompt in image pixels,
        and how many tiles had to be encoded for it."""
        with entry.lock:
            before = entry.embeddings.encoder_calls
            try:
                region = entry.predictor.predict(coords, labels, box)
            except ValueError as exc:  # a prompt the tiled predictor cannot place (e.g. only negative points)
                raise BadRequest(f"on a tiled image: {exc}", status=422) from None
            return region, entry.embeddings.encoder_calls - before

    def prewarm(self, url: str, image: np.ndarray) -> int:
        """Open a task's large image and encode its centre tile (where a zoomed-out view invites the
        first click; any other tile is encoded by the click that needs it). Returns tiles encoded."""
        entry, _ = self.open(url, lambda: image, image=image)
        height, width = entry.embeddings.shape
        with entry.lock:
            return entry.embeddings.embed_all([entry.embeddings.grid.tile_at(height // 2, width // 2)])

    def stats(self) -> dict:
        with self._lock:
            entries = list(self._images.values())
        return {
            "images": len(entries),
            "image_bytes": sum(e.nbytes for e in entries),
            "tiles_encoded": sum(e.embeddings.encoder_calls for e in entries),
            "tiles_from_disk": sum(e.embeddings.disk_hits for e in entries),
        }


def region_to_full(region, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 0/255 mask (what the brush RLE encodes) holding the region: the one
    image-sized array a click on a tiled image allocates."""
    full = np.zeros((height, width), np.uint8)
    y0, x0, y1, x1 = region.box
    full[y0:y1, x0:x1][region.mask] = 255
    return full
