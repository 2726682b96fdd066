"""Reading volumes and writing label volumes, keeping voxel spacing.

`read_volume(path)` returns (array, spacing) with the array in (Z, Y, X) order (channels, if any,
last for NIfTI, as stored for TIFF) and spacing (dz, dy, dx) in the file's units:
- TIFF stacks through tifffile: memory-mapped when the file allows it, else read lazily through
  tifffile's zarr store, so a stack larger than memory is never loaded whole. Spacing from the
  ImageJ `spacing` entry (z) and the X/YResolution tags.
- NIfTI (.nii, .nii.gz) through nibabel: the voxel array (i, j, k) is returned as a lazy dask
  array transposed to (k, j, i) = (Z, Y, X), and the zooms reversed to (dz, dy, dx).
`read_image(path)` returns (array, ImageGeometry) for any image the napari reader opens: TIFF and
OME-TIFF of any axes (spacing and origin from OME-XML or ImageJ metadata), NIfTI, and DICOM series
(a folder, a list of slice files, or one .dcm file; see `mobilesam.volume.dicom`).
`write_labels(path, labels, spacing)` writes a label volume atomically as TIFF (ImageJ-style
spacing metadata) or NIfTI; `mobilesam.volume.segmentation_io` adds OME-TIFF, OME-Zarr, the origin
and a sidecar.
"""

import logging
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..atomic import atomic_write

TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Spacing = tuple[float, float, float]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_volume(path: PathLike) -> tuple[object, Spacing]:
    """Open a TIFF stack or NIfTI file lazily, or a DICOM series folder:
    (array-like in (Z, Y, X[, C]) order, (dz, dy, dx))."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume {path} does not exist")
    if path.is_dir():  # a folder of DICOM slices (read whole: series are small next to TIFF stacks)
        from .dicom import read_dicom_series

        series = read_dicom_series(path)
        return series.data, series.spacing
    suffix = _suffix(path)
    if suffix not in TIFF_SUFFIXES + NIFTI_SUFFIXES:
        raise ValueError(
            f"volume {path} must be a TIFF stack (.tif, .tiff), NIfTI (.nii, .nii.gz) or a folder of DICOM slices"
        )
    try:
        if suffix in TIFF_SUFFIXES:
            data, geometry = _read_tiff(path, require_stack=True)
        else:
            data, geometry = _read_nifti(path)
        # Data are read lazily; reading the last slice now finds a truncated or damaged file
        # (for .nii.gz this decompresses the file once) before any work is done.
        np.asarray(data[-1])
    except READ_ERRORS + _nibabel_errors() as exc:
        raise ValueError(f"could not read volume {path}: {_problem(exc)}") from None
    return data, geometry.zyx_spacing()


def read_image(path: PathLike | Sequence[PathLike]) -> tuple[object, "ImageGeometry"]:
    """Open a TIFF/OME-TIFF, NIfTI or DICOM series (folder, file list or one .dcm): (array, geometry).

    TIFF keeps its axes as tifffile names them (e.g. "TZCYX", "YXS"); NIfTI and DICOM are (Z, Y, X).
    Raises ValueError naming the file and the problem for a missing, damaged or truncated file.
    """
    from .dicom import DicomSeriesError, is_dicom_file, read_dicom_series

    if not isinstance(path, (str, Path)):
        paths = [Path(p) for p in path]
        if len(paths) > 1:  # several files: the slices of one DICOM series
            volume = read_dicom_series(paths)
            return volume.data, ImageGeometry("ZYX", volume.spacing, volume.origin, "mm")
        path = paths[0]
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image {path} does not exist")
    suffix = _suffix(path)
    try:
        if path.is_dir() or is_dicom_file(path):
            volume = read_dicom_series(path)
            if path.is_dir():
                return volume.data, ImageGeometry("ZYX", volume.spacing, volume.origin, "mm")
            return volume.data[0], ImageGeometry("YX", volume.spacing[1:], volume.origin[1:], "mm")
        if suffix in TIFF_SUFFIXES:
            data, geometry = _read_tiff(path, require_stack=False)
        elif suffix in NIFTI_SUFFIXES:
            data, geometry = _read_nifti(path)
        else:
            raise ValueError("not a TIFF, NIfTI or DICOM file")
        np.asarray(data[-1])  # find a truncated file now (see read_volume)
    except DicomSeriesError:
        raise
    except READ_ERRORS + _nibabel_errors() as exc:
        raise ValueError(f"could not read image {path}: {_problem(exc)}") from None
    return data, geometry


# What tifffile, nibabel, zlib and gzip raise for a damaged file (nibabel's own errors are added
# by `_nibabel_errors` when it is installed).
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, struct.error, zlib.error)


def _nibabel_errors() -> tuple:
    try:
        from nibabel.filebasedimages import ImageFileError
    except ImportError:
        return ()
    return (ImageFileError,)


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (EOFError, zlib.error, struct.error)) or "not enough data" in text:
        return f"the file is truncated or damaged ({text})"
    return text


class _ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def tifffile_damage_raises() -> Iterator[None]:
    """Raise ValueError for damage that tifffile only logs: it skips a tag whose value lies past the
    end of a truncated file and goes on, which would silently drop the spacing (or the data)."""
    logger = logging.getLogger("tifffile")
    records = _ErrorRecords()
    logger.addHandler(records)
    try:
        yield
    finally:
        logger.removeHandler(records)
    if records.messages:
        raise ValueError(f"the file is truncated or damaged ({records.messages[0]})")


def _read_tiff(path: Path, require_stack: bool) -> tuple[object, "ImageGeometry"]:
    import tifffile

    with tifffile_damage_raises(), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        geometry = tiff_geometry(tif, series)
        # Trailing S: interleaved samples (RGB) of one 2-D image. A leading S is how tifffile reads a
        # plain 3- or 4-plane stack written without metadata, so that counts as slices.
        planes = series.ndim - series.axes.endswith("S")
        if require_stack and planes < 3:
            raise ValueError(f"it holds one 2-D image of shape {series.shape}, not a stack")
    try:
        data = tifffile.memmap(path)  # uncompressed, contiguous: no copy at all
    except ValueError:
        import zarr

        data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")  # compressed: read by chunk
    return data, geometry


@dataclass
class ImageGeometry:
    """Where an image's voxels are, per array axis.

    axes: tifffile's axis codes of the array ("ZYX", "TZCYX", "YXS", "QYX", ...).
    spacing, origin: per axis (1.0 and 0.0 where the file says nothing, and for C, S, T axes);
    the origin is the position of voxel 0's centre.
    unit: the spatial unit as the file names it, or None.
    """

    axes: str
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    unit: str | None = None

    def zyx_spacing(self) -> Spacing:
        """(dz, dy, dx); dz is 1.0 when the image has no Z axis."""
        get = {axis: size for axis, size in zip(self.axes, self.spacing)}.get
        return (get("Z", 1.0), get("Y", 1.0), get("X", 1.0))


# TIFF ResolutionUnit -> micrometres per unit. INCH is left out: a dpi from a photo editor is not
# a voxel size (ImageJ and OME files carry their own).
_RESOLUTION_UNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}  # CENTIMETER, MILLIMETER, MICROMETER


def tiff_geometry(tif, series=None) -> ImageGeometry:
    """Spacing and origin of a tifffile series (default: the first) from OME-XML, ImageJ metadata,
    tifffile's JSON description or, failing those, the X/YResolution tags."""
    series = tif.series[0] if series is None else series
    axes = series.axes
    spacing = dict.fromkeys(axes, 1.0)
    origin = dict.fromkeys(axes, 0.0)
    unit = None
    page = series.keyframe if hasattr(series, "keyframe") else tif.pages[0]
    resolution = _resolution_spacing(page, trusted=bool(tif.is_imagej or tif.is_ome or tif.is_shaped))
    spacing.update({k: v for k, v in resolution.items() if k in spacing})
    if tif.is_ome and tif.ome_metadata:
        unit = _ome_geometry(tif.ome_metadata, _series_index(tif, series), spacing, origin)
    elif tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        unit = meta.get("unit")
        if meta.get("spacing") and "Z" in spacing:
            spacing["Z"] = float(meta["spacing"])
        for axis in "ZYX":
            if axis in origin and meta.get(f"{axis.lower()}origin"):
                origin[axis] = -float(meta[f"{axis.lower()}origin"]) * spacing[axis]
    elif tif.is_shaped and tif.shaped_metadata:
        meta = tif.shaped_metadata[0]
        unit = meta.get("unit")
        for key, target in (("spacing", spacing), ("origin", origin)):
            values = meta.get(key)
            if isinstance(values, list) and len(values) == len(axes):
                target.update({axis: float(v) for axis, v in zip(axes, values)})
    return ImageGeometry(
        axes, tuple(spacing[a] for a in axes), tuple(origin[a] for a in axes), _unit_name(unit)
    )


def _resolution_spacing(page, trusted: bool) -> dict:
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 1
    if unit == 2 and not trusted:  # inches: a display dpi, not a voxel size
        return {}
    scale = _RESOLUTION_UNIT_UM.get(unit, 1.0) if unit != 1 else 1.0
    found = {}
    for name, axis in (("XResolution", "X"), ("YResolution", "Y")):
        tag = tags.get(name)
        if tag is None:
            continue
        num, den = tag.value
        if num and den and (num, den) != (1, 1):
            found[axis] = den / num * scale  # resolution is pixels per unit
    return found


def _series_index(tif, series) -> int:
    return next((i for i, s in enumerate(tif.series) if s is series), 0)


