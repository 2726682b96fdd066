"""Image embeddings kept between clicks, so only the first click on an image pays for the encoder.

Both are the core's (`mobilesam.serving`), keyed here by (image identity, model id):
`EmbeddingCache`: the thread-safe memory LRU, bounded by entry count and bytes. Concurrent misses
for the same key compute once: the other requests wait for that result instead of encoding the
same image again.
`EmbeddingStore`: the same states on disk (`mobilesam.serving.disk_store`), shared with
`mobilesam labelstudio precompute` (another process) and surviving restarts; bounded by bytes,
oldest files removed first. Entries are verified when read (key, checksum, shapes, finite values);
a bad one is removed and recomputed. Temporary `.part` files left by a killed writer are removed
when the store is opened.
"""

from mobilesam.serving.disk_store import EmbeddingKey, EmbeddingStore
from mobilesam.serving.memory_cache import EmbeddingCache

__all__ = ["EmbeddingCache", "EmbeddingKey", "EmbeddingStore"]
