"""Image embeddings kept between clicks, so only the first click on an image pays for the encoder.

`EmbeddingCache`: thread-safe LRU of `mobilesam.EmbeddingState` in memory, bounded by entry count
and bytes, keyed by (image identity, model id). Concurrent misses for the same key compute once:
the other requests wait for that result instead of encoding the same image again.
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
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

from mobilesam.predictor import EmbeddingState

logger = logging.getLogger(__name__)

EmbeddingKey = tuple[str, str]  # (image identity, model id)


class _Pending:
    """A computation in flight, which other requests for the same key wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.state: EmbeddingState | None = None
        self.error: BaseException | None = None


class EmbeddingCache:
    def __init__(self, max_items: int = 32, max_bytes: int = 512 << 20) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("an embedding cache needs room for at least one entry")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, EmbeddingState] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> EmbeddingState | None:
        with self._lock:
            state = self._entries.get(key)
            if state is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return state

    def put(self, key: Hashable, state: EmbeddingState) -> None:
        with self._lock:
            self._insert(key, state)

    def get_or_compute(
        self, key: Hashable, compute: Callable[[], EmbeddingState]
    ) -> tuple[EmbeddingState, bool]:
        """The cached state for `key`, else `compute()`'s (stored). Returns (state, was_cached).

        If another thread is already computing `key`, wait for its result (and share its error).
        """
        with self._lock:
            state = self._entries.get(key)
            if state is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return state, True
            self.misses += 1
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.state, False
        try:
            pending.state = compute()
            with self._lock:
                self._insert(key, pending.state)
            return pending.state, False
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()

    def discard(self, key: Hashable) -> None:
        with self._lock:
            state = self._entries.pop(key, None)
            if state is not None:
                self._bytes -= state.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {
                "items": len(self._entries),
                "bytes": self._bytes,
                "max_items": self.max_items,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }

    def _insert(self, key: Hashable, state: EmbeddingState) -> None:
        """Store under the lock, then evict least recently used entries beyond the bounds."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        if state.nbytes > self.max_bytes:
            logger.warning(
                "embedding of %d bytes exceeds the cache's %d bytes; not cached", state.nbytes, self.max_bytes
            )
            return
        self._entries[key] = state
        self._bytes += state.nbytes
        while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1


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
