"""`LazyImage`: a 2-D image (with or without channels) read region by region, never whole.

Opens what large images come as without loading them: TIFF (tiled or striped, pyramid levels)
through tifffile's zarr store, OME-Zarr (any pyramid level) through zarr, and any array with
`shape`, `dtype` and numpy indexing (numpy, memmap, dask, zarr). `read(box)` returns that region
as numpy with channels last; the tile's RGB for the encoder comes from `mobilesam.image.to_rgb_uint8`
with one intensity range for the whole image (`LazyImage.intensity_range`), so tiles match.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..image import intensity_range, to_rgb_uint8
from .grid import Box

INTENSITY_SAMPLE_REGIONS = 16  # regions read to estimate the image's intensity range
INTENSITY_SAMPLE_SIDE = 256


class LazyImage:
    """array: (H, W), (H, W, C) or, with `channel_axis`, channels anywhere; leading axes of size 1
    (OME-Zarr's t, z) are dropped. `value_range` maps intensities to 0..255 (default: sampled)."""

    def __init__(
        self, array, channel_axis: int | None = None, value_range: tuple[float, float] | None = None
    ) -> None:
        shape = tuple(int(s) for s in array.shape)
        ndim = len(shape)
        if channel_axis is None and ndim == 3 and shape[-1] <= 4:
            channel_axis = ndim - 1
        if channel_axis is not None:
            channel_axis %= ndim
        spatial = [a for a in range(ndim) if a != channel_axis]
        extra = [a for a in spatial[:-2] if shape[a] != 1]
        if len(spatial) < 2 or extra:
            raise ValueError(
                f"need a 2-D image (H, W) with optional channels; got shape {shape}"
                + (f" (axis {extra[0]} has {shape[extra[0]]} entries: pick one plane)" if extra else "")
            )
        self.array = array
        self.dtype = np.dtype(array.dtype)
        self.channel_axis = channel_axis
        self._singletons = spatial[:-2]
        self._yx = spatial[-2:]
        self.shape = (shape[self._yx[0]], shape[self._yx[1]])  # (H, W)
        self.channels = 1 if channel_axis is None else shape[channel_axis]
        self._value_range = value_range

    def read(self, box: Box) -> np.ndarray:
        """Pixels of the (y0, x0, y1, x1) box: (h, w) or (h, w, C)."""
        y0, x0, y1, x1 = (int(v) for v in box)
        index = [slice(None)] * len(self.array.shape)
        for a in self._singletons:
            index[a] = 0
        index[self._yx[0]], index[self._yx[1]] = slice(y0, y1), slice(x0, x1)
        region = np.asarray(self.array[tuple(index)])
        if self.channel_axis is not None:
            kept = [a for a in range(len(self.array.shape)) if a not in self._singletons]
            region = np.moveaxis(region, kept.index(self.channel_axis), -1)
        return region

    def read_rgb(self, box: Box) -> np.ndarray:
        """The box as the (h, w, 3) uint8 RGB the encoder sees (image-wide contrast)."""
        return to_rgb_uint8(
            self.read(box),
            channel_axis=-1 if self.channel_axis is not None else None,
            value_range=self.intensity_range,
        )

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """(low, high) from regions spread over the image; None for uint8 (passed through unchanged)."""
        if self._value_range is None and self.dtype not in (np.uint8, np.bool_):
            h, w = self.shape
            side = INTENSITY_SAMPLE_SIDE
            n = int(np.ceil(np.sqrt(INTENSITY_SAMPLE_REGIONS)))
            ys = np.unique(np.linspace(0, max(0, h - side), n).astype(int))
            xs = np.unique(np.linspace(0, max(0, w - side), n).astype(int))
            samples = [self.read((y, x, y + side, x + side)).reshape(-1) for y in ys for x in xs]
            self._value_range = intensity_range(np.concatenate(samples))
        return self._value_range

    def __repr__(self) -> str:
        return f"LazyImage(shape={self.shape}, channels={self.channels}, dtype={self.dtype}, array={type(self.array).__name__})"


@dataclass(frozen=True)
class ImageSpec:
    """What a worker needs to open the image itself: a path (or picklable array) and how to read it."""

    source: object
    level: int = 0
    channel_axis: int | None = None
    value_range: tuple[float, float] | None = None

    @classmethod
    def of(cls, image, level: int = 0, channel_axis: int | None = None) -> "ImageSpec":
        """The spec of a path or array-like, with its intensity range fixed (so every worker agrees)."""
        lazy = open_image(image, level=level, channel_axis=channel_axis)
        source = image if isinstance(image, (str, os.PathLike)) else lazy.array
        return cls(source, level, lazy.channel_axis, lazy.intensity_range)

    def open(self) -> LazyImage:
        image = open_image(self.source, level=self.level, channel_axis=self.channel_axis)
        image._value_range = self.value_range
        return image


def open_image(
    source: str | os.PathLike | object, level: int = 0, channel_axis: int | None = None
) -> LazyImage:
    """A `LazyImage` of a path (TIFF, OME-Zarr folder, or PNG/JPEG read whole) or an array-like.

    level: pyramid level for multi-resolution TIFF and OME-Zarr (0 = full resolution).
    """
    if isinstance(source, LazyImage):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return LazyImage(source, channel_axis)
    path = Path(source)
    if str(source) != "sample" and not path.exists():
        raise FileNotFoundError(f"image {path} does not exist")
    if path.is_dir() or path.suffix.lower() == ".zarr":
        return LazyImage(
            _open_ome_zarr(path, level),
            channel_axis if channel_axis is not None else _zarr_channel_axis(path),
        )
    if path.suffix.lower() in (".tif", ".tiff"):
        return LazyImage(_open_tiff(path, level), channel_axis)
    from ..io import read_image

    return LazyImage(read_image(source), channel_axis)


def _open_tiff(path: Path, level: int):
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        levels = len(tif.series[0].levels)
    if not 0 <= level < levels:
        raise ValueError(f"{path} has pyramid levels 0..{levels - 1}, not {level}")
    return zarr.open(tifffile.imread(path, aszarr=True, level=level), mode="r")


def _multiscales(group) -> list:
    attrs = dict(group.attrs)
    attrs = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests its metadata under "ome"
    return attrs.get("multiscales") or []


def _open_ome_zarr(path: Path, level: int):
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    multiscales = _multiscales(node)
    if not multiscales:
        raise ValueError(f"{path} is a zarr group without OME-Zarr multiscales metadata")
    datasets = multiscales[0]["datasets"]
    if not 0 <= level < len(datasets):
        raise ValueError(f"{path} has pyramid levels 0..{len(datasets) - 1}, not {level}")
    return node[datasets[level]["path"]]


def _zarr_channel_axis(path: Path) -> int | None:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return None
    axes = (_multiscales(node) or [{}])[0].get("axes") or []
    names = [a["name"] if isinstance(a, dict) else a for a in axes]
    return names.index("c") if "c" in names else None
