"""Saving and loading a label image with its geometry and a JSON sidecar of how it was made.

`save_segmentation(path, labels, spacing=, origin=, sidecar=, unit="µm")` picks the format from the name:
- `.tif` / `.tiff`: ImageJ hyperstack (spacing in the X/YResolution tags and the `spacing` entry,
  the unit, origin as ImageJ's x/y/zorigin in pixels). Ids above 65535 do not fit ImageJ's 16 bits:
  those go to a plain 32-bit TIFF with the same resolution tags and the geometry in tifffile's JSON
  description.
- `.ome.tif` / `.ome.tiff`: OME-TIFF with PhysicalSizeX/Y/Z and the origin as plane positions.
- `.nii` / `.nii.gz`: NIfTI, voxel array (x, y, z) with the affine diag(spacing) + origin.
- `.zarr` / `.ome.zarr`: OME-Zarr (one resolution level) with scale and translation transforms.

Spacing and origin are given in array axis order ((dz, dy, dx) for a (Z, Y, X) volume) and in
`unit` (µm by default; mm for medical volumes); the origin is the position of voxel 0's centre.
The sidecar, when given, is written next to the label file as `<name>.mobilesam.json` with the
label image's shape, dtype and ids added under "label_image", so `load_segmentation` can tell a
sidecar that belongs to another label image. Every file is written under a temporary name and
renamed into place (a `.zarr` folder too), so a failed save leaves the previous files as they were.
"""

import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..atomic import TEMP_MARK, atomic_write, check_writable_path
from ..errors import MobileSamError
from .io import READ_ERRORS, UNITS, _nibabel_errors, _problem, _unit_name, unit_symbol

SIDECAR_SUFFIX = ".mobilesam.json"
SIDECAR_FORMAT = "mobilesam-segmentation"
SIDECAR_VERSION = 1
FORMATS = {  # name ending -> format, longest endings first so ".ome.tif" wins over ".tif"
    ".ome.tiff": "ome-tiff",
    ".ome.tif": "ome-tiff",
    ".ome.zarr": "ome-zarr",
    ".nii.gz": "nifti",
    ".tiff": "imagej-tiff",
    ".tif": "imagej-tiff",
    ".nii": "nifti",
    ".zarr": "ome-zarr",
}
Geometry = tuple[float, ...]


class SegmentationFileError(MobileSamError, ValueError):
    """A label file or sidecar that cannot be written or read, or that do not belong together."""


@dataclass
class Segmentation:
    """A loaded label image.

    labels: (Z, Y, X) or (Y, X) unsigned integer ids, 0 = background.
    spacing, origin: per array axis, in `unit`.
    sidecar: the `.mobilesam.json` next to the file (prompts, model, settings), or None.
    """

    labels: np.ndarray
    spacing: Geometry
    origin: Geometry
    sidecar: dict | None
    path: Path
    unit: str | None = None  # 'µm', 'mm', 'nm', 'm' or None (the file names none)


def segmentation_format(path: PathLike) -> str:
    """'imagej-tiff', 'ome-tiff', 'nifti' or 'ome-zarr' from the file name; ValueError otherwise."""
    name = Path(path).name.lower()
    for ending, kind in FORMATS.items():
        if name.endswith(ending):
            return kind
    raise SegmentationFileError(
        f"{path}: unknown label file type; use .tif, .ome.tif, .nii, .nii.gz, .zarr or .ome.zarr"
    )


