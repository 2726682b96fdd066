"""`embed_teacher`: run a SAM image encoder once per image and store its embeddings, on one or many devices.

Under torchrun every process takes its share of the unfinished chunks (see `data.TeacherEmbeddingStore`),
reads their images with a prefetching DataLoader, encodes them in batches (bf16/fp16 autocast on
GPU, fp32 on CPU) and writes each chunk atomically when it is complete. A killed or preempted run
loses at most the chunks in progress: rerunning recomputes only chunks that are not finished.
"""

import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from .._types import PathLike
from ..build_sam import build_sam, detect_model_type, read_state_dict
from ..errors import MobileSamError
from ..progress import ProgressCallback, raise_if_cancelled
from ..weights import resolve_checkpoint, sha256sum
from .data import TeacherEmbeddingStore, plan_chunks, preprocessing_description, resize_image
from .distributed import process_group
from .layout import STORE_FORMAT
from .sources import open_source

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Processes meet only at the start and the end; the last may finish a chunk or two after the first.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_manifest(teacher_type: str, checkpoint: Path, image_size: int, chunk_size: int) -> dict:
    embedding_size = image_size // 16
    return {
        "format": STORE_FORMAT,
        "teacher": {
            "model_type": teacher_type,
            "checkpoint": str(checkpoint.resolve()),
            "sha256": sha256sum(checkpoint),
        },
        "image_size": image_size,
        "embedding_shape": [256, embedding_size, embedding_size],
        "dtype": "float16",
        "chunk_size": chunk_size,
        "preprocessing": preprocessing_description(image_size),
    }


def check_same_teacher(existing: dict, wanted: dict, root: Path) -> None:
    """A store holds one teacher's embeddings at one size, in one layout: never mix two in it."""
    for key, label in (
        (("teacher", "sha256"), "teacher checkpoint"),
        (("image_size",), "image size"),
        (("teacher", "model_type"), "teacher type"),
        (("format",), "store format"),
        (("chunk_size",), "chunk size"),
    ):
        old, new = existing, wanted
        for k in key:
            old, new = old.get(k), new.get(k)
        if old != new:
            raise MobileSamError(
                f"{root} already holds embeddings of another {label} ({old} there, {new} now); "
                "use a new --out folder"
            )


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU (no fast half-precision path there)."""
    if precision not in PRECISIONS:
        raise MobileSamError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type != "cuda":
        if precision in AUTOCAST_DTYPES:
            raise MobileSamError(
                f"--precision {precision} needs a CUDA device; the teacher runs in fp32 on {device}"
            )
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def embed_teacher(
    teacher_type: str,
    checkpoint: PathLike | None,
    images: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    image_size: int = 1024,
    device: str | None = None,
    allow_download: bool = True,
    batch_size: int = 8,
    num_workers: int = 2,
    chunk_size: int = 256,
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """Store the teacher's (256, S/16, S/16) embedding of every image of `images` (a folder or tar shards).

    Resumable per chunk. Under torchrun, call it in every process: each encodes its share.
    Returns counts over all processes {"images", "chunks", "computed", "skipped", "computed_chunks", "world"}.
    """
    checkpoint = Path(resolve_checkpoint(teacher_type, checkpoint, allow_download=allow_download))
    found = detect_model_type(read_state_dict(checkpoint))
    if found != teacher_type:
        raise MobileSamError(f"teacher checkpoint {checkpoint} is {found}, not {teacher_type}")
    if batch_size < 1 or chunk_size < 1:
        raise MobileSamError("batch size and chunk size must be at least 1")
    source = open_source(images)
    store = TeacherEmbeddingStore(out_dir)
    with process_group(device, COLLECTIVE_TIMEOUT) as procs:
        precision = resolve_precision(precision, procs.device)
        if procs.master:
            manifest = teacher_manifest(teacher_type, checkpoint, image_size, chunk_size)
            existing = store.read_manifest()
            if existing is not None:
                check_same_teacher(existing, manifest, store.root)
            else:
                store.write_manifest(manifest)
        procs.barrier()  # manifest checked; every process now sees the same finished chunks
        plan = plan_chunks(source.names, chunk_size)
        todo = [chunk for chunk, names in plan.items() if store.chunk_names(chunk) != names]
        mine = todo[procs.rank :: procs.world]
        if progress:
            progress(0, sum(len(plan[c]) for c in mine))
        if mine:
            model = build_sam(teacher_type, checkpoint, image_size=image_size).to(procs.device).eval()
            encode_chunks(
                model,
                source,
                store,
                {c: plan[c] for c in mine},
                precision,
                batch_size,
                num_workers,
                progress,
                cancel,
            )
        computed = procs.sum([sum(len(plan[c]) for c in mine)])[0]
        procs.barrier()
        if procs.master:
            drop_stale_chunks(store, plan)
    total = len(source.names)
    return {
        "images": total,
        "chunks": len(plan),
        "computed": int(computed),
        "skipped": total - int(computed),
        "computed_chunks": len(todo),
        "world": procs.world,
    }


def drop_stale_chunks(store: TeacherEmbeddingStore, plan: dict[str, list[str]]) -> None:
    """Chunks of a planned group beyond its last planned chunk (the group shrank): their images moved."""
    groups = {chunk.rsplit("-", 1)[0] for chunk in plan}
    for chunk in store.chunks():
        if chunk.rsplit("-", 1)[0] in groups and chunk not in plan:
            store.remove_chunk(chunk)


class ChunkImages(torch.utils.data.Dataset):
    def __init__(self, source, names: list[str], image_size: int) -> None:
        self.source, self.names, self.image_size = source, names, image_size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        return resize_image(self.source.read(self.names[index]), self.image_size)


@torch.inference_mode()
def encode_chunks(
    model,
    source,
    store: TeacherEmbeddingStore,
    chunks: dict[str, list[str]],
    precision: str,
    batch_size: int,
    num_workers: int,
    progress,
    cancel,
) -> None:
    """Encode `chunks` in order, batches never crossing a chunk, and save each chunk once it is complete."""
    names = [name for members in chunks.values() for name in members]
    batches, start = [], 0
    for members in chunks.values():  # index batches within each chunk
        batches.extend(
            list(range(start + k, start + min(k + batch_size, len(members))))
            for k in range(0, len(members), batch_size)
        )
        start += len(members)
    loader = torch.utils.data.DataLoader(
        ChunkImages(source, names, model.img_size),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=list,
        pin_memory=model.device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
    autocast = (
        torch.autocast("cuda", dtype=AUTOCAST_DTYPES[precision]) if precision in AUTOCAST_DTYPES else None
    )
    pending = iter(chunks.items())
    chunk, members = next(pending)
    rows: list[np.ndarray] = []
    done = 0
    for images in loader:
        raise_if_cancelled(cancel, "teacher embedding cancelled; rerun to resume")
        batch = torch.stack([model.preprocess(image.to(model.device, non_blocking=True)) for image in images])
        if autocast is not None:
            with autocast:
                embeddings = model.image_encoder(batch)
        else:
            embeddings = model.image_encoder(batch)
        rows.extend(embeddings.float().cpu().to(torch.float16).numpy())
        done += len(images)
        if len(rows) == len(members):
            store.save_chunk(chunk, members, np.stack(rows), precision)
            rows = []
            chunk, members = next(pending, (None, None))
        if progress:
            progress(done, len(names))
