"""Label Studio's interactive context (`params.context.result`) as SAM prompts in pixels.

Label Studio sends regions in percent of the original image (`value.x`, `value.y`, 0..100) with
`original_width`, `original_height` and `image_rotation`. The image rotation is a view
transform in Label Studio's editor (the stage rotates, region coordinates stay in the unrotated
image's frame), so it is carried back to the result unchanged. A rectangle's own
`value.rotation` (degrees, clockwise, about its top-left corner) is honoured: SAM gets the
axis-aligned box around the rotated rectangle.

Only the prompts of this interaction count. Label Studio marks the smart keypoints placed in it
with `is_positive`; a keypoint *without* it sent next to ones that have it is a stale point from a
draft (the annotator left the task with a suggestion pending, Label Studio saved the point into the
draft and sends it again with every click). Counting it would join two objects into one mask, so
it is ignored (and listed in `ClickPrompt.stale_ids` for the log). When no keypoint has the flag
(plain tools, older clients), every keypoint is a positive point.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilesam.prompt import Prompt

from .errors import BadRequest

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")
EPS = 1e-6


@dataclass(frozen=True)
class ClickPrompt:
    """Prompts of one interactive request, in percent of the image.

    points: (N, 2) x, y percent; point_labels: (N,) 1 positive / 0 negative.
    box: (4,) x0, y0, x1, y1 percent, or None.
    region_ids: identities of the context items (for finding the previous mask of a refinement).
    """

    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    label: str | None
    to_name: str | None
    original_size: tuple[int, int] | None  # (H, W) as Label Studio reports it
    image_rotation: float  # degrees, echoed back in the result
    region_ids: tuple[str, ...]
    stale_ids: tuple[str, ...] = ()  # keypoints ignored as stale draft points

    def pixel_prompt(self, height: int, width: int) -> Prompt:
        """The core's `Prompt` (validated there) in pixels of an image of this size."""
        return Prompt(self.points, self.point_labels, self.box).scaled(width / 100.0, height / 100.0)

    def in_pixels(
        self, height: int, width: int
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(point_coords (N, 2), point_labels (N,), box (4,)) in pixels of an image of this size."""
        plane = self.pixel_prompt(height, width)
        return (*plane.point_arrays(), plane.box_array())

    @property
    def multimask(self) -> bool:
        """SAM's advice: ask for 3 masks only when one point leaves the object ambiguous."""
        return self.box is None and len(self.points) == 1


def parse_context(context: Any) -> ClickPrompt:
    """Validate `params.context` and collect its keypoints and rectangles. Raises BadRequest."""
    if not isinstance(context, dict):
        raise BadRequest(
            f"params.context must be an object with a 'result' list, got {type(context).__name__}"
        )
    items = context.get("result")
    if not isinstance(items, list) or not items:
        raise BadRequest("params.context.result must be a non-empty list of keypoint/rectangle regions")
    points, point_labels, boxes, ids, stale = [], [], [], [], []
    label = to_name = original_size = None
    rotation = 0
    flagged = any(
        isinstance(item, dict)
        and item.get("type") == "keypointlabels"
        and item.get("is_positive") is not None
        for item in items
    )
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"context.result[{index}] must be an object, got {type(item).__name__}")
        kind = item.get("type")
        if kind not in PROMPT_TYPES:
            raise BadRequest(
                f"context.result[{index}] has type {kind!r}; MobileSAM takes "
                f"{' and '.join(PROMPT_TYPES)} as prompts"
            )
        value = item.get("value")
        if not isinstance(value, dict):
            raise BadRequest(f"context.result[{index}] ({kind}) has no 'value' object")
        where = f"context.result[{index}] ({kind} {item.get('id', '')})".replace(" )", ")")
        if kind == "keypointlabels" and flagged and item.get("is_positive") is None:
            stale.append(str(item.get("id") or f"{kind}:{json_key(value)}"))
            continue
        original_size = original_size or _original_size(item, where)
        if kind == "keypointlabels":
            points.append(_point(value, where))
            point_labels.append(0 if item.get("is_positive") is False else 1)  # missing means positive
        else:
            boxes.append(_box(value, where, _original_size(item, where) or original_size))
        label = label or _first_label(value, kind)
        to_name = to_name or item.get("to_name")
        rotation = _rotation(item, where) if "image_rotation" in item else rotation
        ids.append(str(item.get("id") or f"{kind}:{json_key(value)}"))
    return ClickPrompt(
        points=np.array(points, dtype=np.float64).reshape(-1, 2),
        point_labels=np.array(point_labels, dtype=np.int64),
        # SAM takes one box; Label Studio lists the newest smart region last.
        box=np.array(boxes[-1], dtype=np.float64) if boxes else None,
        label=label,
        to_name=to_name,
        original_size=original_size,
        image_rotation=rotation,
        region_ids=tuple(ids),
        stale_ids=tuple(stale),
    )


