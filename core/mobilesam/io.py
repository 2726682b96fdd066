"""Reading and writing 2-D images and masks for the CLI and front-ends.

TIFF goes through tifffile (keeps 16-bit and float data), everything else through Pillow.
Writes are atomic (`mobilesam.atomic.atomic_write`): an interrupted run never leaves a half-written
output behind.
"""

import os
import zlib
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image

from ._types import PathLike
from .atomic import atomic_write
from .errors import MobileSamError

TIFF_SUFFIXES = (".tif", ".tiff")
SAMPLE_NAME = "sample"
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # MOBILESAM_MAX_IMAGE_PIXELS overrides it
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class ImageTooLargeError(MobileSamError, ValueError):
    """An image whose header states more pixels than the limit (a decompression bomb, or just too big)."""


def max_image_pixels() -> int:
    """The pixel limit: MOBILESAM_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    raw = os.environ.get("MOBILESAM_MAX_IMAGE_PIXELS", "").strip()
    try:
        limit = int(raw) if raw else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise ValueError(f"MOBILESAM_MAX_IMAGE_PIXELS must be an integer, got {raw!r}") from None
    if limit < 1:
        raise ValueError(f"MOBILESAM_MAX_IMAGE_PIXELS must be positive, got {limit}")
    return limit


def check_pixel_limit(
    source: PathLike | BinaryIO, max_pixels: int | None = None, name: str = ""
) -> tuple[int, int]:
    """(height, width) of the image in `source` (a path or a seekable binary file), read from its header.

    Nothing is decoded: a 30000 x 30000 zlib TIFF of zeros (1 MB on disk, 900 M pixels) is refused
    here, not after it has filled memory. Raises ImageTooLargeError when the stored pixels (every
    plane of the first TIFF series; width x height otherwise) exceed `max_pixels` (default
    `max_image_pixels()`), ValueError when the header cannot be read. A file object is rewound.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if not name:
        name = str(getattr(source, "name", "") or "(file object)") if hasattr(source, "read") else str(source)
    start = source.tell() if hasattr(source, "read") else None
    try:
        if _is_tiff(source):
            height, width, pixels = _tiff_header_size(source)
        else:
            with Image.open(source) as im:  # lazy: reads the header only
                width, height = im.size  # the first frame: what read_image decodes
                pixels = width * height
    except Image.DecompressionBombError as exc:  # Pillow's own (lower) guard fired first
        raise ImageTooLargeError(f"image {name} is too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, tifffile.TiffFileError) as exc:
        raise ValueError(f"could not read the header of image {name}: {exc}") from None
    finally:
        if start is not None:
            source.seek(start)
    if pixels > limit:
        raise ImageTooLargeError(
            f"image {name} has {pixels} pixels ({width} x {height}"
            f"{'' if pixels == width * height else ', several planes'}), more than "
            f"MOBILESAM_MAX_IMAGE_PIXELS={limit}"
        )
    return height, width


def _is_tiff(source) -> bool:
    if hasattr(source, "read"):
        head = source.read(4)
        source.seek(-len(head), os.SEEK_CUR)
    else:
        with open(source, "rb") as f:
            head = f.read(4)
    return head in TIFF_MAGIC


def _tiff_header_size(source) -> tuple[int, int, int]:
    """(height, width, pixels of the first series without its samples axis) from the TIFF tags."""
    if hasattr(
        source, "read"
    ):  # tifffile wants a file object whose name is a path (temporary files' are not)
        source = _NamedStream(source)
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        shape = dict(zip(series.axes, series.shape))
        pixels = int(
            np.prod([n for axis, n in zip(series.axes, series.shape) if axis != "S"], dtype=np.float64)
        )
        return int(shape.get("Y", series.shape[0])), int(shape.get("X", series.shape[-1])), pixels


def sample_image_path() -> Path:
    """The bundled sample image (scikit-image's `coins`, 303x384 grayscale)."""
    return Path(str(resources.files("mobilesam") / "data" / "sample_coins.png"))


class _NamedStream:
    """A binary file object seen through a string `name` (tifffile splits it like a path)."""

    name = "stream.tif"

    def __init__(self, file) -> None:
        self._file = file

    def __getattr__(self, attribute):
        return getattr(self._file, attribute)


def read_image(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a 2-D image (H, W) or (H, W, C) in its own dtype; `sample` names the bundled one.

    Images over `max_pixels` (default `max_image_pixels()`) are refused from their header.
    """
    if str(path) == SAMPLE_NAME:
        path = sample_image_path()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    check_pixel_limit(path, max_pixels)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return tifffile.imread(path)
        with Image.open(path) as im:
            if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.array(im)
    except (OSError, ValueError, EOFError, zlib.error, tifffile.TiffFileError) as exc:
        raise ValueError(f"could not read image {path}: {exc}") from None


def read_image_with_channel_axis(path: PathLike) -> tuple[np.ndarray, int | None]:
    """`read_image`, plus the axis of channels as the file states it, or None if it does not say
    (2-D images, TIFFs without axes metadata): then `mobilesam.image.to_rgb_uint8` guesses.

    PNG/JPEG keep channels last; a TIFF states them with samples per pixel ("S") or an ImageJ /
    OME channel axis ("C") in tifffile's axes of the image.
    """
    image = read_image(path)
    if image.ndim != 3:
        return image, None
    if str(path) == SAMPLE_NAME or Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return image, -1
    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
    stated = [i for i, axis in enumerate(axes) if axis in "SC"]
    return image, stated[0] if len(axes) == 3 and len(stated) == 1 else None


def write_image(path: PathLike, array: np.ndarray) -> Path:
    """Write `array` as TIFF (any dtype, any number of planes) or PNG (2-D uint8/uint16) atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + (".png",):
        raise ValueError(f"output {path} must end in .png, .tif or .tiff")
    if suffix == ".png" and (array.ndim != 2 or array.dtype not in (np.uint8, np.uint16)):
        raise ValueError(
            f"PNG output needs a 2-D uint8/uint16 image, got {array.shape} {array.dtype}; use .tif"
        )
    with atomic_write(path) as tmp:
        if suffix == ".png":
            Image.fromarray(array).save(tmp, format="PNG")
        else:
            is_rgb = array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8
            tifffile.imwrite(tmp, array, compression="zlib", photometric="rgb" if is_rgb else "minisblack")
    return path
