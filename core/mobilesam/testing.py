"""Helpers for tests and demos that must run without the official weights.

`save_random_checkpoint` writes a random-weight model as an official-format state dict, so every
code path that loads `mobile_sam.pt` can be exercised offline.
"""

import os
from pathlib import Path

import torch

from .atomic import atomic_write
from .build_sam import build_sam


def save_random_checkpoint(
    path: str | os.PathLike, model_type: str = "vit_t", seed: int = 0, image_size: int = 1024
) -> Path:
    """Build `model_type` with seeded random weights and save its state dict to `path`."""
    torch.manual_seed(seed)
    model = build_sam(model_type, image_size=image_size)
    with atomic_write(path, suffix=".part") as tmp:  # never leave a half-written checkpoint behind
        torch.save(model.state_dict(), tmp)
    return Path(path)
