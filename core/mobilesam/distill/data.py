"""SAM preprocessing of training images and the on-disk store of teacher embeddings.

Store layout (EMB_DIR), format 2:
    manifest.json              teacher type, checkpoint path + sha256, image size, preprocessing, chunk size
    chunks/<group>-<k>.npy     (n, 256, S/16, S/16) float16: the k-th run of `chunk_size` images of a group
    chunks/<group>-<k>.json    index: the n image names in row order, the teacher's precision

A group is an SA-1B shard (or an image folder's first sub-folder); a chunk is the unit of work of
embed-teacher (one process computes it, writes the array then the index, each atomically) and
of resume (a chunk whose index lists exactly its planned names is done). 110k images at 1024 px
are ~430 chunks of 256 (512 MiB each) instead of 110k small files. Format 1 (one
`embeddings/<name>.npy` per image) stays readable.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from .._types import PathLike
from ..atomic import atomic_write_bytes
from ..errors import MobileSamError
from ..image import to_rgb_uint8
from ..transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide
from .layout import CHUNK_DIR, MANIFEST_NAME
from .sources import group_of


def resize_image(image: np.ndarray, image_size: int) -> torch.Tensor:
    """A decoded image -> (3, h, w) float tensor, RGB, longest side resized to `image_size`.

    Normalisation and padding are left to `Sam.preprocess`, so teacher and student see exactly
    the pixels the predictor would give them.
    """
    resized = ResizeLongestSide(image_size).apply_image(to_rgb_uint8(image))
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


def plan_chunks(names: list[str], chunk_size: int) -> dict[str, list[str]]:
    """chunk id -> its image names: each group's sorted names cut into runs of `chunk_size`.

    Chunks never span groups, so adding or dropping a shard leaves every other shard's chunks as they were.
    """
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(group_of(name), []).append(name)
    return {
        f"{group}-{k // chunk_size:06d}": members[k : k + chunk_size]
        for group, members in groups.items()
        for k in range(0, len(members), chunk_size)
    }


class TeacherEmbeddingStore:
    """Teacher embeddings in chunk files with an index (format 2), plus a manifest."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self._locations: dict[str, tuple[str, int]] | None = None
        self._format: int | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._pid = None

    # -- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def manifest(self) -> dict:
        manifest = self.read_manifest()
        if manifest is None:
            raise MobileSamError(
                f"{self.root} holds no {MANIFEST_NAME}; create it with `mobilesam distill embed-teacher`"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        atomic_write_bytes(self.manifest_path, lambda tmp: Path(tmp).write_bytes(data))

    @property
    def format(self) -> int:
        if self._format is None:
            self._format = int(self.manifest().get("format", 1))
        return self._format

    # -- chunks (writing)
    def chunk_path(self, chunk: str, suffix: str) -> Path:
        return self.root / CHUNK_DIR / f"{chunk}{suffix}"

    def chunk_names(self, chunk: str) -> list[str] | None:
        """The names a finished chunk holds (None if it is not there)."""
        path = self.chunk_path(chunk, ".json")
        if not path.is_file() or not self.chunk_path(chunk, ".npy").is_file():
            return None
        return json.loads(path.read_text())["names"]

    def chunks(self) -> list[str]:
        folder = self.root / CHUNK_DIR
        return (
            sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))
            if folder.is_dir()
            else []
        )

    def save_chunk(self, chunk: str, names: list[str], embeddings: np.ndarray, precision: str) -> None:
        """embeddings: (n, 256, E, E) float16, row i for names[i]. The index, written last, marks the chunk done."""
        if embeddings.shape[0] != len(names) or embeddings.dtype != np.float16:
            raise ValueError(
                f"chunk {chunk}: {len(names)} names but embeddings {embeddings.shape} {embeddings.dtype}"
            )
        if not np.isfinite(embeddings).all():
            raise MobileSamError(
                f"the teacher gave non-finite embeddings in chunk {chunk} (first image {names[0]}); "
                "try --precision fp32"
            )

        def write_array(tmp):
            with open(tmp, "wb") as f:
                np.save(f, embeddings)

        index = {"names": names, "shape": list(embeddings.shape), "precision": precision}
        atomic_write_bytes(self.chunk_path(chunk, ".npy"), write_array)
        atomic_write_bytes(
            self.chunk_path(chunk, ".json"), lambda tmp: Path(tmp).write_text(json.dumps(index) + "\n")
        )

    def remove_chunk(self, chunk: str) -> None:
        self.chunk_path(chunk, ".json").unlink(
            missing_ok=True
        )  # the index first: never an index without data
        self.chunk_path(chunk, ".npy").unlink(missing_ok=True)

    # -- reading
    def locations(self) -> dict[str, tuple[str, int]]:
        """name -> (chunk, row), from every chunk index."""
        if self._locations is None:
            locations = {}
            for chunk in self.chunks():
                for row, name in enumerate(self.chunk_names(chunk) or []):
                    if name in locations:
                        raise MobileSamError(
                            f"{self.root}: {name} is in chunks {locations[name][0]} and {chunk}; "
                            "rerun embed-teacher on the same images to repair the store"
                        )
                    locations[name] = (chunk, row)
            self._locations = locations
        return self._locations

    def legacy_path(self, name: str) -> Path:
        return self.root / "embeddings" / (name + ".npy")

    def has(self, name: str) -> bool:
        if self.format == 1:
            return self.legacy_path(name).is_file()
        return name in self.locations()

    def _chunk_array(self, chunk: str) -> np.ndarray:
        if self._pid != os.getpid():  # memory maps are per process (DataLoader workers map their own)
            self._arrays, self._pid = {}, os.getpid()
        array = self._arrays.get(chunk)
        if array is None:
            path = self.chunk_path(chunk, ".npy")
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise MobileSamError(
                    f"damaged embedding chunk {path} ({exc}); delete it and its .json and rerun embed-teacher"
                ) from None
            expected = (len(self.chunk_names(chunk) or []), *self.manifest()["embedding_shape"])
            if array.shape != expected or array.dtype != np.float16:
                raise MobileSamError(
                    f"embedding chunk {path} is {array.shape} {array.dtype}, its index and the "
                    f"manifest say {expected} float16; delete it and rerun embed-teacher"
                )
            self._arrays[chunk] = array
        return array

    def load(self, name: str) -> torch.Tensor:
        """(256, E, E) float32."""
        if self.format == 1:
            return torch.from_numpy(np.load(self.legacy_path(name))).float()
        chunk, row = self.locations()[name]
        return torch.from_numpy(np.array(self._chunk_array(chunk)[row], dtype=np.float32))

    def __getstate__(self) -> dict:  # memory maps stay in the process that opened them
        return {**self.__dict__, "_arrays": {}, "_pid": None}


class DistillDataset(torch.utils.data.Dataset):
    """(resized image (3, h, w) float, teacher embedding (256, E, E) float32) pairs."""

    def __init__(self, source, store: TeacherEmbeddingStore, names: list[str], image_size: int) -> None:
        self.source = source
        self.store = store
        self.names = names
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        return resize_image(self.source.read(name), self.image_size), self.store.load(name)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images keep their own (h, w) until `Sam.preprocess` pads them; embeddings stack."""
    images = [image for image, _ in batch]
    return images, torch.stack([embedding for _, embedding in batch])
