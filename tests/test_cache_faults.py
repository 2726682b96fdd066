"""Fault tests for every cache the core keeps on disk: the volume embedding store (zarr), the ONNX
export folder, the weights cache and the temp files of atomic writes. Each damaged entry must be
detected, reported and recomputed: never served (a deleted zarr chunk reads back as zeros), never
a codec or JSON traceback.

The volume tests use a stand-in predictor whose "embedding" is a deterministic function of the
image, so they test the store, not the model, and take milliseconds."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilesam.atomic import TEMP_MARK, _host_tag, atomic_write, remove_stale_temp_files
from mobilesam.predictor import EmbeddingState
from mobilesam.volume import VolumeEmbeddings


class StandInPredictor:
    """set_image / get_embedding_state like SamPredictor; features follow the image's pixels."""

    model = None

    def __init__(self):
        self.encoder_calls = 0

    def set_image(self, image):
        self.encoder_calls += 1
        rng = np.random.default_rng(int(image.sum()) % (2**32))
        self._state = EmbeddingState(
            torch.from_numpy(rng.normal(size=(1, 256, 64, 64)).astype(np.float32) + 1),
            image.shape[:2],
            (64, 64),
        )

    def get_embedding_state(self):
        return self._state

    def set_embedding(self, state):
        self._state = state


def volume(num_slices=2):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(num_slices, 32, 32), dtype=np.uint8)


def open_cache(cache, predictor=None):
    return VolumeEmbeddings(volume(), predictor or StandInPredictor(), cache_dir=cache, model_id="m")


def entry_dir(cache: Path, embeddings: VolumeEmbeddings, z: int) -> Path:
    return cache / embeddings._model_key() / embeddings._slice_hash(z)


def chunk_file(entry: Path) -> Path:
    (chunk,) = [p for p in entry.rglob("*") if p.is_file() and p.name != "zarr.json"]
    return chunk


def delete(path):
    path.unlink()


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def not_json(path):
    path.write_text("{ this is not json")


@pytest.fixture
def filled_cache(tmp_path):
    cache = tmp_path / "cache"
    first = open_cache(cache)
    expected = [first.get(z).features.clone() for z in range(2)]
    return cache, first, expected


@pytest.mark.parametrize("damage", [delete, truncate, empty, garbage, flip_one_byte])
@pytest.mark.parametrize("target", ["chunk", "zarr.json"])
def test_damaged_entry_is_recomputed_with_a_warning_naming_the_slice(filled_cache, damage, target):
    cache, first, expected = filled_cache
    entry = entry_dir(cache, first, 1)
    damage(chunk_file(entry) if target == "chunk" else entry / "zarr.json")

    predictor = StandInPredictor()
    again = open_cache(cache, predictor)
    with pytest.warns(UserWarning, match=r"slice 1 .*recomputing"):
        state = again.get(1)
    assert predictor.encoder_calls == 1
    assert torch.equal(state.features, expected[1]), "a damaged entry must never be served"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(again.get(0).features, expected[0])  # the intact slice is read silently
        third = open_cache(cache, predictor)
        assert torch.equal(third.get(1).features, expected[1])  # rewritten: read back, no warning
    assert predictor.encoder_calls == 1 and third.disk_hits == 1


@pytest.mark.parametrize("level", ["root", "model group"])
def test_damaged_group_metadata_is_rewritten(filled_cache, level):
    cache, first, expected = filled_cache
    meta = cache / "zarr.json" if level == "root" else cache / first._model_key() / "zarr.json"
    not_json(meta)
    predictor = StandInPredictor()
    with pytest.warns(UserWarning, match="damaged group metadata"):
        again = open_cache(cache, predictor)
    assert all(torch.equal(again.get(z).features, expected[z]) for z in range(2))
    assert predictor.encoder_calls == 0, "the verified entries below the rewritten metadata stay usable"
    json.loads(meta.read_text())


