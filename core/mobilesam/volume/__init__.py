"""Volumes: slice-by-slice segmentation with cached embeddings and 3-D propagation.

- `VolumeEmbeddings(volume, predictor, ...)`: lazy per-slice embeddings with a bounded in-memory
  LRU and an optional on-disk zarr cache keyed by slice content and model identity.
- `SlicePrompt`, `propagate_object`, `segment_objects`: prompts on some slices, masks through the
  whole volume (default projection "box": see `mobilesam.volume.propagation`).
- `read_volume`, `write_labels`: TIFF stacks and NIfTI with voxel spacing.
- `model_fingerprint(model_type, checkpoint)`: model identity for cache keys.
"""

from .embeddings import VolumeEmbeddings, model_fingerprint, weights_fingerprint
from .io import read_volume, write_labels
from .propagation import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_PROJECTION,
    PROJECTIONS,
    SlicePrompt,
    propagate_object,
    segment_objects,
)

__all__ = [
    "VolumeEmbeddings",
    "model_fingerprint",
    "weights_fingerprint",
    "read_volume",
    "write_labels",
    "SlicePrompt",
    "propagate_object",
    "segment_objects",
    "PROJECTIONS",
    "DEFAULT_PROJECTION",
    "DEFAULT_IOU_THRESHOLD",
]