def sidecar_path(path: PathLike) -> Path:
    """`cells.tif` -> `cells.tif.mobilesam.json` (the folder `cells.zarr` -> `cells.zarr.mobilesam.json`)."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def label_ids(labels: np.ndarray) -> list[int]:
    """Sorted non-zero ids present in `labels`."""
    ids = np.unique(np.asarray(labels))
    return [int(i) for i in ids if i != 0]


# ----------------------------------------------------------------------------------------- saving


def save_segmentation(
    path: PathLike,
    labels: np.ndarray,
    *,
    spacing: Geometry | None = None,
    origin: Geometry | None = None,
    sidecar: dict | None = None,
    unit: str | None = "µm",
) -> Path:
    """Write `labels` ((Y, X) or (Z, Y, X)) with its geometry, and `sidecar` as `<name>.mobilesam.json`.

    unit: the length unit of spacing and origin ('µm' when None: microscopy's default); 'µm', 'mm',
    'nm' or 'm' in any usual spelling. Labels are stored in the smallest unsigned type that holds
    them. Without a sidecar, a sidecar
    left by an earlier save of the same name is removed (it would describe other labels).
    Returns the label file's path. Raises SegmentationFileError naming the file and the problem.
    """
    path = Path(path)
    kind = segmentation_format(path)
    labels = _storable_labels(path, labels)
    spacing = _geometry(path, "spacing", spacing, labels.ndim, default=1.0)
    origin = _geometry(path, "origin", origin, labels.ndim, default=0.0)
    try:
        unit = unit_symbol(unit) or "µm"
    except ValueError as exc:
        raise SegmentationFileError(f"{path}: {exc}") from None
    side = sidecar_path(path)
    document = None
    if sidecar is not None:
        document = dict(sidecar)
        document.update(format=SIDECAR_FORMAT, version=SIDECAR_VERSION)
        document["label_image"] = {
            "file": path.name,
            "shape": list(labels.shape),
            "dtype": str(labels.dtype),
            "ids": label_ids(labels),
            "spacing": list(spacing),
            "origin": list(origin),
            "unit": unit,
        }
        try:
            text = json.dumps(document, indent=1)
        except (TypeError, ValueError) as exc:
            raise SegmentationFileError(f"sidecar for {path} cannot be written as JSON: {exc}") from None
    try:
        with _atomic_target(path, kind) as tmp:
            _WRITERS[kind](tmp, labels, spacing, origin, unit)
            # The sidecar is written inside the label file's transaction: if it fails, neither
            # file is replaced.
            if document is not None:
                with atomic_write(side) as side_tmp:
                    side_tmp.write_text(text, encoding="utf-8")
    except SegmentationFileError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise SegmentationFileError(f"could not save {path}: {_reason(exc)}") from None
    if document is None and side.exists():
        side.unlink()
    return path


def _storable_labels(path: Path, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise SegmentationFileError(f"{path}: labels must be 2-D or 3-D, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise SegmentationFileError(f"{path}: labels must be integers, got {labels.dtype}")
    low = int(labels.min()) if labels.size else 0
    if low < 0:
        raise SegmentationFileError(f"{path}: labels must not be negative (found {low})")
    top = int(labels.max()) if labels.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if top <= np.iinfo(dtype).max:
            return np.ascontiguousarray(labels, dtype=dtype)
    raise AssertionError("unreachable: uint64 holds every non-negative integer label")


def _geometry(path: Path, what: str, values, ndim: int, default: float) -> Geometry:
    if values is None:
        return (default,) * ndim
    values = tuple(float(v) for v in values)
    if len(values) != ndim:
        raise SegmentationFileError(
            f"{path}: {what} {values} needs one value per axis of the {ndim}-D labels"
        )
    if not all(np.isfinite(values)) or (what == "spacing" and min(values) <= 0):
        raise SegmentationFileError(f"{path}: {what} {values} must be finite (and positive for spacing)")
    return values


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied (the folder is not writable)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def _atomic_target(path: Path, kind: str) -> Iterator[Path]:
    if kind != "ome-zarr":
        with atomic_write(path) as tmp:
            yield tmp
        return
    with _atomic_folder(path) as tmp:
        yield tmp


@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """Like `atomic_write`, for a folder: write a temp folder, then swap it in (the old one is kept
    under a temp name until the new one is in place, and put back if the swap fails)."""
    if path.exists() and not path.is_dir():
        raise SegmentationFileError(f"could not save {path}: a file of that name is in the way")
    check_writable_path(sidecar_path(path))  # a file next to the folder: checks its parent folders
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{TEMP_MARK}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.{token}{path.suffix}")
    old = path.with_name(f".{path.name}.{token}.old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _write_imagej_tiff(
    path: Path, labels: np.ndarray, spacing: Geometry, origin: Geometry, unit: str
) -> None:
    import tifffile

    axes = "ZYX"[-labels.ndim :]
    dy, dx = spacing[-2:]
    if labels.dtype.itemsize <= 2:  # ImageJ hyperstacks hold 8- and 16-bit data
        metadata = {"axes": axes, "unit": UNITS[unit][0]}
        metadata.update(_imagej_origin(spacing, origin))
        if labels.ndim == 3:
            metadata["spacing"] = spacing[0]
        tifffile.imwrite(
            path, labels, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata=metadata, compression="zlib"
        )
        return
    # 32/64-bit ids: a plain TIFF with tifffile's JSON description holding the geometry.
    metadata = {"axes": axes, "spacing": list(spacing), "origin": list(origin), "unit": unit}
    tifffile.imwrite(
        path,
        labels,
        resolution=(1.0 / dx, 1.0 / dy),
        resolutionunit={"µm": "MICROMETER", "mm": "MILLIMETER", "nm": "NONE", "m": "NONE"}[unit],
        metadata=metadata,
        compression="zlib",
    )


def _imagej_origin(spacing: Geometry, origin: Geometry) -> dict:
    # ImageJ's calibrated x = (pixel - xorigin) * pixelWidth, so voxel 0 sits at -xorigin * pixelWidth.
    names = ("zorigin", "yorigin", "xorigin")[-len(spacing) :]
    return {name: -o / s for name, o, s in zip(names, origin, spacing) if o != 0}


def _write_ome_tiff(path: Path, labels: np.ndarray, spacing: Geometry, origin: Geometry, unit: str) -> None:
    import tifffile

    axes = "ZYX"[-labels.ndim :]
    metadata = {"axes": axes}
    for axis, size in zip(axes, spacing):
        metadata[f"PhysicalSize{axis}"] = size
        metadata[f"PhysicalSize{axis}Unit"] = UNITS[unit][1]
    planes = labels.shape[0] if labels.ndim == 3 else 1
    z0 = origin[0] if labels.ndim == 3 else 0.0
    metadata["Plane"] = {
        "PositionX": [origin[-1]] * planes,
        "PositionY": [origin[-2]] * planes,
        "PositionZ": [z0 + i * (spacing[0] if labels.ndim == 3 else 0.0) for i in range(planes)],
        "PositionXUnit": [UNITS[unit][1]] * planes,
        "PositionYUnit": [UNITS[unit][1]] * planes,
        "PositionZUnit": [UNITS[unit][1]] * planes,
    }
    tifffile.imwrite(path, labels, ome=True, metadata=metadata, compression="zlib")


def _write_nifti(path: Path, labels: np.ndarray, spacing: Geometry, origin: Geometry, unit: str) -> None:
    import nibabel as nib

    reverse = spacing[::-1] + (1.0,) * (3 - len(spacing))
    affine = np.diag([*reverse, 1.0])
    affine[: len(origin), 3] = origin[::-1]
    image = nib.Nifti1Image(np.ascontiguousarray(labels.transpose()), affine)
    image.header.set_xyzt_units(UNITS[unit][2] or "unknown")  # NIfTI has no nanometres
    image.header.set_intent("label")
    nib.save(image, str(path))


def _write_ome_zarr(path: Path, labels: np.ndarray, spacing: Geometry, origin: Geometry, unit: str) -> None:
    import zarr

    with warnings.catch_warnings():
        # ome-zarr 0.18 warns, on import, about its own deprecated default `scaler` argument.
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image

    axes = "zyx"[-labels.ndim :]
    group = zarr.open_group(str(path), mode="w")
    write_image(
        labels,
        group,
        scale_factors=[],  # one level: labels are not downsampled
        axes=axes,
        scale=dict(zip(axes, spacing)),
        axes_units=dict.fromkeys(axes, UNITS[unit][3]),
        name="labels",
        storage_options={"chunks": (1,) * (labels.ndim - 2) + labels.shape[-2:]},  # a chunk per slice
    )
    # ome-zarr's `scale=` always writes a zero translation: put the origin in.
    attrs = group.attrs.asdict()
    multiscales = attrs["ome"]["multiscales"] if "ome" in attrs else attrs["multiscales"]
    for transform in multiscales[0]["datasets"][0]["coordinateTransformations"]:
        if transform["type"] == "translation":
            transform["translation"] = list(origin)
    group.attrs.update(attrs)


_WRITERS = {
    "imagej-tiff": _write_imagej_tiff,
    "ome-tiff": _write_ome_tiff,
    "nifti": _write_nifti,
    "ome-zarr": _write_ome_zarr,
}


# ---------------------------------------------------------------------------------------- loading


def load_segmentation(path: PathLike) -> Segmentation:
    """Read a label file written by `save_segmentation` (or any 2-D/3-D integer label image in the
    same formats) and its `.mobilesam.json` sidecar, if there is one.

    Raises SegmentationFileError naming the file and the problem for a missing, damaged or
    truncated file, non-integer data, or a sidecar whose shape or ids do not match the labels.
    """
    path = Path(path)
    kind = segmentation_format(path)
    if not path.exists():
        raise SegmentationFileError(f"{path} does not exist")
    try:
        labels, spacing, origin, unit = _READERS[kind](path)
        labels = np.asarray(labels)
    except SegmentationFileError:
        raise
    except READ_ERRORS + (TypeError,) + _nibabel_errors() as exc:
        raise SegmentationFileError(f"could not read {path}: {_problem(exc)}") from None
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise SegmentationFileError(f"{path} holds {labels.dtype} data, not integer labels")
    if labels.ndim not in (2, 3):
        raise SegmentationFileError(
            f"{path} holds data of shape {labels.shape}, not a 2-D or 3-D label image"
        )
    sidecar = read_sidecar(path, labels)
    return Segmentation(labels, tuple(spacing), tuple(origin), sidecar, path, unit)


def read_sidecar(path: PathLike, labels: np.ndarray | None = None) -> dict | None:
    """The `.mobilesam.json` next to `path`, or None if there is none; when `labels` is given, checks
    that the sidecar describes them (shape and ids) and raises SegmentationFileError if not."""
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        document = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegmentationFileError(f"could not read sidecar {side}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("label_image"), dict):
        raise SegmentationFileError(f"sidecar {side} is not a MobileSAM segmentation sidecar")
    if labels is not None:
        _check_sidecar(side, document["label_image"], labels)
    return document


def _check_sidecar(side: Path, recorded: dict, labels: np.ndarray) -> None:
    shape = tuple(recorded.get("shape", ()))
    if shape != labels.shape:
        raise SegmentationFileError(
            f"sidecar {side} does not match its label file: it describes shape {shape}, "
            f"the labels have shape {labels.shape}"
        )
    expected, found = recorded.get("ids", []), label_ids(labels)
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise SegmentationFileError(
            f"sidecar {side} does not match its label file: ids missing from the labels "
            f"{_few(missing)}, ids not in the sidecar {_few(extra)}"
        )


def _few(ids: list[int]) -> str:
    return str(ids) if len(ids) <= 10 else f"{ids[:10]} and {len(ids) - 10} more"


def _read_any_tiff(path: Path) -> tuple[np.ndarray, Geometry, Geometry, str | None]:
    import tifffile

    from .io import tiff_geometry, tifffile_damage_raises

    with tifffile_damage_raises(), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        labels = series.asarray()
        geometry = tiff_geometry(tif, series)
    return labels, geometry.spacing, geometry.origin, geometry.unit


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry, Geometry, str | None]:
    import nibabel as nib

    from .io import nifti_geometry

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    ndim = min(data.ndim, 3)
    spacing, origin = nifti_geometry(image, ndim)
    labels = data.transpose(tuple(range(ndim))[::-1] + tuple(range(ndim, data.ndim)))
    if labels.ndim > 3 and all(n == 1 for n in labels.shape[3:]):
        labels = labels.reshape(labels.shape[:3])
    return labels, spacing, origin, _unit_name(image.header.get_xyzt_units()[0])


def _read_ome_zarr(path: Path) -> tuple[np.ndarray, Geometry, Geometry, str | None]:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises its own error types for a folder that is not a group
        raise SegmentationFileError(f"could not read {path}: not a zarr group ({exc})") from None
    attrs = group.attrs.asdict()
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if not multiscales:
        raise SegmentationFileError(f"could not read {path}: no OME-Zarr 'multiscales' metadata")
    dataset = multiscales[0]["datasets"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = np.asarray(group[dataset["path"]][...])
    spacing, origin = [1.0] * labels.ndim, [0.0] * labels.ndim
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            spacing = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            origin = [float(v) for v in transform["translation"]]
    units = [axis.get("unit") for axis in multiscales[0].get("axes", []) if isinstance(axis, dict)]
    return labels, tuple(spacing), tuple(origin), _unit_name(units[-1] if units else None)


_READERS = {
    "imagej-tiff": _read_any_tiff,
    "ome-tiff": _read_any_tiff,
    "nifti": _read_nifti,
    "ome-zarr": _read_ome_zarr,
}
