"""Verified embedding stores on disk: the one place for "written atomically, verified when read,
a bad entry is recomputed, bounded by bytes with the oldest entries evicted first, temporary files
of a killed writer removed".

Two layouts share these rules (`check_embedding`, `checksum`, `evict_oldest`, `remove_stale_partials`):

- `EmbeddingStore`: one torch file per (image identity, model id), for servers (the Label Studio
  backend and `mobilesam labelstudio precompute`, another process sharing the folder).
  `<dir>/<sha256[:2]>/<sha256>.pt`, holding the key, the (1, C, h, w) features, their sha256 and
  the sizes. Read back only if the key matches, the checksum (when present: files written before
  it was added have none) matches and the features are a finite (1, C, h, w) embedding; a bad file
  is removed. Budget: once over `max_bytes`, the oldest files go until 90% of it is left.
- `SliceEmbeddingStore`: a zarr group per model holding one (C, h, w) float32 array per slice hash,
  for volumes (`mobilesam.volume.VolumeEmbeddings`) and the napari plugin's content-addressed
  cache (`<cache>/embeddings.zarr`). The sha256 and the "complete" mark are written last; an entry
  is read back only when complete, matching its checksum and finite (a deleted zarr chunk would
  read back as zeros). Budget: after each save the least recently used arrays of all models go
  until the store fits.
"""

import hashlib
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .._types import PathLike
from ..atomic import process_alive
from ..errors import MobileSamError
from ..predictor import EmbeddingState

logger = logging.getLogger(__name__)

EmbeddingKey = tuple[str, str]  # (image identity, model id)
PARTIAL_MAX_AGE_S = 60.0  # a live writer renames its temporary file within a second


# ---- shared rules -------------------------------------------------------------------------------
def check_embedding(features: torch.Tensor) -> None:
    """Raise ValueError unless `features` is a finite (1, C, h, w) embedding (never serve garbage)."""
    if features.ndim != 4 or features.shape[0] != 1 or not bool(features.isfinite().all()):
        raise ValueError(f"features of shape {tuple(features.shape)} are not a finite (1, C, h, w) embedding")


def checksum(data: np.ndarray | torch.Tensor) -> str:
    """sha256 of the array's bytes in C order (any dtype, bfloat16 included)."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def remove_stale_partials(
    paths: Iterable[Path],
    writer_pid: Callable[[Path], int | None] | None = None,
    min_age_s: float = PARTIAL_MAX_AGE_S,
) -> list[Path]:
    """Remove temporary files of interrupted writes; returns those removed.

    A file whose writer is known (`writer_pid(path)`) and gone is removed at once; this process's
    own are kept; any other is removed once older than `min_age_s` (a live writer, e.g. another
    process sharing the store, may be writing it right now).
    """
    removed = []
    now = time.time()
    for path in paths:
        pid = writer_pid(path) if writer_pid is not None else None
        try:
            if pid == os.getpid():
                continue
            if (pid is None or process_alive(pid)) and now - path.stat().st_mtime <= min_age_s:
                continue
            path.unlink()
            removed.append(path)
            logger.info("removed %s, left by an interrupted write", path)
        except OSError:
            continue  # renamed or removed by its writer meanwhile
    return removed


def evict_oldest(entries: Iterable[tuple[float, Path, int]], budget: float, keep: Path | None = None) -> int:
    """Delete entries (mtime, file or folder, bytes), oldest first, until their total is at most
    `budget`; `keep` (the entry just written) stays. Returns the bytes left."""
    entries = sorted(entries, key=lambda entry: entry[0])
    total = sum(size for _, _, size in entries)
    for _, path, size in entries:
        if total <= budget:
            break
        if path == keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        total -= size
    return total


def touch(path: Path) -> None:
    """Mark an entry recently used (evicted last)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves embeddings


def _file_entries(paths: Iterable[Path]) -> list[tuple[float, Path, int]]:
    """(mtime, path, size) of the files that still exist (another process may be evicting too)."""
    entries = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime, path, stat.st_size))
    return entries


