"""Reading volumes and writing label volumes, keeping voxel spacing.

`read_volume(path)` returns (array, spacing) with the array in (Z, Y, X) order (channels, if any,
last for NIfTI, as stored for TIFF) and spacing (dz, dy, dx) in the file's units:
- TIFF stacks through tifffile: memory-mapped when the file allows it, else read lazily through
  tifffile's zarr store, so a stack larger than memory is never loaded whole. Spacing from the
  ImageJ `spacing` entry (z) and the X/YResolution tags.
- NIfTI (.nii, .nii.gz) through nibabel: the voxel array (i, j, k) is returned as a lazy dask
  array transposed to (k, j, i) = (Z, Y, X), and the zooms reversed to (dz, dy, dx).
`write_labels(path, labels, spacing)` writes a label volume atomically as TIFF (ImageJ-style
spacing metadata) or NIfTI.
"""

import zlib
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
    """Open a TIFF stack or NIfTI file lazily: (array-like in (Z, Y, X[, C]) order, (dz, dy, dx))."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume {path} does not exist")
    if not path.is_file():
        raise ValueError(f"volume {path} is not a file")
    suffix = _suffix(path)
    if suffix not in TIFF_SUFFIXES + NIFTI_SUFFIXES:
        raise ValueError(f"volume {path} must be a TIFF stack (.tif, .tiff) or NIfTI (.nii, .nii.gz)")
    try:
        data, spacing = _read_tiff(path) if suffix in TIFF_SUFFIXES else _read_nifti(path)
        # Data are read lazily; reading the last slice now finds a truncated or damaged file
        # (for .nii.gz this decompresses the file once) before any work is done.
        np.asarray(data[-1])
    except READ_ERRORS + _nibabel_errors() as exc:
        raise ValueError(f"could not read volume {path}: {_problem(exc)}") from None
    return data, spacing


# What tifffile, nibabel, zlib and gzip raise for a damaged file (nibabel's own errors are added
# by `_nibabel_errors` when it is installed).
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error)


def _nibabel_errors() -> tuple:
    try:
        from nibabel.filebasedimages import ImageFileError
    except ImportError:
        return ()
    return (ImageFileError,)


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (EOFError, zlib.error)) or "not enough data" in text:
        return f"the file is truncated or damaged ({text})"
    return text


def _read_tiff(path: Path) -> tuple[object, Spacing]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        spacing = _tiff_spacing(tif)
        series = tif.series[0]
        # Trailing S: interleaved samples (RGB) of one 2-D image. A leading S is how tifffile reads a
        # plain 3- or 4-plane stack written without metadata, so that counts as slices.
        planes = series.ndim - series.axes.endswith("S")
        if planes < 3:
            raise ValueError(f"it holds one 2-D image of shape {series.shape}, not a stack")
    try:
        data = tifffile.memmap(path)  # uncompressed, contiguous: no copy at all
    except ValueError:
        import zarr

        data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")  # compressed: read by chunk
    return data, spacing


def _tiff_spacing(tif) -> Spacing:
    dz = dy = dx = 1.0
    meta = tif.imagej_metadata or {}
    if meta.get("spacing"):
        dz = float(meta["spacing"])
    tags = tif.pages[0].tags
    for name, set_value in (("XResolution", "x"), ("YResolution", "y")):
        tag = tags.get(name)
        if tag is None:
            continue
        num, den = tag.value
        if num and den and (num, den) != (1, 1):
            size = den / num  # resolution is pixels per unit
            dx, dy = (size, dy) if set_value == "x" else (dx, size)
    return (dz, dy, dx)


def _read_nifti(path: Path) -> tuple[object, Spacing]:
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
    zooms = image.header.get_zooms()[:3]
    return data.transpose(order), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


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
