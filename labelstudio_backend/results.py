"""Masks as Label Studio result items: `brushlabels` (RLE) or `polygonlabels` (percent points)."""

import uuid

import numpy as np

from .label_config import OutputTarget


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) bool -> (height, width) bool by nearest neighbour (for images Label Studio sizes differently)."""
    if mask.shape == (height, width):
        return mask
    rows = (np.arange(height) * mask.shape[0] // height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(width) * mask.shape[1] // width).clip(0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def same_aspect(a: tuple[int, int], b: tuple[int, int], tolerance: float = 0.02) -> bool:
    """Whether sizes (H, W) `a` and `b` have the same aspect ratio (within `tolerance` of b's)."""
    return abs(a[0] / a[1] - b[0] / b[1]) <= tolerance * (b[0] / b[1])


def brush_result(
    mask: np.ndarray, target: OutputTarget, label: str | None, image_rotation: float = 0
) -> dict:
    """A brushlabels item for an (H, W) bool (or uint8 0/255) mask; RLE by label-studio-sdk, 0/255 as
    Label Studio draws it."""
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    rle = mask2rle(mask if mask.dtype == np.uint8 else mask.astype(np.uint8) * np.uint8(255))
    return _item(
        target,
        width,
        height,
        image_rotation,
        {"format": "rle", "rle": [int(v) for v in rle], target.result_type: _labels(label, target)},
    )


def polygon_results(
    mask: np.ndarray,
    target: OutputTarget,
    label: str | None,
    image_rotation: float = 0,
    tolerance: float = 1.0,
    min_area: int = 4,
    origin: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
) -> list[dict]:
    """One polygonlabels item per connected component of an (H, W) bool mask (outer outline, holes filled:
    Label Studio polygons have no holes), simplified to within `tolerance` pixels.

    The mask may be a part of the image: its top-left pixel at `origin` (row, col) of an image of
    `size` (H, W) (default: the mask is the whole image)."""
    from skimage.measure import approximate_polygon, find_contours, regionprops
    from skimage.measure import label as label_components

    height, width = mask.shape if size is None else size
    items = []
    for region in regionprops(label_components(mask, connectivity=2)):
        if region.area < min_area:
            continue
        top, left = region.bbox[0] + origin[0], region.bbox[1] + origin[1]
        filled = np.pad(region.image_filled, 1)
        contour = max(find_contours(filled.astype(np.float32), 0.5), key=len)
        contour = approximate_polygon(contour, tolerance=tolerance)[:-1]  # closed: last point == first
        if len(contour) < 3:
            continue
        # contour is (row, col) in the padded crop; pixel centres sit at +0.5 in Label Studio's frame
        xs = (contour[:, 1] - 1 + left + 0.5) / width * 100
        ys = (contour[:, 0] - 1 + top + 0.5) / height * 100
        points = np.clip(np.stack([xs, ys], axis=1), 0, 100).round(4).tolist()
        items.append(
            _item(
                target,
                width,
                height,
                image_rotation,
                {"points": points, "closed": True, target.result_type: _labels(label, target)},
            )
        )
    return items


def _labels(label: str | None, target: OutputTarget) -> list[str]:
    if label:
        return [label]
    return [target.labels[0]] if target.labels else []


def _item(target: OutputTarget, width: int, height: int, image_rotation: float, value: dict) -> dict:
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": target.result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": image_rotation,
        "value": value,
        "readonly": False,
    }
