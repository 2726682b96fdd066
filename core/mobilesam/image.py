"""Turn images as scientists have them into the RGB uint8 that SAM's encoder expects.

Microscopy and medical images come as uint16, signed ints or floats, with one channel or
several. `to_rgb_uint8` maps them to (H, W, 3) uint8 with a robust percentile contrast
stretch: the `low`/`high` percentiles (default 0.5 and 99.5) of the finite values become 0 and
255, so a few hot pixels do not squash the rest into black. uint8 RGB input is passed through
untouched, so natural images behave exactly as in the official code. For volumes, compute the
range once with `intensity_range(volume)` and pass it to every slice so contrast is consistent
through z.
"""

import warnings

import numpy as np

MAX_GUESSED_CHANNELS = 4  # an end axis this short is taken for channels without a warning
MAX_PIXELS = 1 << 28  # 268M pixels (16384 x 16384): larger is almost surely a mistake


def intensity_range(
    data: np.ndarray, low: float = 0.5, high: float = 99.5, max_samples: int = 2_000_000
) -> tuple[float, float]:
    """Robust (low, high) intensity percentiles of `data`, sampled for large arrays.

    Raises ValueError if `data` is empty or has no finite values.
    """
    flat = np.asarray(data).reshape(-1)
    if flat.size == 0:
        raise ValueError("image is empty (zero pixels)")
    if flat.size > max_samples:
        # An evenly strided sample is deterministic and enough for percentiles.
        flat = flat[:: flat.size // max_samples + 1]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            raise ValueError("image has no finite values (all NaN or inf)")
    lo, hi = np.percentile(flat, [low, high])
    return float(lo), float(hi)


def rescale_to_uint8(data: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Linearly map value_range to 0..255 (clipped); NaNs become 0."""
    lo, hi = value_range
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) * np.float32(scale)
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def guess_channel_axis(shape: tuple[int, ...]) -> int:
    """Channel axis of a 3-D image whose layout nobody stated: 0 or -1, whichever end is short.

    (H, W, <=4) and (<=4, H, W) are taken as they are; otherwise (both ends short, or neither,
    e.g. (64, 80, 5)) the shorter end is taken, with a warning saying what was guessed.
    """
    first, last = shape[0], shape[-1]
    if last <= MAX_GUESSED_CHANNELS < first:
        return -1
    if first <= MAX_GUESSED_CHANNELS < last:
        return 0
    axis = -1 if last <= first else 0
    warnings.warn(
        f"image of shape {tuple(shape)}: guessed that axis {axis % len(shape)} "
        f"({shape[axis]} entries) holds the channels; pass channel_axis to say otherwise",
        stacklevel=3,
    )
    return axis


def to_rgb_uint8(
    image: np.ndarray,
    channel_axis: int | None = None,
    value_range: tuple[float, float] | None = None,
    low: float = 0.5,
    high: float = 99.5,
) -> np.ndarray:
    """Convert a 2-D image with 0..N channels to (H, W, 3) uint8.

    image: (H, W) grayscale, or (H, W, C) / (C, H, W) with `channel_axis` saying where C is
        (by default guessed by `guess_channel_axis`, with a warning when the shape is ambiguous).
    value_range: (low, high) intensities mapped to 0 and 255; computed from the percentiles
        `low`/`high` of the image when None. uint8 images with 3 channels are returned as they are.
    Channels: 1 is repeated to gray RGB, 2 become R and G (B = 0), 3 are used as RGB, 4 or more
    keep the first three (an RGBA image drops alpha).
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    if arr.dtype.kind not in "uifb":
        raise ValueError(f"image dtype {arr.dtype} is not numeric")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3:
        if channel_axis is None:
            channel_axis = guess_channel_axis(arr.shape)
        arr = np.moveaxis(arr, channel_axis, -1)
    else:
        raise ValueError(
            f"image must be 2-D (H, W) or 2-D with channels (H, W, C); got {arr.ndim} dimensions "
            f"{arr.shape} (for volumes, pass one slice at a time)"
        )
    h, w, c = arr.shape
    if h * w > MAX_PIXELS:
        raise ValueError(f"image of {h}x{w} pixels is larger than the {MAX_PIXELS} pixel limit")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8 and value_range is None:
        rgb = arr
    else:
        if value_range is None:
            value_range = intensity_range(arr, low, high)
        rgb = rescale_to_uint8(arr, value_range)
    if c == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif c == 2:
        rgb = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    elif c > 3:
        rgb = rgb[..., :3]
    return np.ascontiguousarray(rgb)
