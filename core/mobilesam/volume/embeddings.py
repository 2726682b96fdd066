"""`VolumeEmbeddings`: lazy, cached per-slice image embeddings of a 3-D volume.

A volume (Z, Y, X) or (Z, Y, X, C) may be a numpy array, a memmap, a dask or zarr array: anything
with `shape`, `dtype` and numpy-style indexing. Only the slices that are asked for are read, so a
volume larger than memory works. Each slice is encoded once by the predictor's image encoder the
first time it is needed; the embedding (a `mobilesam.EmbeddingState`, 4 MB for the (1, 256, 64, 64)
features) is kept in a bounded least-recently-used cache in memory and, with `cache_dir`, in a zarr
store on disk, so reopening the same data with the same model encodes nothing.

Disk cache keys. The store holds one group per model identity (`model_id`, e.g.
`mobilesam.serving.model_identity(model_type="vit_t", checkpoint="mobile_sam.pt")` = model type +
sha256 of the checkpoint file + the encoder input size) and, inside it, one array per slice named by the sha256 of the exact
(H, W, 3) uint8 image fed to the encoder. The image hash covers the slice data *and* the intensity
normalisation and channel handling, so changed data, a changed contrast range or a changed model
can never be served a stale embedding; an array is only read back if it was completely written and
its checksum matches (a damaged entry is recomputed and rewritten, with a warning naming the slice).
The store is the core's `mobilesam.serving.disk_store.SliceEmbeddingStore`.

Intensity normalisation goes through `mobilesam.image.to_rgb_uint8` with one (low, high) range
computed by `mobilesam.image.intensity_range` from a sample of slices, so contrast is the same
on every slice (per-slice stretching would make the object look different from slice to slice).
uint8 volumes are passed through unchanged, exactly as 2-D uint8 images are.
"""

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import MobileSamError
from ..image import intensity_range, to_rgb_uint8
from ..predictor import EmbeddingState
from ..progress import ProgressCallback, raise_if_cancelled
from ..serving.disk_store import SliceEmbeddingStore
from ..serving.identity import model_identity
from ..serving.memory_cache import EmbeddingCache
from .io import READ_ERRORS

INTENSITY_SAMPLE_SLICES = 16  # slices read to estimate the volume's intensity range
INTENSITY_SAMPLE_VALUES = 2_000_000


class VolumeReadError(MobileSamError):
    """A slice of the volume could not be read (a damaged file)."""


