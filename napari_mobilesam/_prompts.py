"""Group the user's points and boxes by slice, in the predictor's (x, y) pixel convention.

Input coordinates are image data coordinates as napari has them: (y, x) for 2D images,
(z, y, x) for volumes, pixel centres at integers. A 2D image is slice 0.
"""

from dataclasses import dataclass, field

import numpy as np

from mobilesam.prompt import Prompt  # one object's prompts on one slice (the core's type)


@dataclass
class GroupedPrompts:
    """Prompts per slice index, and how many were ignored because they lie outside the image.

    extra_boxes: slice -> the boxes before the last one on that slice, each one more object
        (micro-sam's batched mode: several boxes = several objects in one go).
    """

    by_slice: dict[int, Prompt]
    outside: int
    extra_boxes: dict[int, tuple[tuple[float, float, float, float], ...]] = field(default_factory=dict)


def _inside(value: float, size: int) -> bool:
    return -0.5 <= value < size - 0.5


def group_prompts(
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    boxes: list[np.ndarray],
    spatial_shape: tuple[int, ...],
) -> GroupedPrompts:
    """Sort prompts into slices.

    point_coords: (N, D) image data coordinates, D = len(spatial_shape) (2 or 3).
    point_labels: (N,) 1 positive / 0 negative.
    boxes: list of (K, D) corner coordinates; each becomes its bounding box on its slice. When a
        slice has several boxes, the last one drawn goes with the slice's points (SAM takes one box
        per object) and each earlier one is an object of its own (`extra_boxes`).
    """
    ndim = len(spatial_shape)
    height, width = spatial_shape[-2:]
    points: dict[int, list] = {}
    found_boxes: dict[int, list] = {}
    outside = 0

    def slice_of(coord) -> int | None:
        if ndim == 2:
            return 0
        return int(np.round(coord[0])) if _inside(coord[0], spatial_shape[0]) else None

    for coord, label in zip(np.asarray(point_coords).reshape(-1, ndim), np.asarray(point_labels).reshape(-1)):
        z = slice_of(coord)
        y, x = float(coord[-2]), float(coord[-1])
        if z is None or not (_inside(y, height) and _inside(x, width)):
            outside += 1
            continue
        points.setdefault(z, []).append(((x, y), int(label)))

    for corners in boxes:
        corners = np.asarray(corners, dtype=float).reshape(-1, ndim)
        z = slice_of(corners.mean(axis=0))
        (y0, x0), (y1, x1) = corners[:, -2:].min(axis=0), corners[:, -2:].max(axis=0)
        # A box that overlaps the image is clipped to it; one entirely outside is ignored.
        if z is None or y1 < -0.5 or x1 < -0.5 or y0 >= height - 0.5 or x0 >= width - 0.5:
            outside += 1
            continue
        found_boxes.setdefault(z, []).append(
            (max(x0, 0.0), max(y0, 0.0), min(x1, width - 1.0), min(y1, height - 1.0))
        )

    by_slice = {}
    for z in sorted(set(points) | set(found_boxes)):
        pairs = points.get(z, [])
        last_box = found_boxes[z][-1] if z in found_boxes else None
        by_slice[z] = Prompt(tuple(p for p, _ in pairs), tuple(lab for _, lab in pairs), last_box)
    extra = {z: tuple(found[:-1]) for z, found in found_boxes.items() if len(found) > 1}
    return GroupedPrompts(by_slice, outside, extra)
