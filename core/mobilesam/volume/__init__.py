"""Volumes: slice-by-slice segmentation with cached embeddings and 3-D propagation.

- `VolumeEmbeddings(volume, predictor, ...)`: lazy per-slice embeddings with a bounded in-memory
  LRU and an optional on-disk zarr cache keyed by slice content and model identity.
- `SlicePrompt`, `propagate_object`, `segment_objects`: prompts on some slices, masks through the
  whole volume (default projection "box": see `mobilesam.volume.propagation`).
- `read_volume`, `write_labels`: TIFF stacks, NIfTI and DICOM folders with voxel spacing;
  `read_image`: any TIFF/OME-TIFF, NIfTI or DICOM series with its axes, spacing, origin and unit;
  `read_dicom_series`: a DICOM series ordered by ImagePositionPatient.
- `save_segmentation`, `load_segmentation`: a label image with its geometry (ImageJ TIFF, OME-TIFF,
  NIfTI, OME-Zarr) and a `.mobilesam.json` sidecar of prompts and settings.
- `model_fingerprint(model_type, checkpoint)`: model identity for cache keys.
"""

from .dicom import DicomSeriesError, read_dicom_series
from .embeddings import VolumeEmbeddings, model_fingerprint, weights_fingerprint
from .io import ImageGeometry, read_image, read_volume, write_labels
from .propagation import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_PROJECTION,
    PROJECTIONS,
    SlicePrompt,
    propagate_object,
    segment_objects,
)
from .segmentation_io import Segmentation, SegmentationFileError, load_segmentation, save_segmentation

__all__ = [
    "VolumeEmbeddings",
    "model_fingerprint",
    "weights_fingerprint",
    "read_volume",
    "read_image",
    "ImageGeometry",
    "read_dicom_series",
    "DicomSeriesError",
    "write_labels",
    "Segmentation",
    "SegmentationFileError",
    "save_segmentation",
    "load_segmentation",
    "SlicePrompt",
    "propagate_object",
    "segment_objects",
    "PROJECTIONS",
    "DEFAULT_PROJECTION",
    "DEFAULT_IOU_THRESHOLD",
]
