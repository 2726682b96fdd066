"""The plugin's handle on one image: its embeddings (per slice) and prompt -> mask decoding.

No model logic lives here: encoding and decoding are the core's `SamPredictor`, volumes use the
core's `mobilesam.volume.VolumeEmbeddings` (lazy per slice, optional cache folder). A 2D image is
treated as a volume of one slice (index 0) so the widget has one code path.

`compute_embeddings` is slow (one encoder call per slice) and runs in a worker thread;
`predict` is fast (prompt encoder + mask decoder) and runs in the GUI thread. The widget never
runs both at once, since they share the predictor.
"""

from collections.abc import Callable, Iterable

import numpy as np

from mobilesam.image import to_rgb_uint8
from mobilesam.progress import raise_if_cancelled
from mobilesam.prompt import Prompt
from mobilesam.volume import VolumeEmbeddings

from ._layers import ImageInfo

ProgressFn = Callable[[int, int], None] | None


class ImageSegmenter:
    """Embeddings and decoding for a 2D image (grayscale, RGB, any dtype): one slice, index 0.

    The embedding goes through the core's `VolumeEmbeddings` as a volume of one slice, so a 2D
    image shares the volumes' content-addressed disk cache (reopening the same image encodes nothing).
    """

    is_volume = False

    def __init__(
        self,
        predictor,
        data,
        info: ImageInfo,
        cache_dir=None,
        model_id: str | None = None,
        cache_max_bytes: int | None = None,
        read_also=(),
    ) -> None:
        self.predictor = predictor
        self.info = info
        self._data = data
        self.embeddings = _PlaneEmbeddings(
            data,
            info,
            predictor,
            cache_dir=cache_dir,
            model_id=model_id,
            cache_max_bytes=cache_max_bytes,
            read_also=read_also,
        )

    def has_embedding(self, z: int) -> bool:
        # Memory only: the disk lookup hashes the whole image, which is the worker's job.
        return 0 in self.embeddings.in_memory

    def compute_embeddings(self, slices: Iterable[int], progress: ProgressFn = None, cancel=None) -> None:
        """Encode the image, or read it from the cache folder (worker thread)."""
        if self.has_embedding(0):
            return
        raise_if_cancelled(cancel, "embedding cancelled")
        if progress:
            progress(0, 1)
        self.embeddings.get(0)
        if progress:
            progress(1, 1)

    def activate(self, z: int) -> None:
        """Make slice z's embedding the predictor's current one (it must be computed)."""
        self.embeddings.set_slice(0)

    def slice_rgb(self, z: int) -> np.ndarray:
        return self.embeddings.slice_image(0)

    def predict(self, z: int, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
        """Candidate masks (C, H, W) bool and their predicted IoU (C,) for the prompt on slice z."""
        self.activate(z)
        coords, labels = prompt.point_arrays()
        masks, scores, _ = self.predictor.predict(
            point_coords=coords, point_labels=labels, box=prompt.box_array(), multimask_output=True
        )
        return np.asarray(masks, dtype=bool), np.asarray(scores, dtype=np.float32)


class _PlaneEmbeddings(VolumeEmbeddings):
    """A 2D image as a volume of one slice, read exactly as `SamPredictor.set_image` users read it
    (`to_rgb_uint8` of the whole image: its own contrast), so masks match the core predictor's."""

    def __init__(self, data, info: ImageInfo, predictor, **options) -> None:
        image = np.asarray(data)
        channel_axis = None if info.channel_axis is None else info.channel_axis % image.ndim
        self._image, self._image_channel_axis, self._rgb = image, channel_axis, None
        # value_range is unused (slice_image reads the image its own way); giving it skips the
        # volume-wide intensity estimate.
        super().__init__(
            image[np.newaxis],
            predictor,
            axis=0,
            channel_axis=None if channel_axis is None else channel_axis + 1,
            max_in_memory=1,
            value_range=(0.0, 1.0),
            **options,
        )

    def slice_image(self, z: int) -> np.ndarray:
        self._check_index(z)
        if self._rgb is None:
            self._rgb = to_rgb_uint8(self._image, channel_axis=self._image_channel_axis)
        return self._rgb


class VolumeSegmenter(ImageSegmenter):
    """A (Z, Y, X) volume: embeddings computed lazily per slice by the core's VolumeEmbeddings."""

    is_volume = True

    def __init__(
        self,
        predictor,
        data,
        info: ImageInfo,
        cache_dir=None,
        model_id: str | None = None,
        max_in_memory: int = 16,
        cache_max_bytes: int | None = None,
        read_also=(),
    ) -> None:
        """data: the layer's array as napari holds it (numpy, dask, zarr: slices are read on demand).
        model_id: identity of the weights for the disk cache; None = a fingerprint of the model's weights.
        max_in_memory: slice embeddings kept in memory (4 MB each).
        cache_max_bytes: size budget of the cache folder (least recently used slices evicted), or None.
        read_also: other cache folders whose embeddings are reused (copied) instead of encoding again."""
        self.predictor, self.info, self._data = predictor, info, data
        self.embeddings = VolumeEmbeddings(
            data,
            predictor,
            axis=0,
            cache_dir=cache_dir,
            model_id=model_id,
            max_in_memory=max_in_memory,
            cache_max_bytes=cache_max_bytes,
            read_also=read_also,
        )

    def has_embedding(self, z: int) -> bool:
        return self.embeddings.is_cached(z)

    def compute_embeddings(self, slices: Iterable[int], progress: ProgressFn = None, cancel=None) -> None:
        todo = [z for z in slices if not self.has_embedding(z)]
        for done, z in enumerate(todo):
            raise_if_cancelled(cancel, "embedding cancelled")
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
