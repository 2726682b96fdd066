"""Sample data that works offline: a 2D microscopy image shipped with scikit-image, and a
synthetic anisotropic 3D volume (a few bright ellipsoids in noise, voxel spacing 4 x 1 x 1)."""

import numpy as np

VOLUME_SCALE = (4.0, 1.0, 1.0)  # z spacing 4x the in-plane spacing, as in typical confocal stacks


def cell_2d():
    """Phase-contrast image of a cell (scikit-image `data.cell`, 660 x 550 uint8)."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def synthetic_volume(shape=(24, 128, 128), seed: int = 0) -> np.ndarray:
    """(Z, Y, X) uint16 volume with four ellipsoids of different brightness on a noisy background.

    The ellipsoids are round in physical units, i.e. flattened along z by VOLUME_SCALE.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    zz = zz * VOLUME_SCALE[0]
    volume = rng.normal(300, 40, size=shape).astype(np.float32)
    depth = shape[0] * VOLUME_SCALE[0]
    centres = [
        (0.5, 0.3, 0.3, 22, 1800),
        (0.4, 0.7, 0.35, 18, 1200),
        (0.6, 0.45, 0.72, 26, 2500),
        (0.3, 0.75, 0.75, 14, 900),
    ]
    for cz, cy, cx, radius, brightness in centres:
        inside = (zz - cz * depth) ** 2 + (yy - cy * shape[1]) ** 2 + (xx - cx * shape[2]) ** 2 < radius**2
        volume[inside] += brightness
    return np.clip(volume, 0, 65535).astype(np.uint16)


def blobs_3d():
    return [(synthetic_volume(), {"name": "synthetic volume", "scale": VOLUME_SCALE}, "image")]