def test_entry_without_checksum_is_not_trusted(filled_cache):
    """Entries of older versions (no sha256) are recomputed, not read unverified."""
    import zarr

    cache, first, expected = filled_cache
    array = zarr.open_group(str(cache), mode="a")[first._model_key()][first._slice_hash(0)]
    attrs = dict(array.attrs)
    del attrs["sha256"]
    array.attrs.put(attrs)
    predictor = StandInPredictor()
    again = open_cache(cache, predictor)
    assert not again.is_cached(0)
    with pytest.warns(UserWarning, match="slice 0 has no checksum"):
        assert torch.equal(again.get(0).features, expected[0])
    assert predictor.encoder_calls == 1


def test_cache_path_that_is_a_file_is_a_clear_error(tmp_path):
    from mobilesam.errors import MobileSamError

    path = tmp_path / "cache"
    path.write_text("not a folder")
    with pytest.raises(MobileSamError, match=r"embedding cache .*cache is a file, not a folder"):
        open_cache(path)


def test_stale_zarr_partial_files_are_removed_on_open(filled_cache):
    cache, first, _ = filled_cache
    entry = entry_dir(cache, first, 0)
    stale = entry / "c" / "0.0123abcd.partial"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a chunk")
    fresh = entry / "zarr.fresh.partial"  # a concurrent writer's: must survive
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    open_cache(cache)
    assert not stale.exists() and fresh.exists()


# ---- atomic writes: temp files of a killed writer -------------------------------------------

KILLED_WRITER = """
import os, sys
sys.path.insert(0, {core!r})
from mobilesam.atomic import atomic_write
with atomic_write({target!r}) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), 9)
"""


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out" / "mask.tif"
    core = str(Path(__import__("mobilesam").__file__).parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER.format(core=core, target=str(target))], check=False
    )
    assert proc.returncode == -9
    (left,) = list(target.parent.iterdir())
    assert TEMP_MARK in left.name and not target.exists()

    with atomic_write(target) as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.tif"]
    assert target.read_bytes() == b"whole"


def test_temp_files_of_live_processes_and_other_files_are_kept(tmp_path):
    live = tmp_path / f".a.tif.{TEMP_MARK}-00000000-{os.getpid()}-0123abcd.tif"
    other_host = tmp_path / f".b.tif.{TEMP_MARK}-ffffffff-999999999-0123abcd.tif"
    own = tmp_path / ".c.tif.XYZ.tif"
    for path in (live, other_host, own):
        path.write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == []
    assert live.exists() and other_host.exists() and own.exists()


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"new, half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_output_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with (
        pytest.raises(ValueError, match=r"file.txt is a file, not a folder"),
        atomic_write(blocker / "o.tif"),
    ):
        pass


# ---- weights cache ----------------------------------------------------------------------------


def test_weights_download_replaces_a_stale_part_and_never_uses_it(tmp_path, monkeypatch):
    import hashlib
    import io

    from mobilesam import weights

    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    monkeypatch.delenv("MOBILESAM_CHECKPOINT", raising=False)
    payload = b"checkpoint bytes" * 1000
    info = weights.weights_info("vit_t")
    monkeypatch.setattr(
        weights,
        "weights_info",
        lambda model_type: type(info)(
            **{**info.__dict__, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
        ),
    )
    target = weights.cached_path("vit_t")
    target.parent.mkdir(parents=True, exist_ok=True)
    # What a killed download of the previous version (fixed name) and of this one leave behind.
    old_part = target.with_name(target.name + ".part")
    dead_part = target.with_name(f".{target.name}.{TEMP_MARK}-{_host_tag()}-999999999-0123abcd.part")
    for part in (old_part, dead_part):
        part.write_bytes(payload[:100])
    with pytest.raises(weights.MissingWeightsError):
        weights.resolve_checkpoint("vit_t", allow_download=False)  # a .part never counts as weights

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    path = weights.resolve_checkpoint("vit_t", progress=False)
    assert path == target and target.read_bytes() == payload
    assert not dead_part.exists()

    # A download whose hash does not match leaves neither the file nor a temp file.
    target.unlink()
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: Response(payload[:-1]))
    with pytest.raises(weights.MissingWeightsError, match="expected"):
        weights.download("vit_t", progress=False)
    assert not target.exists() and not [p for p in target.parent.iterdir() if TEMP_MARK in p.name]
