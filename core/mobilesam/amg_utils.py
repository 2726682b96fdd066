"""Batched helpers for automatic mask generation: point grids, crop boxes, mask boxes, stability
scores, box NMS, run-length encoding and small-region cleanup.

Every function is written so that its results equal segment_anything's `utils.amg` and
torchvision's `batched_nms` exactly (same dtypes, same comparison rules), because the automatic
mask generator promises records identical to the official ones. Masks are (N, H, W) bool tensors
or arrays, boxes are (N, 4) XYXY with the right/bottom edge *inclusive* (pixel indices), as in
the official code.
"""

import math
from itertools import product
from typing import Any

import numpy as np
import torch

ArrayOrTensor = np.ndarray | torch.Tensor


# --- point grids and crops ----------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n_per_side**2, 2) (x, y) points on a regular grid in [0, 1]^2, half a step from the edges;
    x varies fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has int(n_per_side / scale_per_layer**i) points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layer index: the whole image, then (2**i)**2 overlapping crops
    for layer i = 1..n_layers (column-major order, as the official code)."""
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        n_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w = int(math.ceil((overlap * (n_side - 1) + width) / n_side))
        crop_h = int(math.ceil((overlap * (n_side - 1) + height) / n_side))
        x0s = [int((crop_w - overlap) * i) for i in range(n_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


# --- geometry -------------------------------------------------------------------------------------


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 XYXY boxes, edges inclusive; [0, 0, 0, 0] for empty masks."""
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    # argmax of a bool finds the first True; flipping finds the last one.
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = height - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = width - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    return boxes * rows.any(dim=1, keepdim=True)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N, 4) crop-frame boxes -> (N,) bool: an edge within `atol` px of a crop edge that is not
    also an image edge (such masks are probably cut off by the crop)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (boxes - crop).abs() <= atol
    near_image = (boxes - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([[x0, y0, x0, y0]], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[:2]
    return points + torch.tensor([[x0, y0]], device=points.device)


def uncrop_mask(mask: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> np.ndarray:
    """(h, w) mask of a crop -> (H, W) mask of the image, zero outside the crop."""
    height, width = image_size
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return mask
    full = np.zeros((height, width), dtype=mask.dtype)
    full[y0:y1, x0:x1] = mask
    return full


def box_xyxy_to_xywh(box: ArrayOrTensor) -> list:
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


# --- scores ---------------------------------------------------------------------------------------


def stability_scores(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """(N, H, W) logits -> (N,) float32 IoU of the masks thresholded at threshold +- offset.

    The high-threshold mask lies inside the low-threshold one, so IoU = count(high) / count(low).
    Counts are int32 and divided as in the official code, so the float32 scores are identical.
    """
    high = (logits > (mask_threshold + offset)).sum(dim=(-1, -2), dtype=torch.int32)
    low = (logits > (mask_threshold - offset)).sum(dim=(-1, -2), dtype=torch.int32)
    return high / low


# --- non-maximum suppression ----------------------------------------------------------------------


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy box NMS: indices of kept boxes, highest score first.

    Equals torchvision's `batched_nms(boxes.float(), scores, zeros, iou_threshold)` exactly,
    including the order of tied scores: float32 areas and IoUs computed the same way, IoU compared
    in float64 with `>`, a stable descending sort for the greedy pass and, for more than 1000
    boxes on CPU (4000 on other devices), torchvision's final re-sort of the kept indices with
    torch's default (unstable) sort. The greedy pass is vectorised: each kept box suppresses, in
    one step, every later box overlapping it by more than the threshold.
    """
    n = len(boxes)
    device = scores.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    x0, y0, x1, y1 = boxes.detach().cpu().float()[order].unbind(1)
    areas = (x1 - x0) * (y1 - y0)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, n)
        width = (torch.minimum(x1[i], x1[rest]) - torch.maximum(x0[i], x0[rest])).clamp(min=0)
        height = (torch.minimum(y1[i], y1[rest]) - torch.maximum(y0[i], y0[rest])).clamp(min=0)
        inter = width * height
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou.double() > iou_threshold
    kept = order[torch.tensor(keep, dtype=torch.int64)].to(device)
    if 4 * n > (4000 if device.type == "cpu" else 20000):
        # torchvision's per-class path: kept indices ascending, then re-sorted by score.
        kept = kept.sort().values
        kept = kept[scores[kept].sort(descending=True)[1]]
    return kept


# --- run-length encoding --------------------------------------------------------------------------


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO uncompressed RLE {"size": [H, W], "counts": [...]}: alternating run
    lengths of 0s and 1s in column-major order, starting with 0s (a leading 0 if the first pixel
    is set)."""
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [height, width], "counts": counts}


def uncompressed_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of `mask_to_uncompressed_rle`: (H, W) bool."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO compressed RLE with a str `counts` (JSON-serialisable), via pycocotools."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


# --- small-region cleanup -------------------------------------------------------------------------


def remove_small_regions(mask: np.ndarray, area_threshold: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than `area_threshold` pixels.

    Regions are 8-connected. Holes are the connected regions of the complement (so a small
    background touching the border counts too, as in the official code). If every island is
    small, the largest is kept. Returns the mask and whether it changed.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    fill_holes = mode == "holes"
    working = mask ^ fill_holes
    regions, n_regions = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = np.flatnonzero(sizes < area_threshold) + 1
    if len(small) == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(regions, small), True
    large = np.setdiff1d(np.arange(1, n_regions + 1), small)
    if len(large) == 0:
        large = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, large), True


def chunks(n: int, size: int, start: int = 0) -> list[slice]:
    """Slices covering range(start, n) in steps of `size`."""
    return [slice(i, min(i + size, n)) for i in range(start, n, size)]
