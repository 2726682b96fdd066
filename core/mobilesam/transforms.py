"""Resizing to the model's input: longest side to `target_length`, as SAM's ResizeLongestSide.

torch is imported only by the `*_torch` methods, so the torch-free ONNX predictor can use the
numpy ones.
"""

from __future__ import annotations

from copy import deepcopy
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# SAM's pixel normalisation (RGB, 0-255 scale).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def rgb_image(image: np.ndarray, image_format: str) -> np.ndarray:
    """Check `set_image`'s input, an (H, W, 3) uint8 image in `image_format`, and return it as RGB."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"set_image needs an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}; "
            "convert other images with mobilesam.image.to_rgb_uint8"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape} has no pixels")
    return image[..., ::-1] if image_format == "BGR" else image


# Prompt limits, checked by `model_input_prompts` for every predictor (torch, ONNX, torch-free).
# Each point is a token the decoder's attention compares with every other one and with the
# 64x64 image embedding: 10,000 points need ~7 GB. SAM was trained with at most a few dozen.
MAX_POINTS_PER_PROMPT = 256
# Point labels SAM knows: 1 object, 0 background, -1 padding (ignored), 2 / 3 box corners.
POINT_LABELS = (-1, 0, 1, 2, 3)


def model_input_prompts(
    transform: ResizeLongestSide,
    original_size: tuple[int, ...],
    point_coords=None,
    point_labels=None,
    box=None,
    mask_input=None,
):
    """Check `SamPredictor.predict`'s prompts and map them to model-input coordinates, batch of one:
    coords (1, N, 2) float64, labels (1, N), box (1, 4), mask_input (1, 1, h, w); None when absent.

    Raises ValueError naming the argument for: coordinates that are not finite numbers, more than
    `MAX_POINTS_PER_PROMPT` points, labels outside `POINT_LABELS`, a box with x1 < x0 or y1 < y0,
    and a mask_input that is not (1, h, w) / (h, w) finite logits (h = w = input size / 4).
    """
    coords = labels = None
    if point_coords is not None:
        if point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied.")
        point_coords = finite_array(point_coords, "point_coords")
        point_labels = _point_labels(point_labels)
        if point_coords.ndim != 2 or point_coords.shape[1] != 2 or len(point_labels) != len(point_coords):
            raise ValueError(
                f"point_coords must be (N, 2) with N labels; got {point_coords.shape} and {point_labels.shape}"
            )
        if len(point_coords) > MAX_POINTS_PER_PROMPT:
            raise ValueError(
                f"point_coords has {len(point_coords)} points; at most {MAX_POINTS_PER_PROMPT} "
                "are allowed in one prompt"
            )
        coords = transform.apply_coords(point_coords, original_size)[None]
        if not np.isfinite(coords).all():  # finite pixels, but beyond float range once scaled
            raise ValueError("point_coords are too large to be pixel coordinates of this image")
        labels = point_labels[None]
    if box is not None:
        box = finite_array(box, "box")
        if box.size != 4:
            raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {box.shape}")
        x0, y0, x1, y1 = box.reshape(-1)
        if x1 < x0 or y1 < y0:
            raise ValueError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted: it needs x1 >= x0 and y1 >= y0"
            )
        box = transform.apply_boxes(box, original_size).reshape(1, 4)
        if not np.isfinite(box).all():
            raise ValueError("box is too large to be pixel coordinates of this image")
    if mask_input is not None:
        mask_input = _mask_input(mask_input, transform.target_length // 4)
    return coords, labels, box, mask_input


def finite_array(values, name: str) -> np.ndarray:
    """`values` as a float64 array, or ValueError naming `name` if they are not finite numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r:.80}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has values that are not finite numbers (NaN or infinity)")
    return array


def _point_labels(values) -> np.ndarray:
    labels = finite_array(values, "point_labels")
    if labels.ndim != 1:
        raise ValueError(f"point_labels must be (N,), got shape {labels.shape}")
    bad = labels[~np.isin(labels, POINT_LABELS)]
    if bad.size:
        raise ValueError(
            f"point_labels must be 1 (object) or 0 (background) (or -1, 2, 3 as in SAM); got {bad[0]:g}"
        )
    return labels.astype(np.int64)


def _mask_input(values, size: int) -> np.ndarray:
    mask = finite_array(values, "mask_input").astype(np.float32)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape != (1, size, size):
        raise ValueError(
            f"mask_input must be ({size}, {size}) or (1, {size}, {size}) low-res logits "
            f"(the third output of predict), got shape {np.shape(values)}"
        )
    return mask[None]


class ResizeLongestSide:
    """Resize images and map coordinates so the longest side is `target_length` pixels."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear through PIL like the official code."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) (x, y) in the original image -> in the resized image (float64)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) XYXY boxes -> (N, 4) in the resized image."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized with antialiased bilinear interpolation."""
        import torch.nn.functional as F

        h, w = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        import torch

        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        scale = long_side_length * 1.0 / max(oldh, oldw)
        # At least one pixel: a 1x3000 image becomes 1x1024, not 0x1024 (the official code fails).
        return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))
