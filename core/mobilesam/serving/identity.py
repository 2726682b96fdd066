"""`model_identity`: the one way a model is identified for caches (embeddings, exported models).

Two models get the same identity exactly when they compute the same embeddings: same architecture
(model type), same weights, same encoder input size. The identity is a plain string safe to use as
a file or folder name:

    "<model_type>-<sha256 of the checkpoint file>-in<input size>"   (from a checkpoint file)
    "<model_type>-w<sha256 of the state dict>-in<input size>"       (from an in-memory model)

with "-bf16" appended for an encoder running in bf16 (its embeddings differ from fp32's by ~5e-3).

Hashing a checkpoint file reads it once per process (remembered by path, size and mtime), so
asking again costs nothing.
"""

import hashlib
import re
import threading
from pathlib import Path

import torch

from .._types import PathLike

DEFAULT_INPUT_SIZE = 1024  # every SAM/MobileSAM encoder takes 1024x1024 inputs

_file_hashes: dict[tuple[str, int, int], str] = {}
_file_hashes_lock = threading.Lock()


def model_identity(
    model: torch.nn.Module | None = None,
    *,
    model_type: str | None = None,
    checkpoint: PathLike | None = None,
    input_size: int | None = None,
    checkpoint_sha256: str | None = None,
    precision: str | None = None,
) -> str:
    """Identity of a model for cache keys.

    Either `checkpoint` (a weights file, hashed by content: the file name does not matter) or
    `model` (an in-memory `Sam`, hashed over its state dict: names, shapes, dtypes, values) must be
    given; with both, the file wins (cheaper, and equal files give equal models).
    checkpoint_sha256: the sha256 of the checkpoint file when it is known without reading it (the
    published digest of official weights not downloaded yet); gives the identity the file will have.
    model_type: "vit_t", "vit_b", ...; default: read from `model` when it has a `model_type`, else "sam".
    input_size: the encoder's input side; default: `model.image_encoder.img_size`, else 1024.
    precision: the encoder's arithmetic, "fp32" or "bf16"; default: `model.precision`, else fp32.
    """
    if checkpoint is None and model is None and checkpoint_sha256 is None:
        raise ValueError("model_identity needs a checkpoint file or a model")
    if input_size is None:
        input_size = getattr(getattr(model, "image_encoder", None), "img_size", None) or DEFAULT_INPUT_SIZE
    if model_type is None:
        model_type = getattr(model, "model_type", None) or "sam"
    if checkpoint_sha256 is not None:
        digest = checkpoint_sha256.lower()
    elif checkpoint is not None:
        digest = file_sha256(checkpoint)
    else:
        digest = "w" + weights_sha256(model)
    if precision is None:
        precision = getattr(model, "precision", None) or "fp32"
    suffix = "-bf16" if precision == "bf16" else ""  # fp32 names stay those of existing caches
    return _safe(f"{model_type}-{digest}-in{int(input_size)}{suffix}")


def file_sha256(path: PathLike) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) in this process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _file_hashes_lock:
        known = _file_hashes.get(key)
    if known is not None:
        return known
    from ..weights import sha256sum

    value = sha256sum(path)
    with _file_hashes_lock:
        _file_hashes[key] = value
    return value


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names, shapes, dtypes, values); about 0.1 s for vit_t."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{flat.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
