"""Helpers for tests and demos that must run without the official weights.

`save_random_checkpoint` writes a random-weight model as an official-format state dict, so every
code path that loads `mobile_sam.pt` can be exercised offline.
"""

import os
from pathlib import Path

import torch

from .build_sam import build_sam


def save_random_checkpoint(
    path: str | os.PathLike, model_type: str = "vit_t", seed: int = 0, image_size: int = 1024
) -> Path:
    """Build `model_type` with seeded random weights and save its state dict to `path`."""
    torch.manual_seed(seed)
    model = build_sam(model_type, image_size=image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind
    return path


def write_dicom_series(
    folder: str | os.PathLike,
    volume,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    *,
    file_order=None,
    series_uid: str | None = None,
    first_file: int = 0,
) -> list[Path]:
    """Write a (Z, Y, X) int16 volume as an axial CT series, one file per slice (pydicom).

    spacing (dz, dy, dx) and origin (z, y, x) in mm go to ImagePositionPatient and PixelSpacing;
    stored values are `volume + 1024` with RescaleIntercept -1024, so a reader must apply the
    modality LUT to get `volume` back. file_order: which slice goes to file 0, 1, ... (default in
    order), so tests can check that slices are sorted by position, not by file name.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = list(range(len(volume))) if file_order is None else list(file_order)
    paths = []
    for index, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series_uid, "CT", index + 1
        ds.ImagePositionPatient = [origin[2], origin[1], origin[0] + z * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (np.asarray(volume[z]).astype(np.int16) + 1024).astype(np.int16).tobytes()
        path = folder / f"IM{first_file + index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
