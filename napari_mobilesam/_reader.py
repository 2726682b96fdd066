"""napari reader for NIfTI volumes (`.nii`, `.nii.gz`): voxel spacing becomes the layer's scale.

Reading (axis order, spacing from the header) is the core's `mobilesam.volume.read_volume`, shared
with the CLI, so a volume looks the same in napari and in batch processing.
"""

import os
from collections.abc import Callable

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(NIFTI_SUFFIXES)


def napari_get_reader(path: str | list) -> Callable | None:
    """Return `read_nifti` when `path` (or every path of a list) is a NIfTI file, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_nifti(p) for p in paths):
        return None
    return read_nifti


def read_nifti(path: str | list) -> list[tuple]:
    """One Image layer per file: data (Z, Y, X), scale = voxel spacing, name = file name."""
    from mobilesam.volume import read_volume

    layers = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        data, spacing = read_volume(p)
        name = os.path.basename(str(p))
        for suffix in NIFTI_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        meta = {"name": name, "scale": tuple(float(s) for s in spacing)}
        layers.append((data, meta, "image"))
    return layers
