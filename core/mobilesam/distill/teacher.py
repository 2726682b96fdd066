"""`embed_teacher`: run a SAM image encoder once per image and store its embeddings."""

import os
import threading
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ..build_sam import build_sam, detect_model_type, read_state_dict
from ..errors import Cancelled, MobileSamError
from ..weights import resolve_checkpoint, sha256sum
from .data import STORE_FORMAT, EmbeddingStore, list_images, load_resized_image, preprocessing_description

PathLike = Union[str, os.PathLike]


def teacher_manifest(teacher_type: str, checkpoint: Path, image_size: int) -> dict:
    embedding_size = image_size // 16
    return {
        "format": STORE_FORMAT,
        "teacher": {"model_type": teacher_type, "checkpoint": str(checkpoint.resolve()),
                    "sha256": sha256sum(checkpoint)},
        "image_size": image_size,
        "embedding_shape": [256, embedding_size, embedding_size],
        "dtype": "float16",
        "preprocessing": preprocessing_description(image_size),
    }


def check_same_teacher(existing: dict, wanted: dict, root: Path) -> None:
    """A store holds one teacher's embeddings at one size: never mix two in it."""
    for key, label in ((("teacher", "sha256"), "teacher checkpoint"), (("image_size",), "image size"),
                       (("teacher", "model_type"), "teacher type")):
        old, new = existing, wanted
        for k in key:
            old, new = old.get(k), new.get(k)
        if old != new:
            raise MobileSamError(f"{root} already holds embeddings of another {label} ({old} there, {new} now); "
                                 "use a new --out folder")


def embed_teacher(teacher_type: str, checkpoint: Optional[PathLike], image_dir: PathLike, out_dir: PathLike,
                  image_size: int = 1024, device: Optional[str] = None, allow_download: bool = True,
                  progress: Optional[Callable[[int, int], None]] = None,
                  cancel: Optional[threading.Event] = None) -> dict:
    """Store the teacher's (256, S/16, S/16) embedding of every image of `image_dir` in `out_dir`.

    Resumable: images whose embedding file exists are skipped. Returns counts
    {"images", "computed", "skipped"}.
    """
    checkpoint = resolve_checkpoint(teacher_type, checkpoint, allow_download=allow_download)
    found = detect_model_type(read_state_dict(checkpoint))
    if found != teacher_type:
        raise MobileSamError(f"teacher checkpoint {checkpoint} is {found}, not {teacher_type}")
    names = list_images(image_dir)
    store = EmbeddingStore(out_dir)
    manifest = teacher_manifest(teacher_type, Path(checkpoint), image_size)
    existing = store.read_manifest()
    if existing is not None:
        check_same_teacher(existing, manifest, store.root)
    else:
        store.write_manifest(manifest)

    todo = [name for name in names if not store.has(name)]
    if progress:
        progress(len(names) - len(todo), len(names))
    if todo:
        model = build_sam(teacher_type, checkpoint, image_size=image_size).to(device or "cpu")
        encode_images(model, image_dir, store, todo, len(names), progress, cancel)
    return {"images": len(names), "computed": len(todo), "skipped": len(names) - len(todo)}


@torch.inference_mode()
def encode_images(model, image_dir: PathLike, store: EmbeddingStore, names: list[str], total: int,
                  progress, cancel) -> None:
    done = total - len(names)
    for name in names:
        if cancel is not None and cancel.is_set():
            raise Cancelled("teacher embedding cancelled")
        image = load_resized_image(Path(image_dir) / name, model.img_size).to(model.device)
        embedding = model.image_encoder(model.preprocess(image)[None])[0]
        store.save(name, embedding)
        done += 1
        if progress:
            progress(done, total)
