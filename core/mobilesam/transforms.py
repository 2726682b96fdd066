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
    return image[..., ::-1] if image_format == "BGR" else image


def model_input_prompts(transform: "ResizeLongestSide", original_size: tuple[int, ...], point_coords=None,
                        point_labels=None, box=None, mask_input=None):
    """Check `SamPredictor.predict`'s prompts and map them to model-input coordinates, batch of one:
    coords (1, N, 2) float64, labels (1, N), box (1, 4), mask_input (1, 1, h, w); None when absent."""
    coords = labels = None
    if point_coords is not None:
        if point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied.")
        point_coords, point_labels = np.asarray(point_coords), np.asarray(point_labels)
        if point_coords.ndim != 2 or point_coords.shape[1] != 2 or len(point_labels) != len(point_coords):
            raise ValueError(
                f"point_coords must be (N, 2) with N labels; got {point_coords.shape} and {point_labels.shape}"
            )
        coords = transform.apply_coords(point_coords, original_size)[None]
        labels = point_labels[None]
    if box is not None:
        box = np.asarray(box)
        if box.size != 4:
            raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {box.shape}")
        box = transform.apply_boxes(box, original_size).reshape(1, 4)
    if mask_input is not None:
        mask_input = np.asarray(mask_input, dtype=np.float32)
        mask_input = (mask_input[None] if mask_input.ndim == 2 else mask_input)[None]
    return coords, labels, box, mask_input


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
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)
