"""Reading and writing 2-D images and masks for the CLI and front-ends.

TIFF goes through tifffile (keeps 16-bit and float data), everything else through Pillow.
Writes are atomic (`mobilesam.atomic.atomic_write`): an interrupted run never leaves a half-written
output behind.
"""

import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import numpy as np
import tifffile
from PIL import Image

from .atomic import atomic_write

PathLike = Union[str, os.PathLike]
TIFF_SUFFIXES = (".tif", ".tiff")
SAMPLE_NAME = "sample"


def sample_image_path() -> Path:
    """The bundled sample image (scikit-image's `coins`, 303x384 grayscale)."""
    return Path(str(resources.files("mobilesam") / "data" / "sample_coins.png"))


def read_image(path: PathLike) -> np.ndarray:
    """Read a 2-D image (H, W) or (H, W, C) in its own dtype; `sample` names the bundled one."""
    if str(path) == SAMPLE_NAME:
        path = sample_image_path()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return tifffile.imread(path)
        with Image.open(path) as im:
            if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.array(im)
    except (OSError, ValueError, EOFError, zlib.error, tifffile.TiffFileError) as exc:
        raise ValueError(f"could not read image {path}: {exc}") from None


def read_image_with_channel_axis(path: PathLike) -> tuple[np.ndarray, Optional[int]]:
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
        raise ValueError(f"PNG output needs a 2-D uint8/uint16 image, got {array.shape} {array.dtype}; use .tif")
    with atomic_write(path) as tmp:
        if suffix == ".png":
            Image.fromarray(array).save(tmp, format="PNG")
        else:
            is_rgb = array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8
            tifffile.imwrite(tmp, array, compression="zlib", photometric="rgb" if is_rgb else "minisblack")
    return path
