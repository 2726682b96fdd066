"""napari readers that keep geometry: voxel spacing becomes the layer's scale, the origin its translate.

Offered next to napari's own readers (napari asks which to use, or uses the user's choice):
- TIFF / OME-TIFF of any axes: spacing and origin from OME-XML or ImageJ metadata; a trailing RGB(A)
  sample axis opens as an RGB image, a channel axis as one layer per channel;
- NIfTI (.nii, .nii.gz);
- DICOM series: a folder of slices, several selected slice files, or a single .dcm;
- a label file (TIFF, OME-TIFF, NIfTI, OME-Zarr) with a `<name>.mobilesam.json` sidecar opens as a
  Labels layer with the sidecar (prompts, model, settings) in `layer.metadata["mobilesam"]`, so the
  dock can resume the session.
Parsing is the core's (`mobilesam.volume.read_image`, `load_segmentation`), shared with the CLI.
"""

import itertools
import os
from collections.abc import Callable
from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm",)
ZARR_SUFFIXES = (".zarr",)


def napari_get_reader(path: str | list) -> Callable | None:
    """`read` when the plugin can open `path` (a file, a folder, or a list of files), else None."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return None
    return read if all(_readable(Path(p)) for p in paths) else None


def _readable(path: Path) -> bool:
    name = path.name.lower()
    if _has_sidecar(path):
        return True
    if path.is_dir():
        return not name.endswith(ZARR_SUFFIXES) and _holds_dicom(path)
    return name.endswith(TIFF_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES)


def _has_sidecar(path: Path) -> bool:
    from mobilesam.volume.segmentation_io import sidecar_path

    return sidecar_path(path).is_file()


def _holds_dicom(folder: Path) -> bool:
    """A DICOM file among the folder's first 64 entries (napari asks every reader about every
    folder opened: a folder of 10,000 PNGs must not be read file by file)."""
    from mobilesam.volume.dicom import is_dicom_file

    try:
        return any(p.is_file() and is_dicom_file(p) for p in itertools.islice(folder.iterdir(), 64))
    except OSError:
        return False


def read(path: str | list) -> list[tuple]:
    """Layer data tuples for `path`: one Labels layer per file with a sidecar, one DICOM volume for
    a list of slice files, else one image (or one per channel) per file."""
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if len(paths) > 1 and all(p.name.lower().endswith(DICOM_SUFFIXES) for p in paths):
        return [_image_layer(paths, _common_name(paths))]
    layers = []
    for p in paths:
        layers.append(_labels_layer(p) if _has_sidecar(p) else _image_layer(p, _stem(p)))
    return layers


# Kept for callers of the NIfTI-only reader this module used to be.
read_nifti = read


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (
        (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz") + TIFF_SUFFIXES + (".nii", ".dcm", ".zarr")
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _common_name(paths: list[Path]) -> str:
    return paths[0].parent.name or _stem(paths[0])


def _image_layer(path, name: str) -> tuple:
    from mobilesam.volume.io import read_image

    data, geometry = read_image(path)
    axes, scale, translate = geometry.axes, list(geometry.spacing), list(geometry.origin)
    meta = {"name": name, "metadata": {"axes": axes, "unit": geometry.unit}}
    if axes.endswith("S") and data.shape[-1] in (3, 4):
        meta["rgb"] = True
        axes, scale, translate = axes[:-1], scale[:-1], translate[:-1]
    if "C" in axes:
        channel = axes.index("C")
        meta["channel_axis"] = channel
        del scale[channel], translate[channel]
        axes = axes.replace("C", "")
    meta.update(scale=tuple(scale), translate=tuple(translate))
    if set(axes) <= set("ZYX"):  # a length unit fits every axis (not time, not a plain index)
        meta.update(_units(geometry.unit))
    return data, meta, "image"


def _units(unit: str | None) -> dict:
    """napari's `units` for a file's length unit ('µm' -> 'micrometer'), or nothing (pixels)."""
    from mobilesam.volume.io import UNITS, unit_symbol

    try:
        symbol = unit_symbol(unit)
    except ValueError:
        return {}  # a unit we do not know: leave napari's default
    return {"units": UNITS[symbol][3]} if symbol else {}


def _labels_layer(path: Path) -> tuple:
    from mobilesam.volume import load_segmentation

    segmentation = load_segmentation(path)
    meta = {
        "name": _stem(path),
        "scale": segmentation.spacing,
        "translate": segmentation.origin,
        "metadata": {"mobilesam": segmentation.sidecar},
        **_units(segmentation.unit),
    }
    return segmentation.labels, meta, "labels"
