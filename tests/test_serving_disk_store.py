"""The core's verified embedding stores on disk (`mobilesam.serving.disk_store`): both layouts refuse
damaged entries that still parse (a flipped bit, non-finite values) instead of serving them."""

import os

import pytest
import torch

from mobilesam.predictor import EmbeddingState
from mobilesam.serving.disk_store import EmbeddingStore, SliceEmbeddingStore, remove_stale_partials


def _state(seed: int) -> EmbeddingState:
    generator = torch.Generator().manual_seed(seed)
    return EmbeddingState(torch.randn(1, 256, 64, 64, generator=generator), (60, 40), (1024, 683))


def test_file_store_refuses_a_flipped_value_and_reads_files_without_checksum(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = ("/data/upload/1/a.png", "model-x")
    path = store.save(key, _state(0))
    data = torch.load(path, weights_only=True)
    data["features"][0, 3, 10, 10] += (
        1.0  # finite, right shape, still a valid torch file: only the checksum sees it
    )
    torch.save(data, path)
    assert store.load(key) is None and not path.exists()

    store.save(key, _state(1))
    data = torch.load(path, weights_only=True)
    del data["sha256"]  # a file written before checksums were stored: still served
    torch.save(data, path)
    assert torch.equal(store.load(key).features, _state(1).features)


def test_slice_store_refuses_non_finite_values_even_with_a_matching_checksum(tmp_path):
    pytest.importorskip("zarr", reason="the slice store needs zarr (the volume extra)")
    store = SliceEmbeddingStore(tmp_path, "model-x")
    bad = _state(2)
    bad.features[0, 0, 0, 0] = float("nan")
    store.save("slice-a", bad)  # checksummed as written: only the finite check catches it
    with pytest.warns(UserWarning, match=r"slice 7 holds .*not a finite"):
        assert store.load("slice-a", where="slice 7") is None
    store.save("slice-a", _state(3))
    assert torch.equal(store.load("slice-a").features, _state(3).features)


def test_stale_partials_go_by_writer_or_age(tmp_path):
    names = {"dead": 999_999_999, "mine": os.getpid(), "young": None, "old": None}
    paths = {name: tmp_path / f"{name}.part" for name in names}
    for path in paths.values():
        path.write_bytes(b"x")
    os.utime(paths["old"], (0, 0))
    os.utime(paths["mine"], (0, 0))
    removed = remove_stale_partials(paths.values(), writer_pid=lambda p: names[p.stem])
    assert sorted(p.stem for p in removed) == ["dead", "old"]
    assert paths["mine"].exists() and paths["young"].exists()