def _ome_geometry(ome_xml: str, index: int, spacing: dict, origin: dict) -> str | None:
    import tifffile

    images = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image", [])
    images = images if isinstance(images, list) else [images]
    if index >= len(images):
        return None
    pixels = images[index].get("Pixels", {})
    unit = None
    for axis in "XYZ":
        size = pixels.get(f"PhysicalSize{axis}")
        if size and axis in spacing:
            spacing[axis] = float(size)
            unit = unit or pixels.get(f"PhysicalSize{axis}Unit", "µm")
    planes = pixels.get("Plane", [])
    first = planes[0] if isinstance(planes, list) and planes else planes if isinstance(planes, dict) else {}
    for axis in "XYZ":
        if axis in origin and first.get(f"Position{axis}") is not None:
            origin[axis] = float(first[f"Position{axis}"])
    return unit


# A spatial unit as each format spells it: symbol -> (ImageJ, OME, NIfTI xyzt_units, OME-Zarr / pint).
UNITS = {
    "µm": ("um", "µm", "micron", "micrometer"),
    "mm": ("mm", "mm", "mm", "millimeter"),
    "nm": ("nm", "nm", None, "nanometer"),
    "m": ("m", "m", "meter", "meter"),
}
_UNIT_SPELLINGS = {
    spelling: symbol
    for symbol, names in UNITS.items()
    for spelling in (symbol, *names, f"{names[3]}s", "\u03bcm" if symbol == "µm" else symbol)
    if spelling
} | {"micron": "µm", "\\u00b5m": "µm", "microns": "µm"}


def unit_symbol(unit) -> str | None:
    """'µm', 'mm', 'nm' or 'm' for any usual spelling (ImageJ 'micron', OME 'µm', pint 'micrometer');
    None for no unit ('pixel', 'unknown', '', None); ValueError for other units."""
    text = str(unit).strip().lower() if unit is not None else ""
    if text in ("", "pixel", "pixels", "px", "unknown", "none", "dimensionless"):
        return None
    if text not in _UNIT_SPELLINGS:
        raise ValueError(f"unknown length unit {unit!r}; use one of {', '.join(UNITS)}")
    return _UNIT_SPELLINGS[text]


def _unit_name(unit) -> str | None:
    try:
        return unit_symbol(unit)
    except ValueError:
        return str(unit)  # a unit we do not convert (e.g. 'inch'): reported as the file spells it


def nifti_geometry(image, ndim: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin) of a nibabel image's first `ndim` voxel axes, in array order reversed to
    (Z, Y, X) like the data `read_volume` returns; the origin is the affine's translation."""
    zooms = [float(z) for z in image.header.get_zooms()[:ndim]]
    affine = image.affine
    origin = [float(v) for v in affine[:ndim, 3]] if affine is not None else [0.0] * ndim
    return tuple(zooms[::-1]), tuple(origin[::-1])


def _read_nifti(path: Path) -> tuple[object, "ImageGeometry"]:
    import dask.array as da
    import nibabel as nib

    image = nib.load(str(path))
    proxy = image.dataobj
    if len(proxy.shape) < 3:
        raise ValueError(f"it holds {len(proxy.shape)}-D data of shape {proxy.shape}, not a volume")
    # One chunk per k-slice: reading slice z touches only that slice of the file.
    chunks = (proxy.shape[0], proxy.shape[1], 1) + tuple(proxy.shape[3:])
    data = da.from_array(proxy, chunks=chunks, asarray=True)
    order = (2, 1, 0) + tuple(range(3, data.ndim))
    spacing, origin = nifti_geometry(image, 3)
    extra = data.ndim - 3  # e.g. time last, as nibabel stores it
    unit = _unit_name(image.header.get_xyzt_units()[0])
    geometry = ImageGeometry("ZYX" + "Q" * extra, spacing + (1.0,) * extra, origin + (0.0,) * extra, unit)
    return data.transpose(order), geometry


def write_labels(path: PathLike, labels: np.ndarray, spacing: Spacing | None = None) -> Path:
    """Write a (Z, Y, X) label volume as TIFF or NIfTI atomically (temp file, then rename).

    Labels are stored in the smallest unsigned type that holds them; spacing (dz, dy, dx) is kept.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in TIFF_SUFFIXES + NIFTI_SUFFIXES:
        raise ValueError(f"output {path} must end in .tif, .tiff, .nii or .nii.gz")
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    labels = labels.astype(dtype)
    spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    with atomic_write(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            kwargs = {}
            if dtype != np.uint32:  # ImageJ hyperstacks hold 8/16-bit data
                kwargs = dict(
                    imagej=True,
                    resolution=(1.0 / spacing[2], 1.0 / spacing[1]),
                    metadata={"spacing": spacing[0], "axes": "ZYX"},
                )
            tifffile.imwrite(tmp, labels, compression="zlib", **kwargs)
        else:
            import nibabel as nib

            affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
            nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine), tmp)
    return path
