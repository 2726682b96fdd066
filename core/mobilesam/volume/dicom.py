"""Reading a DICOM series (a folder, or a list of slice files) as one volume with its voxel spacing.

`read_dicom_series(path_or_paths)` -> `DicomVolume(data (Z, Y, X), spacing (dz, dy, dx), origin)`:
- slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
  ImageOrientationPatient's row and column directions), never by file name or InstanceNumber;
- dz is the distance between neighbouring positions, (dy, dx) is PixelSpacing (row, column);
- stored values go through the Modality LUT (RescaleSlope/Intercept), so CT numbers come out in HU;
- the origin is the first slice's position along (normal, column direction, row direction).
A folder holding more than one series, slices that are not evenly spaced (a missing slice), two
slices at one position, or slices of different size or orientation raise DicomSeriesError naming
the file(s) and the problem, as do unreadable or truncated files.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import MobileSamError

# Neighbouring slices may differ in distance by this fraction of the usual step (scanner rounding);
# more than that is a gap or an overlap, not a volume.
SPACING_TOLERANCE = 0.1


class DicomSeriesError(MobileSamError, ValueError):
    """Files that do not form one readable, evenly spaced DICOM series."""


@dataclass
class DicomVolume:
    data: np.ndarray  # (Z, Y, X)
    spacing: tuple[float, float, float]  # (dz, dy, dx), millimetres
    origin: tuple[float, float, float]
    files: list[Path]  # in slice order


@dataclass
class _Slice:
    path: Path
    dataset: object
    position: float


def is_dicom_file(path: PathLike) -> bool:
    """True for a file starting with the DICOM preamble ('DICM' at byte 128) or named *.dcm."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.is_file()
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The slice files of a folder (every DICOM file directly in it) or of an explicit list."""
    if isinstance(path_or_paths, (str, Path)) or not isinstance(path_or_paths, Sequence):
        path = Path(path_or_paths)
        if not path.exists():
            raise DicomSeriesError(f"{path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and is_dicom_file(p))
            if not files:
                raise DicomSeriesError(f"folder {path} holds no DICOM files")
            return files
        return [path]
    return [Path(p) for p in path_or_paths]


def read_dicom_series(path_or_paths: PathLike | Sequence[PathLike]) -> DicomVolume:
    """Read one DICOM series (folder or list of files) as a (Z, Y, X) volume; see the module doc.

    In a folder, DICOM files that are not image slices (DICOMDIR, reports) are skipped; in a list
    of files they are an error."""
    files = dicom_files(path_or_paths)
    in_folder = isinstance(path_or_paths, (str, Path)) and Path(path_or_paths).is_dir()
    read = [_read_slice(p, skip_non_images=in_folder) for p in files]
    read = [item for item in read if item is not None]
    if not read:
        raise DicomSeriesError(f"folder {path_or_paths} holds no DICOM image slices")
    slices = _sorted_slices(read)
    if len(slices) == 1:
        dz = float(getattr(slices[0].dataset, "SliceThickness", 1.0) or 1.0)
    else:
        dz = _even_step(slices)
    first = slices[0].dataset
    dy, dx = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
    data = np.stack([_pixels(s) for s in slices])
    rows, cols = _directions(slices[0])
    position = np.asarray([float(v) for v in first.ImagePositionPatient])
    normal = np.cross(rows, cols)
    origin = (float(position @ normal), float(position @ cols), float(position @ rows))
    return DicomVolume(data, (dz, dy, dx), origin, [s.path for s in slices])


def _read_slice(path: Path, skip_non_images: bool) -> tuple | None:
    """(path, dataset) of one slice file; None for a non-image DICOM file when `skip_non_images`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DicomSeriesError(f"could not read DICOM file {path}: {exc or type(exc).__name__}") from None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise DicomSeriesError(
            f"DICOM file {path} is a multi-frame (enhanced) image; only series of one file per slice are read"
        )
    for keyword in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient"):
        if keyword not in dataset:
            if skip_non_images and keyword == "PixelData":
                return None
            raise DicomSeriesError(
                f"DICOM file {path} has no {keyword}: it is not an image slice of a volume"
            )
    return path, dataset


def _directions(item: _Slice) -> tuple[np.ndarray, np.ndarray]:
    orientation = np.asarray([float(v) for v in item.dataset.ImageOrientationPatient])
    return orientation[:3], orientation[3:]


def _sorted_slices(headers: list) -> list[_Slice]:
    series = {}
    for path, dataset in headers:
        series.setdefault(str(getattr(dataset, "SeriesInstanceUID", "")), []).append(path)
    if len(series) > 1:
        counts = ", ".join(f"{uid or '(no UID)'}: {len(paths)} files" for uid, paths in series.items())
        folder = headers[0][0].parent
        raise DicomSeriesError(
            f"{folder} mixes {len(series)} DICOM series ({counts}); open the files of one series"
        )
    _, reference = headers[0]
    orientation = [float(v) for v in reference.ImageOrientationPatient]
    size = (reference.Rows, reference.Columns)
    for path, dataset in headers[1:]:
        if (dataset.Rows, dataset.Columns) != size:
            raise DicomSeriesError(
                f"DICOM file {path} is {dataset.Rows}x{dataset.Columns} pixels, the series "
                f"{size[0]}x{size[1]}"
            )
        if not np.allclose([float(v) for v in dataset.ImageOrientationPatient], orientation, atol=1e-4):
            raise DicomSeriesError(f"DICOM file {path} has another ImageOrientationPatient than the series")
    normal = np.cross(orientation[:3], orientation[3:])
    slices = [
        _Slice(path, dataset, float(np.asarray([float(v) for v in dataset.ImagePositionPatient]) @ normal))
        for path, dataset in headers
    ]
    return sorted(slices, key=lambda s: s.position)


def _even_step(slices: list[_Slice]) -> float:
    positions = np.asarray([s.position for s in slices])
    steps = np.diff(positions)
    step = float(np.median(steps))
    for i, gap in enumerate(steps):
        a, b = slices[i], slices[i + 1]
        if gap < 1e-6 * max(step, 1.0):
            raise DicomSeriesError(
                f"DICOM files {a.path} and {b.path} are slices at the same position {a.position:g}"
            )
        if abs(gap - step) > SPACING_TOLERANCE * step:
            missing = round(gap / step) - 1
            what = f"{missing} missing slice(s)" if missing >= 1 else "uneven spacing"
            raise DicomSeriesError(
                f"DICOM series in {a.path.parent} has {what}: {a.path.name} at {a.position:g} and {b.path.name} at "
                f"{b.position:g} are {gap:g} apart, the other slices {step:g}"
            )
    return step


def _pixels(item: _Slice) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    dataset = item.dataset
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # pydicom raises several types (missing decoder, short pixel data)
        raise DicomSeriesError(f"could not read the pixels of DICOM file {item.path}: {exc}") from None
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return stored
    values = apply_modality_lut(stored, dataset)
    if slope.is_integer() and intercept.is_integer():
        return values.astype(np.int32)  # e.g. CT numbers in HU stay integers
    return values.astype(np.float32)
