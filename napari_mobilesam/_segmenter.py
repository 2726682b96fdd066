"""The plugin's handle on one image: its embeddings (per slice) and prompt -> mask decoding.

No model logic lives here: encoding and decoding are the core's `SamPredictor`, volumes use the
core's `mobilesam.volume.VolumeEmbeddings` (lazy per slice, optional cache folder). A 2D image is
treated as a volume of one slice (index 0) so the widget has one code path.

`compute_embeddings` is slow (one encoder call per slice) and runs in a worker thread;
`predict` is fast (prompt encoder + mask decoder) and runs in the GUI thread. The widget never
runs both at once, since they share the predictor.
"""

from typing import Callable, Iterable, Optional

import numpy as np

from mobilesam.errors import Cancelled
from mobilesam.image import to_rgb_uint8

from ._layers import ImageInfo
from ._prompts import PlanePrompt

ProgressFn = Optional[Callable[[int, int], None]]


class ImageSegmenter:
    """Embeddings and decoding for a 2D image (grayscale, RGB, any dtype): one slice, index 0."""

    is_volume = False

    def __init__(self, predictor, data, info: ImageInfo) -> None:
        self.predictor = predictor
        self.info = info
        self._data = data
        self._state = None  # mobilesam.EmbeddingState once encoded

    def has_embedding(self, z: int) -> bool:
        return self._state is not None

    def compute_embeddings(self, slices: Iterable[int], progress: ProgressFn = None, cancel=None) -> None:
        """Encode the image (worker thread)."""
        if self._state is not None:
            return
        if cancel is not None and cancel.is_set():
            raise Cancelled("embedding cancelled")
        if progress:
            progress(0, 1)
        self.predictor.set_image(self.slice_rgb(0))
        self._state = self.predictor.get_embedding_state()
        if progress:
            progress(1, 1)

    def activate(self, z: int) -> None:
        """Make slice z's embedding the predictor's current one (it must be computed)."""
        self.predictor.set_embedding(self._state)

    def slice_rgb(self, z: int) -> np.ndarray:
        return to_rgb_uint8(np.asarray(self._data), channel_axis=self.info.channel_axis)

    def predict(self, z: int, prompt: PlanePrompt) -> tuple[np.ndarray, np.ndarray]:
        """Candidate masks (C, H, W) bool and their predicted IoU (C,) for the prompt on slice z."""
        self.activate(z)
        coords, labels = prompt.point_arrays()
        masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels,
                                                  box=prompt.box_array(), multimask_output=True)
        return np.asarray(masks, dtype=bool), np.asarray(scores, dtype=np.float32)


class VolumeSegmenter(ImageSegmenter):
    """A (Z, Y, X) volume: embeddings computed lazily per slice by the core's VolumeEmbeddings."""

    is_volume = True

    def __init__(self, predictor, data, info: ImageInfo, cache_dir=None, model_id: Optional[str] = None,
                 max_in_memory: int = 16, cache_max_bytes: Optional[int] = None) -> None:
        """data: the layer's array as napari holds it (numpy, dask, zarr: slices are read on demand).
        model_id: identity of the weights for the disk cache; None = a fingerprint of the model's weights.
        max_in_memory: slice embeddings kept in memory (4 MB each).
        cache_max_bytes: size budget of the cache folder (least recently used slices evicted), or None."""
        from mobilesam.volume import VolumeEmbeddings

        super().__init__(predictor, data, info)
        self.embeddings = VolumeEmbeddings(data, predictor, axis=0, cache_dir=cache_dir, model_id=model_id,
                                           max_in_memory=max_in_memory, cache_max_bytes=cache_max_bytes)

    def has_embedding(self, z: int) -> bool:
        return self.embeddings.is_cached(z)

    def compute_embeddings(self, slices: Iterable[int], progress: ProgressFn = None, cancel=None) -> None:
        todo = [z for z in slices if not self.has_embedding(z)]
        for done, z in enumerate(todo):
            if cancel is not None and cancel.is_set():
                raise Cancelled("embedding cancelled")
            if progress:
                progress(done, len(todo))
            self.embeddings.get(z)
        if progress:
            progress(len(todo), len(todo))

    def embed_all(self, progress: ProgressFn = None, cancel=None) -> None:
        self.embeddings.embed_all(progress=progress, cancel=cancel)

    def activate(self, z: int) -> None:
        self.embeddings.set_slice(z)

    def slice_rgb(self, z: int) -> np.ndarray:
        return self.embeddings.slice_image(z)
