"""Images, SAM preprocessing and the on-disk store of teacher embeddings.

Store layout (EMB_DIR):
    manifest.json            teacher type, checkpoint path + sha256, image size, preprocessing
    embeddings/<rel>.npy     one (256, S/16, S/16) float16 array per image, <rel> = path under the image dir
"""

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import MobileSamError
from ..image import to_rgb_uint8
from ..io import read_image
from ..transforms import PIXEL_MEAN, PIXEL_STD
from ..transforms import ResizeLongestSide

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MANIFEST_NAME = "manifest.json"
STORE_FORMAT = 1


def list_images(image_dir: PathLike) -> list[str]:
    """Paths (relative to `image_dir`, '/'-separated, sorted) of every image below it."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return found


def load_resized_image(path: PathLike, image_size: int) -> torch.Tensor:
    """An image file -> (3, h, w) float tensor, RGB, longest side resized to `image_size`.

    Normalisation and padding are left to `Sam.preprocess`, so teacher and student see exactly
    the pixels the predictor would give them.
    """
    rgb = to_rgb_uint8(read_image(path))
    resized = ResizeLongestSide(image_size).apply_image(rgb)
    return torch.as_tensor(resized).permute(2, 0, 1).contiguous().float()


def preprocessing_description(image_size: int) -> dict:
    return {
        "color": "RGB uint8 via mobilesam.image.to_rgb_uint8 (0.5-99.5 percentile stretch for non-uint8)",
        "resize_longest_side": image_size,
        "resize": "bilinear (PIL), as ResizeLongestSide.apply_image",
        "pixel_mean": list(PIXEL_MEAN),
        "pixel_std": list(PIXEL_STD),
        "pad": "zeros after normalisation, bottom/right, to a square",
    }


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename into place: no half-written file survives an interruption."""
    with atomic_write(path, suffix=".part") as tmp:
        write(tmp)


class EmbeddingStore:
    """Teacher embeddings of an image folder, one float16 `.npy` per image, plus a manifest."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def read_manifest(self) -> Optional[dict]:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def manifest(self) -> dict:
        manifest = self.read_manifest()
        if manifest is None:
            raise MobileSamError(f"{self.root} holds no {MANIFEST_NAME}; create it with "
                                 "`mobilesam distill embed-teacher`")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        atomic_write_bytes(self.manifest_path, lambda tmp: Path(tmp).write_bytes(data))

    def path(self, rel: str) -> Path:
        return self.root / "embeddings" / (rel + ".npy")

    def has(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def save(self, rel: str, embedding: torch.Tensor) -> None:
        """embedding: (256, E, E) -> float16 file."""
        array = embedding.detach().to("cpu", torch.float16).numpy()

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write_bytes(self.path(rel), write)

    def load(self, rel: str) -> torch.Tensor:
        """(256, E, E) float32."""
        return torch.from_numpy(np.load(self.path(rel))).float()


class DistillDataset(torch.utils.data.Dataset):
    """(resized image (3, h, w) float, teacher embedding (256, E, E) float32) pairs."""

    def __init__(self, image_dir: PathLike, store: EmbeddingStore, names: list[str], image_size: int) -> None:
        self.image_dir = Path(image_dir)
        self.store = store
        self.names = names
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        return load_resized_image(self.image_dir / name, self.image_size), self.store.load(name)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images keep their own (h, w) until `Sam.preprocess` pads them; embeddings stack."""
    images = [image for image, _ in batch]
    return images, torch.stack([embedding for _, embedding in batch])
