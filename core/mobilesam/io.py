"""Reading and writing 2-D images and masks for the CLI and front-ends.

TIFF goes through tifffile (keeps 16-bit and float data), everything else through Pillow.
Writes are atomic (`mobilesam.atomic.atomic_write`): an interrupted run never leaves a half-written
output behind.
"""

import os
from importlib import resources
from pathlib import Path
from typing import Union

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
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise ValueError(f"could not read image {path}: {exc}") from None


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
