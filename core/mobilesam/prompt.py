"""`Prompt`: one object's prompts on one image plane, the type every front-end hands the core.

The napari plugin builds it from its layers, the Label Studio backend from a request's context
(percent coordinates scaled to pixels), the CLI from its --point/--box options, and the volume code
pairs it with a slice index (`mobilesam.volume.SlicePrompt`). Parsing stays in each front-end;
what a valid prompt is lives here, once.
"""

from dataclasses import dataclass

import numpy as np

from .transforms import MAX_POINTS_PER_PROMPT, finite_array

OBJECT, BACKGROUND = 1, 0


@dataclass(frozen=True)
class Prompt:
    """Points, a box and/or a previous mask for one object, in pixels (x, y) of its plane.

    points: ((x, y), ...) pixel centres; labels: (1 object / 0 background, ...), one per point
        (default: all 1); box: (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1; mask: (1, 256, 256)
        low-res logits from a previous prediction (refinement), or None.
    Arguments may be arrays or sequences; they are stored as tuples (the mask as a read-only
    float32 array), so two prompts compare equal exactly when they give the same mask.
    Raises ValueError naming the problem: shapes, values that are not finite, labels not 0/1, an
    inverted box, more than `MAX_POINTS_PER_PROMPT` points.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = _points(self.points)
        object.__setattr__(self, "points", tuple((float(x), float(y)) for x, y in points))
        object.__setattr__(self, "labels", _labels(self.labels, len(points)))
        object.__setattr__(self, "box", _box(self.box))
        object.__setattr__(self, "mask", _mask(self.mask))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Prompt):
            return NotImplemented
        same_mask = (self.mask is None and other.mask is None) or (
            self.mask is not None and other.mask is not None and np.array_equal(self.mask, other.mask)
        )
        return (self.points, self.labels, self.box) == (other.points, other.labels, other.box) and same_mask

    def __hash__(self) -> int:
        return hash((self.points, self.labels, self.box, self.mask is None))

    @property
    def is_empty(self) -> bool:
        return not self.points and self.box is None and self.mask is None

    def point_arrays(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(N, 2) float64 (x, y) coordinates and (N,) int64 labels, or (None, None) without points."""
        if not self.points:
            return None, None
        return np.array(self.points, dtype=np.float64), np.array(self.labels, dtype=np.int64)

    def box_array(self) -> np.ndarray | None:
        """(4,) float64 XYXY box, or None."""
        return None if self.box is None else np.array(self.box, dtype=np.float64)

    def predict_kwargs(self) -> dict:
        """The keyword arguments of `SamPredictor.predict` (point_coords, point_labels, box, mask_input)."""
        coords, labels = self.point_arrays()
        return dict(point_coords=coords, point_labels=labels, box=self.box_array(), mask_input=self.mask)

    @property
    def multimask(self) -> bool:
        """SAM's advice: ask for 3 masks only when a single point leaves the object ambiguous."""
        return self.box is None and self.mask is None and len(self.points) == 1

    def scaled(self, sx: float, sy: float) -> "Prompt":
        """The same prompt with x scaled by sx and y by sy (e.g. percent -> pixels); mask kept."""
        return Prompt(
            tuple((x * sx, y * sy) for x, y in self.points),
            self.labels,
            None if self.box is None else tuple(v * s for v, s in zip(self.box, (sx, sy, sx, sy))),
            self.mask,
        )


def _points(values) -> np.ndarray:
    if values is None or np.size(values) == 0:
        return np.zeros((0, 2))
    points = finite_array(values, "points")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) (x, y) pixels, got shape {points.shape}")
    if len(points) > MAX_POINTS_PER_PROMPT:
        raise ValueError(f"{len(points)} points; at most {MAX_POINTS_PER_PROMPT} are allowed in one prompt")
    return points


def _labels(values, count: int) -> tuple[int, ...]:
    if values is None or np.size(values) == 0:
        return (OBJECT,) * count  # points without labels are on the object
    labels = finite_array(values, "labels").reshape(-1)
    if len(labels) != count:
        raise ValueError(f"{count} points but {len(labels)} labels")
    bad = labels[~np.isin(labels, (BACKGROUND, OBJECT))]
    if bad.size:
        raise ValueError(f"point labels must be 1 (object) or 0 (background), got {bad[0]:g}")
    return tuple(int(label) for label in labels)


def _box(values) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    box = finite_array(values, "box").reshape(-1)
    if box.size != 4:
        raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got {box.size}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted: it needs x1 >= x0 and y1 >= y0")
    return x0, y0, x1, y1


def _mask(values) -> np.ndarray | None:
    if values is None:
        return None
    mask = finite_array(values, "mask").astype(np.float32)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] != 1 or mask.shape[1] != mask.shape[2]:
        raise ValueError(
            f"mask must be (1, h, w) or (h, w) square low-res logits, got shape {np.shape(values)}"
        )
    mask.setflags(write=False)
    return mask
