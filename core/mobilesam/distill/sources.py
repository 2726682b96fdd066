"""Training and evaluation images by name: a folder of image files, or SA-1B tar shards read in place.

SA-1B is distributed as ~1000 `sa_NNNNNN.tar` files of ~11k `sa_K.jpg` images, each with a
`sa_K.json` of COCO-RLE object masks. `TarShards` indexes each tar once (member offsets, no
unpacking) and reads members by seeking, so any subset of shards can be used where it lies.

Names: a folder's images are named by their path below it (`sub/img.png`); a shard's by
`<shard stem>/<member>` (`sa_000000/sa_1.jpg`), which is also what the shard unpacked into
`DIR/sa_000000/` is called, so both give the same embeddings store keys.
"""

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .._types import PathLike
from ..errors import MobileSamError
from ..io import TIFF_SUFFIXES, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ROOT_GROUP = "_root"  # group of the images at the top of a folder


def list_images(image_dir: PathLike) -> list[str]:
    """Paths (relative to `image_dir`, '/'-separated, sorted) of every image below it."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return found


def group_of(name: str) -> str:
    """The unit of work and storage an image belongs to: its shard (or first sub-folder)."""
    return name.split("/", 1)[0] if "/" in name else ROOT_GROUP


def decode_annotations(data: bytes, name: str) -> list[dict]:
    """An SA-1B JSON ({"image": ..., "annotations": [{"segmentation": RLE, "bbox", ...}]}) -> annotations."""
    try:
        annotations = json.loads(data)["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MobileSamError(f"annotation file of {name} is not SA-1B JSON: {exc}") from None
    return annotations


def annotation_masks(annotations: list[dict], height: int, width: int, name: str) -> list[np.ndarray]:
    """COCO RLE segmentations -> (H, W) bool masks, checked against the image size."""
    from pycocotools import mask as mask_utils

    masks = []
    for annotation in annotations:
        rle = annotation["segmentation"]
        if tuple(rle["size"]) != (height, width):
            raise MobileSamError(
                f"an annotation of {name} is {rle['size'][0]}x{rle['size'][1]} but the image is "
                f"{height}x{width}"
            )
        masks.append(mask_utils.decode(rle).astype(bool))
    return masks


class ImageFolder:
    """Image files below a folder; SA-1B style `<image stem>.json` next to an image gives its objects."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.names = list_images(self.root)

    def read(self, name: str) -> np.ndarray:
        return read_image(self.root / name)

    def annotations(self, name: str) -> list[dict] | None:
        path = (self.root / name).with_suffix(".json")
        return decode_annotations(path.read_bytes(), name) if path.is_file() else None

    def describe(self) -> str:
        return str(self.root)


class TarShards:
    """Images (and their JSON annotations) inside uncompressed tar shards, read without unpacking."""

    def __init__(self, shards: Sequence[PathLike]) -> None:
        self.shards = {}
        for shard in sorted(Path(s) for s in shards):
            stem = shard.name[: -len(".tar")]
            if stem in self.shards:
                raise MobileSamError(f"two shards named {shard.name}: {self.shards[stem]} and {shard}")
            self.shards[stem] = shard
        # name -> (shard stem, byte offset, size), for images and for .json annotations
        self.members: dict[str, tuple[str, int, int]] = {}
        for stem, shard in self.shards.items():
            self.members.update(index_tar(shard, stem))
        self.names = sorted(n for n in self.members if n.lower().endswith(IMAGE_SUFFIXES))
        if not self.names:
            raise ValueError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, self.shards.values()))}"
            )
        self._files: dict[str, object] = {}
        self._pid = None

    def _bytes(self, name: str) -> bytes:
        stem, offset, size = self.members[name]
        if self._pid != os.getpid():  # a DataLoader worker: open files of its own
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(stem)
        if f is None:
            f = self._files[stem] = open(self.shards[stem], "rb")
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise MobileSamError(f"shard {self.shards[stem]} is truncated (while reading {name})")
        return data

    def read(self, name: str) -> np.ndarray:
        data = self._bytes(name)
        try:
            if name.lower().endswith(TIFF_SUFFIXES):
                return tifffile.imread(io.BytesIO(data))
            with Image.open(io.BytesIO(data)) as im:
                if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                return np.array(im)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise ValueError(f"could not read image {name} of {self.shards[group_of(name)]}: {exc}") from None

    def annotations(self, name: str) -> list[dict] | None:
        json_name = name.rsplit(".", 1)[0] + ".json"
        return decode_annotations(self._bytes(json_name), name) if json_name in self.members else None

    def describe(self) -> str:
        return (
            f"{len(self.shards)} shard(s) ({', '.join(self.shards)})"
            if len(self.shards) <= 4
            else f"{len(self.shards)} shards ({next(iter(self.shards))} ...)"
        )

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_files": {}, "_pid": None}


def index_tar(shard: Path, stem: str) -> dict[str, tuple[str, int, int]]:
    """`<stem>/<member>` -> (stem, data offset, size) of each regular file (headers only are read)."""
    members = {}
    try:
        with tarfile.open(shard, "r:") as tar:  # "r:": uncompressed only, so members can be read by offset
            for member in tar:
                if member.isfile():
                    members[f"{stem}/{member.name.removeprefix('./')}"] = (
                        stem,
                        member.offset_data,
                        member.size,
                    )
    except (tarfile.TarError, OSError) as exc:
        raise MobileSamError(f"cannot read tar shard {shard}: {exc}") from None
    return members


def open_source(paths: PathLike | Sequence[PathLike]) -> ImageFolder | TarShards:
    """One image folder, or tar shards: given as files, or as a folder holding `*.tar` files."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise MobileSamError("no images given")
    shards = []
    for path in paths:
        if path.name.endswith(".tar"):
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} does not exist")
            shards.append(path)
        elif path.is_dir() and any(path.glob("*.tar")):
            shards.extend(path.glob("*.tar"))
        elif len(paths) == 1:
            return ImageFolder(path)
        elif not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        else:
            raise MobileSamError(
                f"{path} is neither a .tar shard nor a folder of them; several --images paths "
                "must all be shards (a folder of loose images is given alone)"
            )
    return TarShards(shards)
