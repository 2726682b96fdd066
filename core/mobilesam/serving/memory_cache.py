"""`EmbeddingCache`: the one in-memory LRU of image embeddings, bounded by entry count and bytes.

Used by the Label Studio backend (per image URL and model) and the volume code (per slice, see
`mobilesam.volume.VolumeEmbeddings`). Thread-safe; concurrent misses for the same key compute
once (`get_or_compute`): the other callers wait for that result instead of encoding again.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..predictor import EmbeddingState

logger = logging.getLogger(__name__)


class _Pending:
    """A computation in flight, which other callers for the same key wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.state: EmbeddingState | None = None
        self.error: BaseException | None = None


class EmbeddingCache:
    """max_items: entries kept; max_bytes: their `EmbeddingState.nbytes` in total (None: no byte
    bound). The least recently used entries go first."""

    def __init__(self, max_items: int = 32, max_bytes: int | None = 512 << 20) -> None:
        if max_items < 1 or (max_bytes is not None and max_bytes < 1):
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

    def keys(self) -> tuple:
        """The cached keys, least recently used first."""
        with self._lock:
            return tuple(self._entries)

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
        max_bytes = float("inf") if self.max_bytes is None else self.max_bytes
        if state.nbytes > max_bytes:
            logger.warning(
                "embedding of %d bytes exceeds the cache's %d bytes; not cached", state.nbytes, max_bytes
            )
            return
        self._entries[key] = state
        self._bytes += state.nbytes
        while len(self._entries) > self.max_items or self._bytes > max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1
