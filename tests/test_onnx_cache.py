"""The persistent folder of exported ONNX models the front-ends use: where it is, that concurrent
users export once and share sessions, that other weights invalidate every file (int8 copies too),
and clear errors when the optional packages are missing. A 256-pixel model keeps export short."""

import shutil
import threading

import numpy as np
import pytest

import mobilesam
import mobilesam.onnx.predictor as onnx_predictor
from mobilesam.onnx import DECODER_FILE, ENCODER_FILE, OnnxBackend, default_onnx_dir
from mobilesam.onnx.export import FINGERPRINT_FILE, weights_fingerprint
from mobilesam.onnx.layout import INT8_ENCODER_FILE

IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def other_model():
    import torch

    torch.manual_seed(12)
    return mobilesam.build_sam("vit_t", image_size=IMAGE_SIZE).eval()


def _counting_export(calls):
    real = onnx_predictor.export_onnx

    def counting(model, out_dir, *args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(model, out_dir, *args, **kwargs)

    return counting


@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    monkeypatch.setattr(onnx_predictor, "export_onnx", _counting_export(calls))
    return calls


@pytest.fixture(scope="module")
def concurrent_start(small_model, tmp_path_factory):
    """Two threads (as two server workers would) start on one empty folder at the same time, a
    third on another folder; the first folder then serves the other tests as a finished export.
    -> (folder, backends, exports, errors)"""
    folder, elsewhere = tmp_path_factory.mktemp("onnx-shared"), tmp_path_factory.mktemp("onnx-elsewhere")
    backends, errors, exports = {}, [], []
    patch = pytest.MonkeyPatch()
    patch.setattr(onnx_predictor, "export_onnx", _counting_export(exports))

    def start(name):
        try:
            backends[name] = OnnxBackend(small_model, onnx_dir=elsewhere if name == "c" else folder)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(name,), name=name) for name in ("a", "b", "c")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        patch.undo()
    return folder, backends, exports, errors


@pytest.fixture
def exported_copy(concurrent_start, tmp_path):
    """A private copy of the small model's finished export."""
    for path in concurrent_start[0].iterdir():
        if path.suffix in (".onnx", ".sha256"):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_default_dir_is_under_the_weights_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    assert default_onnx_dir("vit_t") == tmp_path / "onnx" / "vit_t"
    assert default_onnx_dir("vit_h") == tmp_path / "onnx" / "vit_h"
    with pytest.raises(ValueError, match="model_type"):
        default_onnx_dir("../vit_t")


def test_default_dir_of_a_model_reads_its_architecture(small_model, monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    assert default_onnx_dir(small_model) == tmp_path / "onnx" / "vit_t"
    vit_b = mobilesam.build_sam("vit_b", image_size=64)  # small: only its weights' names and shapes count
    assert default_onnx_dir(vit_b) == tmp_path / "onnx" / "vit_b"


def test_concurrent_users_export_once_and_share_sessions(concurrent_start, small_model):
    folder, backends, exports, errors = concurrent_start
    assert not errors, errors
    # b or a waited on the folder's lock, then found fresh files; c's export into its own folder did
    # not overlap another (torch's exporter is not thread-safe)
    assert sorted(exports) in (["a", "c"], ["b", "c"])
    assert backends["a"].encoder is backends["b"].encoder and backends["a"].decoder is backends["b"].decoder
    assert (folder / FINGERPRINT_FILE).read_text().strip() == weights_fingerprint(small_model)
    assert not list(folder.glob("*.part"))


def test_other_weights_replace_every_file_including_int8(
    small_model, other_model, exported_copy, count_exports
):
    tmp_path = exported_copy
    OnnxBackend(small_model, onnx_dir=tmp_path, precision="int8")
    int8_encoder = tmp_path / INT8_ENCODER_FILE
    assert int8_encoder.exists() and len(count_exports) == 0
    old_int8 = int8_encoder.read_bytes()

    OnnxBackend(other_model, onnx_dir=tmp_path)  # fp32 user with other weights: re-export
    assert len(count_exports) == 1
    assert not int8_encoder.exists()  # the old weights' int8 copy can no longer be picked up
    assert (tmp_path / FINGERPRINT_FILE).read_text().strip() == weights_fingerprint(other_model)

    backend = OnnxBackend(other_model, onnx_dir=tmp_path, precision="int8")
    assert len(count_exports) == 1 and int8_encoder.read_bytes() != old_int8
    image = np.random.default_rng(0).standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = other_model.image_encoder(torch.from_numpy(image))
    got = backend.encode(torch.from_numpy(image))
    # int8 is approximate, but it is the other model's encoder, not the first one's
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.95


def test_interrupted_export_never_leaves_a_valid_stamp(small_model, other_model, exported_copy, monkeypatch):
    tmp_path = exported_copy

    def crash_after_encoder(model, out_dir, *args, **kwargs):
        (tmp_path / ENCODER_FILE).write_bytes(b"half of another model")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_predictor, "export_onnx", crash_after_encoder)
    with pytest.raises(KeyboardInterrupt):
        OnnxBackend(other_model, onnx_dir=tmp_path)
    monkeypatch.undo()
    # The first weights' stamp went before anything was replaced, so they export again too.
    assert not (tmp_path / FINGERPRINT_FILE).exists()
    backend = OnnxBackend(small_model, onnx_dir=tmp_path)
    assert (tmp_path / DECODER_FILE).exists() and backend.encoder is not None


def test_missing_onnx_package_is_a_clear_error(small_model, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(mobilesam.MobileSamError, match=r"pip install 'napari-mobilesam\[onnx\]'"):
        OnnxBackend(small_model, onnx_dir=tmp_path)


def test_missing_onnxruntime_names_the_extra(small_model, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(mobilesam.MobileSamError, match=r"pip install 'napari-mobilesam\[onnx\]'"):
        mobilesam.SamPredictor(small_model, backend="onnx", onnx_dir=default_onnx_dir("vit_t"))


def test_damaged_exported_model_is_exported_again(small_model, exported_copy, count_exports):
    """A model file damaged after a valid export (the stamp still vouches for it) is detected when
    onnxruntime cannot load it, exported again with a warning, and then works."""
    path = exported_copy / DECODER_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated; garbage fails onnxruntime's parse the same way
    with pytest.warns(UserWarning, match="could not be loaded.*exporting it again"):
        backend = OnnxBackend(small_model, onnx_dir=exported_copy)
    assert len(count_exports) == 1 and path.read_bytes() != b"" and backend.decoder is not None
    assert (exported_copy / FINGERPRINT_FILE).read_text().strip() == weights_fingerprint(small_model)
