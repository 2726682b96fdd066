"""Image embeddings kept between clicks, so only the first click on an image pays for the encoder.

`EmbeddingCache`: the core's thread-safe memory LRU (`mobilesam.serving.EmbeddingCache`), bounded
by entry count and bytes, keyed here by (image identity, model id). Concurrent misses for the same
key compute once: the other requests wait for that result instead of encoding the same image again.
`EmbeddingStore`: the same states on disk, shared with `mobilesam labelstudio precompute` (another
process) and surviving restarts; bounded by bytes, oldest files removed first. Entries are verified
when read (key, shapes, finite values); a bad one is removed and recomputed. Temporary `.part` files
left by a killed writer are removed when the store is opened.
"""

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from mobilesam.predictor import EmbeddingState
from mobilesam.serving.memory_cache import EmbeddingCache  # noqa: F401 - the backend's memory LRU

logger = logging.getLogger(__name__)

EmbeddingKey = tuple[str, str]  # (image identity, model id)


class EmbeddingStore:
    """Embeddings on disk, one file per (image identity, model id), written atomically."""

    def __init__(self, directory: os.PathLike, max_bytes: int = 10240 << 20) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # counted lazily: scanning a big directory at import is slow
        self._remove_stale_parts()

    def _remove_stale_parts(self, min_age_s: float = 60.0) -> None:
        """Remove `.part` files of writers that are gone: killed mid-write, or older than `min_age_s`
        (another live process, e.g. precompute, may be writing one right now)."""
        if not self.directory.is_dir():
            return
        now = time.time()
        for part in self.directory.glob("*/*.part"):
            try:
                pid = int(part.name.split(".")[-3])
            except (IndexError, ValueError):
                pid = None
            try:
                if pid == os.getpid() or (
                    pid is not None and _alive(pid) and now - part.stat().st_mtime < min_age_s
                ):
                    continue
                part.unlink()
                logger.info("removed %s, left by an interrupted write", part)
            except OSError:
                continue

    def path(self, key: EmbeddingKey) -> Path:
        digest = hashlib.sha256("\n".join(key).encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.pt"

    def __contains__(self, key: EmbeddingKey) -> bool:
        return self.path(key).is_file()

    def load(self, key: EmbeddingKey) -> EmbeddingState | None:
        """The stored state, or None if absent or unreadable (a broken file is removed and logged)."""
        import torch

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(data["key"]) != tuple(key):  # a sha256 collision is unthinkable; a foreign file is not
                return None
            features = data["features"]
            if features.ndim != 4 or features.shape[0] != 1 or not bool(features.isfinite().all()):
                raise ValueError(
                    f"features of shape {tuple(features.shape)} are not a finite (1, C, h, w) embedding"
                )
            return EmbeddingState(features, tuple(data["original_size"]), tuple(data["input_size"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a cache miss, never an outage
            logger.warning("ignoring unreadable embedding file %s (%s); it is removed", path, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: EmbeddingKey, state: EmbeddingState) -> Path:
        import torch

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        torch.save(
            {
                "key": list(key),
                "features": state.features.contiguous(),
                "original_size": list(state.original_size),
                "input_size": list(state.input_size),
            },
            tmp,
        )
        os.replace(tmp, path)  # readers never see half a file
        self._account(path.stat().st_size)
        return path

    def _account(self, added: int) -> None:
        with self._lock:
            if self._bytes is None:
                self._bytes = sum(p.stat().st_size for p in self.directory.glob("*/*.pt"))
            else:
                self._bytes += added
            if self._bytes > self.max_bytes:
                self._prune()

    def _prune(self) -> None:
        """Remove the least recently written files until 90% of the budget is left."""
        files = sorted(self.directory.glob("*/*.pt"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= 0.9 * self.max_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total -= size
        self._bytes = total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
