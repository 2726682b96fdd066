"""The on-disk embedding cache keeps to its size budget, evicting the least recently used slices."""

import numpy as np
import torch

from mobilesam.predictor import EmbeddingState
from mobilesam.volume import VolumeEmbeddings


class TinyEncoder:
    """Quacks like a SamPredictor for VolumeEmbeddings: (1, 8, 16, 16) features = the slice's mean."""

    model = None

    def __init__(self):
        self.encoded = 0

    def set_image(self, image):
        self.encoded += 1
        self._value = float(np.asarray(image).mean())
        self._size = image.shape[:2]

    def get_embedding_state(self):
        return EmbeddingState(torch.full((1, 8, 16, 16), self._value), tuple(self._size), tuple(self._size))

    def set_embedding(self, state):
        pass


def _slice_dirs(cache):
    return [p for model in cache.iterdir() if model.is_dir() for p in model.iterdir() if p.is_dir()]


def test_cache_keeps_to_its_budget_and_evicts_oldest_first(tmp_path):
    volume = np.random.default_rng(0).integers(0, 255, (6, 12, 12)).astype(np.uint8)
    cache = tmp_path / "cache.zarr"
    one = VolumeEmbeddings(volume[:1], TinyEncoder(), cache_dir=cache, model_id="m")
    one.get(0)
    per_slice = sum(f.stat().st_size for f in _slice_dirs(cache)[0].rglob("*") if f.is_file())

    encoder = TinyEncoder()
    embeddings = VolumeEmbeddings(volume, encoder, cache_dir=cache, model_id="m", cache_max_bytes=3 * per_slice)
    for z in range(6):
        embeddings.get(z)
    total = sum(f.stat().st_size for d in _slice_dirs(cache) for f in d.rglob("*") if f.is_file())
    assert total <= 3 * per_slice and len(_slice_dirs(cache)) == 3
    # The three most recent slices are on disk; a fresh session loads them and re-encodes the rest.
    fresh_encoder = TinyEncoder()
    fresh = VolumeEmbeddings(volume, fresh_encoder, cache_dir=cache, model_id="m", cache_max_bytes=3 * per_slice)
    assert [fresh.is_cached(z) for z in range(6)] == [False, False, False, True, True, True]
    np.testing.assert_allclose(fresh.get(5).features, embeddings.get(5).features)
    assert fresh_encoder.encoded == 0