def model_fingerprint(model_type: str, checkpoint_path: str | os.PathLike) -> str:
    """Alias of `mobilesam.serving.model_identity(model_type=..., checkpoint=...)`, kept for callers
    of the volume API: model type + sha256 of the checkpoint file + encoder input size."""
    return model_identity(model_type=model_type, checkpoint=checkpoint_path)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Alias of `mobilesam.serving.model_identity(model)`: identity of an in-memory model from its weights.

    Used when no `model_id` is given, so a cache is never shared by models with other weights.
    """
    return model_identity(model)


class VolumeEmbeddings:
    """Per-slice embeddings of a volume, computed on first use and cached.

    volume: array-like (Z, Y, X) or (Z, Y, X, C) (any axis order: see `axis`, `channel_axis`).
    predictor: a `mobilesam.SamPredictor` (or anything with set_image / get_embedding_state /
        set_embedding / predict); encoding a slice replaces the predictor's current image.
    axis: the axis slices are taken along (default 0). The other spatial axes, in their order,
        are the slice's rows and columns.
    channel_axis: axis of channels for 4-D volumes (default: the last axis).
    cache_dir: folder of an on-disk zarr store of embeddings (created if missing), or None.
    max_in_memory: how many slice embeddings the in-memory LRU keeps (each 4 MB).
    model_id: identity of the model for the disk cache keys, e.g. `model_identity(...)`;
        when None and `cache_dir` is set, it is computed from the model's weights.
    value_range: (low, high) intensities mapped to 0..255; default: computed once per volume.
    cache_max_bytes: size budget of the whole `cache_dir` store (all models); after each save the
        least recently used slice embeddings are deleted until it fits. None: no limit.
    read_also: other cache folders (e.g. the default one, when the user picks another) searched
        before encoding, read-only: an embedding found there is copied into `cache_dir`, so work
        already done under another folder is never repeated.

    The data are assumed not to change while this object is alive; make a new one if they do
    (the disk cache, keyed by the slice content, stays valid for unchanged slices).
    Counters `encoder_calls`, `disk_hits` and `memory_hits` tell where embeddings came from.
    """

    def __init__(
        self,
        volume,
        predictor,
        axis: int = 0,
        channel_axis: int | None = None,
        cache_dir: str | Path | None = None,
        max_in_memory: int = 16,
        model_id: str | None = None,
        value_range: tuple[float, float] | None = None,
        cache_max_bytes: int | None = None,
        read_also: Sequence[str | Path] = (),
    ) -> None:
        shape = tuple(int(s) for s in getattr(volume, "shape", ()))
        if len(shape) not in (3, 4):
            raise ValueError(f"a volume must be (Z, Y, X) or (Z, Y, X, C); got shape {shape}")
        ndim = len(shape)
        self.axis = _normalize_axis(axis, ndim, "axis")
        self.channel_axis = None
        if ndim == 4:
            self.channel_axis = _normalize_axis(
                -1 if channel_axis is None else channel_axis, ndim, "channel_axis"
            )
            if self.channel_axis == self.axis:
                raise ValueError(f"axis and channel_axis are both {axis}; slices need a different axis")
        elif channel_axis is not None:
            raise ValueError(
                f"channel_axis={channel_axis} given, but the volume {shape} is 3-D (no channels)"
            )
        if max_in_memory < 1:
            raise ValueError(f"max_in_memory must be at least 1, got {max_in_memory}")
        if min(shape) == 0:
            raise ValueError(f"volume of shape {shape} is empty")

        self.volume = volume
        self.predictor = predictor
        self.max_in_memory = int(max_in_memory)
        self.volume_shape = shape
        # Spatial axes in volume order; the slicing axis is one of them.
        self.spatial_axes = tuple(a for a in range(ndim) if a != self.channel_axis)
        self.slice_axes = tuple(a for a in self.spatial_axes if a != self.axis)
        self._slice_channel_axis = (
            None
            if self.channel_axis is None
            else [a for a in range(ndim) if a != self.axis].index(self.channel_axis)
        )
        self.value_range = value_range if value_range is not None else self._volume_intensity_range()

        self.encoder_calls = self.disk_hits = self.memory_hits = 0
        # The core's memory LRU (`mobilesam.serving.EmbeddingCache`), by slice: max_in_memory slices.
        self._memory = EmbeddingCache(max_items=self.max_in_memory, max_bytes=None)
        self._hashes: dict[int, str] = {}
        self._lock = threading.RLock()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_id = model_id
        self._store = None
        if self.cache_dir is not None:
            if self.model_id is None:
                self.model_id = weights_fingerprint(predictor.model)
            self._store = SliceEmbeddingStore(self.cache_dir, self._model_key(), cache_max_bytes)
        # Only folders that already hold this model's embeddings: a lookup never creates anything.
        self._other_stores = [
            SliceEmbeddingStore(Path(folder), self._model_key())
            for folder in read_also
            if self._store is not None
            and Path(folder).resolve() != self.cache_dir.resolve()
            and (Path(folder) / self._model_key()).is_dir()
        ]

    # ---- geometry -------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        return self.volume_shape[self.axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(H, W) of one slice: the sizes of the other two spatial axes, in volume order."""
        return tuple(self.volume_shape[a] for a in self.slice_axes)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Shape of the volume without its channel axis: the shape of propagation results."""
        return tuple(self.volume_shape[a] for a in self.spatial_axes)

    @property
    def slicing_axis_in_result(self) -> int:
        """Position of the slicing axis in `spatial_shape` (0 for (Z, Y, X) sliced along Z)."""
        return self.spatial_axes.index(self.axis)

    # ---- slices ---------------------------------------------------------------------------
    def read_slice(self, z: int) -> np.ndarray:
        """Raw data of slice z as numpy: (H, W) or (H, W, C)/(C, H, W) as stored; reads only that slice."""
        z = self._check_index(z)
        index = [slice(None)] * len(self.volume_shape)
        index[self.axis] = z
        try:
            return np.asarray(self.volume[tuple(index)])
        except READ_ERRORS as exc:  # a file damaged after it was opened (a corrupt compressed page)
            raise VolumeReadError(
                f"could not read slice {z} (axis {self.axis}) of the volume: {exc}"
            ) from None

    def slice_image(self, z: int) -> np.ndarray:
        """Slice z as the (H, W, 3) uint8 RGB image the encoder sees (volume-wide contrast)."""
        return to_rgb_uint8(
            self.read_slice(z), channel_axis=self._slice_channel_axis, value_range=self.value_range
        )

    # ---- embeddings -----------------------------------------------------------------------
    def get(self, z: int) -> EmbeddingState:
        """The embedding of slice z: from memory, else from the disk cache, else encoded now."""
        z = self._check_index(z)
        with self._lock:
            state = self._memory.get(z)
            if state is not None:
                self.memory_hits += 1
                return state
            state = self._load_or_encode(z)
            self._remember(z, state)
            return state

    def set_slice(self, z: int) -> None:
        """Make slice z the predictor's current image (via `predictor.set_embedding`)."""
        with self._lock:
            self.predictor.set_embedding(self.get(z))

    def is_cached(self, z: int) -> bool:
        """Whether slice z's embedding is available without running the encoder."""
        z = self._check_index(z)
        with self._lock:
            if z in self._memory:
                return True
            if self._store is None:
                return False
            digest = self._slice_hash(z)
            return any(store.contains(digest) for store in (self._store, *self._other_stores))

    def embed_all(
        self, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> int:
        """Compute every slice's embedding not cached yet; returns how many were encoded.

        With `cache_dir` they all land on disk; without it only the last `max_in_memory` stay.
        progress(done, total) is called after each slice; setting `cancel` raises `Cancelled`
        (slices finished so far stay cached).
        """
        total = self.num_slices
        before = self.encoder_calls
        for z in range(total):
            raise_if_cancelled(cancel, f"embedding stopped after {z} of {total} slices")
            with self._lock:
                if z not in self._memory:
                    self._remember(z, self._load_or_encode(z))
            if progress is not None:
                progress(z + 1, total)
        return self.encoder_calls - before

    @property
    def in_memory(self) -> tuple[int, ...]:
        """Slices whose embeddings are in the in-memory LRU, oldest first."""
        return self._memory.keys()

    def __repr__(self) -> str:
        return (
            f"VolumeEmbeddings(shape={self.volume_shape}, axis={self.axis}, slices={self.num_slices}, "
            f"in_memory={len(self._memory)}/{self.max_in_memory}, cache_dir={self.cache_dir})"
        )

    # ---- internals ------------------------------------------------------------------------
    def _check_index(self, z) -> int:
        if isinstance(z, (bool, np.bool_)) or not isinstance(z, (int, np.integer)):
            raise TypeError(f"slice index must be an integer, got {z!r}")
        z = int(z)
        if not 0 <= z < self.num_slices:
            raise IndexError(
                f"slice {z} is outside the volume (slices 0..{self.num_slices - 1} along axis {self.axis})"
            )
        return z

    def _volume_intensity_range(self) -> tuple[float, float] | None:
        dtype = np.dtype(self.volume.dtype)
        if dtype in (np.uint8, np.bool_):
            return None  # passed through as 2-D uint8 images are
        n = self.num_slices
        picks = np.unique(np.linspace(0, n - 1, min(n, INTENSITY_SAMPLE_SLICES)).round().astype(int))
        per_slice = INTENSITY_SAMPLE_VALUES // len(picks)
        samples = []
        for z in picks:
            flat = self.read_slice(int(z)).reshape(-1)
            samples.append(flat[:: flat.size // per_slice + 1])
        return intensity_range(np.concatenate(samples))

    def _slice_hash(self, z: int, image: np.ndarray | None = None) -> str:
        digest = self._hashes.get(z)
        if digest is None:
            image = self.slice_image(z) if image is None else image
            digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
            self._hashes[z] = digest
        return digest

    def _load_or_encode(self, z: int) -> EmbeddingState:
        image = None
        if self._store is not None:
            image = self.slice_image(z)
            state = self._store.load(self._slice_hash(z, image), where=f"slice {z}")
            if state is not None:
                self.disk_hits += 1
                return state
            for other in self._other_stores:
                state = other.load(self._slice_hash(z, image), where=f"slice {z}")
                if state is not None:
                    self.disk_hits += 1
                    self._store.save(self._slice_hash(z, image), state)
                    return state
        if image is None:
            image = self.slice_image(z)
        self.predictor.set_image(image)
        self.encoder_calls += 1
        state = self.predictor.get_embedding_state()
        if self._store is not None:
            self._store.save(self._slice_hash(z, image), state)
        return state

    def _remember(self, z: int, state: EmbeddingState) -> None:
        self._memory.put(z, state)

    def _model_key(self) -> str:
        model = getattr(self.predictor, "model", None)
        img_size = getattr(getattr(model, "image_encoder", None), "img_size", None)
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", str(self.model_id))
        if not img_size:
            return key
        # The encoder actually used decides the input size (an id made from a checkpoint file alone
        # assumes 1024): replace the id's own input-size suffix, if any.
        return re.sub(r"-in\d+$", "", key) + f"-in{img_size}"


def _normalize_axis(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name}={axis} is out of range for a {ndim}-D volume")
    return int(axis) % ndim
