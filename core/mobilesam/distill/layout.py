"""File names and formats shared by the distillation steps (embed-teacher, train, export, evaluate).

Kept apart so that no step imports another just for a constant.
"""

from pathlib import Path

import torch

MANIFEST_NAME = "manifest.json"  # embedding store: teacher, image size, preprocessing
STORE_FORMAT = 2  # 1: one .npy per image; 2: chunks of N images with an index
CHUNK_DIR = "chunks"  # format 2: chunks/<group>-<k>.npy + chunks/<group>-<k>.json
CHECKPOINT_NAME = "ckpt.pt"  # run folder: student, optimizer, step, config
METRICS_NAME = "metrics.csv"  # run folder: training loss, validation MSE, throughput
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")  # the parts a student borrows from its teacher


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)