# ---- one file per (image, model) ----------------------------------------------------------------
class EmbeddingStore:
    """Embeddings on disk, one file per (image identity, model id), written atomically."""

    def __init__(self, directory: PathLike, max_bytes: int = 10240 << 20) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # counted lazily: scanning a big directory at import is slow
        if self.directory.is_dir():
            remove_stale_partials(self.directory.glob("*/*.part"), writer_pid=_part_writer_pid)

    def path(self, key: EmbeddingKey) -> Path:
        digest = hashlib.sha256("\n".join(key).encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.pt"

    def __contains__(self, key: EmbeddingKey) -> bool:
        return self.path(key).is_file()

    def load(self, key: EmbeddingKey) -> EmbeddingState | None:
        """The stored state, or None if absent or unreadable (a broken file is removed and logged)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(data["key"]) != tuple(key):  # a sha256 collision is unthinkable; a foreign file is not
                return None
            features = data["features"]
            if "sha256" in data and checksum(features) != data["sha256"]:
                raise ValueError("the features fail their checksum")
            check_embedding(features)
            return EmbeddingState(features, tuple(data["original_size"]), tuple(data["input_size"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a cache miss, never an outage
            logger.warning("ignoring unreadable embedding file %s (%s); it is removed", path, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: EmbeddingKey, state: EmbeddingState) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Named with the writer's pid, so a store opened later knows whether the writer is gone.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        features = state.features.contiguous()
        try:
            torch.save(
                {
                    "key": list(key),
                    "features": features,
                    "sha256": checksum(features),
                    "original_size": list(state.original_size),
                    "input_size": list(state.input_size),
                },
                tmp,
            )
            os.replace(tmp, path)  # readers never see half a file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._account(path.stat().st_size)
        return path

    def _account(self, added: int) -> None:
        with self._lock:
            if self._bytes is None:
                self._bytes = sum(size for _, _, size in _file_entries(self.directory.glob("*/*.pt")))
            else:
                self._bytes += added
            if self._bytes > self.max_bytes:
                # The least recently written files go until 90% of the budget is left.
                self._bytes = evict_oldest(_file_entries(self.directory.glob("*/*.pt")), 0.9 * self.max_bytes)


def _part_writer_pid(part: Path) -> int | None:
    """The pid in `<name>.pt.<pid>.<thread>.part`, or None for a name not written by `save`."""
    try:
        return int(part.name.split(".")[-3])
    except (IndexError, ValueError):
        return None


# ---- one zarr array per slice -------------------------------------------------------------------
class SliceEmbeddingStore:
    """A zarr group of slice embeddings for one model: one (256, 64, 64) float32 array per slice hash.

    Every entry carries the sha256 of its data, written last with the "complete" mark, and is
    verified when read: a deleted, truncated, emptied or garbage chunk (zarr would read a deleted
    one back as zeros), non-finite values or damaged metadata are reported with a warning and
    recomputed, never served. zarr's temporary `*.partial` files left by a killed writer are
    removed on opening.
    """

    def __init__(self, root: Path, model_key: str, max_bytes: int | None = None) -> None:
        try:
            import zarr
        except ImportError:
            raise MobileSamError(
                "an embedding cache on disk needs zarr: pip install 'napari-mobilesam[volume]'"
            ) from None
        if root.exists() and not root.is_dir():
            raise MobileSamError(f"embedding cache {root} is a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._model_dir = root / model_key
        self._max_bytes = max_bytes
        remove_stale_partials(self._model_dir.rglob("*.partial"))
        try:
            self._group = zarr.open_group(str(root), mode="a").require_group(model_key)
        except Exception as exc:  # noqa: BLE001 - zarr raises JSON, codec and its own errors for damaged metadata
            warnings.warn(
                f"embedding cache {root}: damaged group metadata ({exc}); rewriting it", stacklevel=3
            )
            for meta in (root / "zarr.json", root / model_key / "zarr.json"):
                meta.unlink(missing_ok=True)  # entries below stay and are verified one by one
            self._group = zarr.open_group(str(root), mode="a").require_group(model_key)

    def contains(self, name: str) -> bool:
        """Whether a complete, checksummed entry exists (its data are verified by `load`)."""
        try:
            return (
                name in self._group
                and "sha256" in self._group[name].attrs
                and bool(self._group[name].attrs.get("complete", False))
            )
        except Exception:  # noqa: BLE001 - damaged metadata: not usable, `load` will say so and recompute
            return False

    def load(self, name: str, where: str = "") -> EmbeddingState | None:
        """The verified entry `name`, or None (with a warning naming `where` if it was damaged)."""
        try:
            if name not in self._group:
                if not (self.root / self._group.path / name).exists():
                    return None
                raise ValueError("its zarr.json is missing")  # chunks without metadata
            array = self._group[name]
            attrs = dict(array.attrs)
            if not attrs.get("complete", False):
                return None  # interrupted write: never read, overwritten by the next save
            data = np.ascontiguousarray(np.asarray(array[...], dtype=np.float32))
            state = EmbeddingState(
                torch.from_numpy(data)[None], tuple(attrs["original_size"]), tuple(attrs["input_size"])
            )
            problem = _slice_problem(data, attrs, state)
        except Exception as exc:  # noqa: BLE001 - zarr raises codec, JSON, key and OS errors for damaged entries
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
        if problem is None:
            touch(self._model_dir / name)  # recently used: evicted last
            return state
        warnings.warn(
            f"embedding cache {self.root}: the entry of {where or name} {problem}; recomputing it",
            stacklevel=3,
        )
        return None

    def save(self, name: str, state: EmbeddingState) -> None:
        data = np.ascontiguousarray(state.features.detach().cpu().numpy().astype(np.float32)[0])
        create = getattr(self._group, "create_array", None) or self._group.create_dataset  # zarr 3 / zarr 2
        try:
            array = create(name, shape=data.shape, dtype="float32", chunks=data.shape, overwrite=True)
        except Exception:  # noqa: BLE001 - the old entry's metadata is too damaged for zarr to delete it
            shutil.rmtree(self.root / self._group.path / name, ignore_errors=True)
            array = create(name, shape=data.shape, dtype="float32", chunks=data.shape, overwrite=True)
        array[...] = data
        # Written last: a crash mid-write leaves an array without it, which is never read back.
        array.attrs.update(
            {
                "original_size": list(state.original_size),
                "input_size": list(state.input_size),
                "sha256": checksum(data),
                "complete": True,
            }
        )
        if self._max_bytes is not None:
            self._evict(keep=self._model_dir / name)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used slice arrays (any model) until the store fits its budget."""
        entries = []
        for model_dir in (p for p in self.root.iterdir() if p.is_dir()):
            for array_dir in (p for p in model_dir.iterdir() if p.is_dir()):
                size = sum(f.stat().st_size for f in array_dir.rglob("*") if f.is_file())
                entries.append((array_dir.stat().st_mtime, array_dir, size))
        evict_oldest(entries, self._max_bytes, keep=keep)


def _slice_problem(data: np.ndarray, attrs: dict, state: EmbeddingState) -> str | None:
    """What is wrong with a complete slice entry, or None."""
    if "sha256" not in attrs:
        return "has no checksum"
    if checksum(data) != attrs["sha256"]:
        return "fails its checksum"
    try:
        check_embedding(state.features)
    except ValueError as exc:
        return f"holds {exc}"
    return None