def json_key(value: dict) -> str:
    return ",".join(f"{value.get(k)}" for k in ("x", "y", "width", "height"))


def _number(value: dict, key: str, where: str) -> float:
    raw = value.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise BadRequest(f"{where}: value.{key} must be a finite number, got {raw!r}")
    return float(raw)


def _check_inside(x: float, y: float, where: str) -> None:
    if not (-EPS <= x <= 100 + EPS and -EPS <= y <= 100 + EPS):
        raise BadRequest(
            f"{where}: point ({x:g}%, {y:g}%) is outside the image (coordinates are percent, 0..100)"
        )


def _point(value: dict, where: str) -> tuple[float, float]:
    x, y = _number(value, "x", where), _number(value, "y", where)
    _check_inside(x, y, where)
    return x, y


def _box(value: dict, where: str, original_size: tuple[int, int] | None) -> tuple[float, float, float, float]:
    x, y = _number(value, "x", where), _number(value, "y", where)
    w, h = _number(value, "width", where), _number(value, "height", where)
    if w < 0 or h < 0:
        raise BadRequest(f"{where}: width and height must not be negative, got {w:g} x {h:g}")
    angle = _number(value, "rotation", where) if value.get("rotation") is not None else 0.0
    if angle % 360:
        x, y, x1, y1 = _rotated_bounds(x, y, w, h, angle, original_size, where)
    else:
        x1, y1 = x + w, y + h
    _check_inside(x, y, where)
    _check_inside(x1, y1, where)
    return x, y, x1, y1


def _rotated_bounds(x, y, w, h, angle, original_size, where):
    """Percent bounds of a rectangle rotated by `angle` degrees clockwise about its top-left corner.

    The rotation happens in pixels (percent of width and of height are different units), so it
    needs the image size Label Studio reports with the region.
    """
    if original_size is None:
        raise BadRequest(f"{where}: a rotated rectangle needs original_width and original_height")
    height, width = original_size
    sx, sy = width / 100.0, height / 100.0
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    corners = [
        (x * sx + dx * cos - dy * sin, y * sy + dx * sin + dy * cos)
        for dx, dy in ((0, 0), (w * sx, 0), (0, h * sy), (w * sx, h * sy))
    ]
    xs, ys = [c[0] / sx for c in corners], [c[1] / sy for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _rotation(item: dict, where: str) -> float:
    raw = item.get("image_rotation")
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise BadRequest(f"{where}: image_rotation must be a number of degrees, got {raw!r}")
    return raw


def _first_label(value: dict, kind: str) -> str | None:
    for key in (kind, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels:
            return str(labels[0])
    return None


def _original_size(item: dict, where: str) -> tuple[int, int] | None:
    width, height = item.get("original_width"), item.get("original_height")
    if width is None and height is None:
        return None
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v < 1e9 for v in (width, height)
    ):
        raise BadRequest(
            f"{where}: original_width/original_height must be positive numbers, got {width!r} x {height!r}"
        )
    return int(round(height)), int(round(width))
