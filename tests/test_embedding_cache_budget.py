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
    embeddings = VolumeEmbeddings(
        volume, encoder, cache_dir=cache, model_id="m", cache_max_bytes=3 * per_slice
    )
    for z in range(6):
        embeddings.get(z)
    total = sum(f.stat().st_size for d in _slice_dirs(cache) for f in d.rglob("*") if f.is_file())
    assert total <= 3 * per_slice and len(_slice_dirs(cache)) == 3
    # The three most recent slices are on disk; a fresh session loads them and re-encodes the rest.
    fresh_encoder = TinyEncoder()
    fresh = VolumeEmbeddings(
        volume, fresh_encoder, cache_dir=cache, model_id="m", cache_max_bytes=3 * per_slice
    )
    assert [fresh.is_cached(z) for z in range(6)] == [False, False, False, True, True, True]
    np.testing.assert_allclose(fresh.get(5).features, embeddings.get(5).features)
    assert fresh_encoder.encoded == 0


def test_a_new_cache_folder_reuses_another_folders_embeddings(tmp_path):
    """read_also: embeddings already in another folder (the default one) are copied, not encoded
    again; that folder is only read (nothing is created in a folder without this model)."""
    volume = np.random.default_rng(1).integers(0, 255, (3, 12, 12)).astype(np.uint8)
    default, chosen, empty = tmp_path / "default.zarr", tmp_path / "chosen.zarr", tmp_path / "empty.zarr"
    first = TinyEncoder()
    VolumeEmbeddings(volume, first, cache_dir=default, model_id="m").embed_all()
    assert first.encoded == 3
    again = TinyEncoder()
    embeddings = VolumeEmbeddings(volume, again, cache_dir=chosen, model_id="m", read_also=[default, empty])
    assert all(embeddings.is_cached(z) for z in range(3))
    values = [float(embeddings.get(z).features.mean()) for z in range(3)]
    assert again.encoded == 0 and embeddings.disk_hits == 3
    np.testing.assert_allclose(values, [volume[z].mean() for z in range(3)], rtol=1e-6)
    assert not empty.exists()
    third = TinyEncoder()  # the chosen folder now holds them itself
    assert VolumeEmbeddings(volume, third, cache_dir=chosen, model_id="m").embed_all() == 0
    other_model = TinyEncoder()
    VolumeEmbeddings(
        volume, other_model, cache_dir=tmp_path / "x.zarr", model_id="n", read_also=[default]
    ).get(0)
    assert other_model.encoded == 1  # another model's embeddings are never borrowed
