"""precision="int8" on the ONNX backend: the encoder's linear layers statically quantised to int8
(`mobilesam.onnx.int8`, calibrated on a fixed image set), the decoder in fp32.

int8 is approximate, so the bounds are against fp32 on a fixed input, loose enough for int8 and
tight enough that a broken quantisation (wrong scales, garbage embeddings: relative error ~1.4)
fails. A 256-pixel random-weight vit_t keeps export and calibration to seconds;
benchmarks/int8.py measures the full-size model (speed, embedding error, mask IoU).
"""

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")

import onnx  # noqa: E402

import mobilesam.runtime  # noqa: E402
from mobilesam.onnx import DECODER_FILE, ENCODER_FILE, OnnxSamPredictor, StandalonePredictor  # noqa: E402
from mobilesam.onnx.int8 import calibration_images  # noqa: E402
from mobilesam.onnx.layout import INT8_ENCODER_FILE, LEGACY_INT8_FILES  # noqa: E402

# Measured on this module's model and image: relative embedding error 0.046, mask IoU >= 0.98.
MAX_RELATIVE_ERROR = 0.12
MIN_MASK_IOU = 0.9
CLICKS = [(160, 120), (60, 50), (260, 45), (30, 200), (250, 180)]


@pytest.fixture(scope="module")
def image():
    """Flat background with a bright disk and a blue rectangle (240 x 320 RGB)."""
    img = np.full((240, 320, 3), 60, np.uint8)
    yy, xx = np.mgrid[:240, :320]
    img[(yy - 120) ** 2 + (xx - 160) ** 2 < 50**2] = 230
    img[20:70, 220:300] = [40, 40, 220]
    return img


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory, image):
    """(folder, fp32 predictor, int8 predictor), both with `image` set."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = OnnxSamPredictor(small_model, onnx_dir=folder)
    int8 = OnnxSamPredictor(small_model, onnx_dir=folder, precision="int8")
    fp32.set_image(image)
    int8.set_image(image)
    return folder, fp32, int8


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_int8_encoder_is_quantised_and_close_to_fp32(exported):
    folder, fp32, int8 = exported
    graph = onnx.load(str(folder / INT8_ENCODER_FILE)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # every linear layer of the vit_t encoder
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    # only linear layers read dequantised tensors: convolutions and norms keep their float
    # constants (shared ones are copied first), or onnxruntime's fast conv kernels are lost
    dequantised = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    readers = {node.op_type for node in graph.node if dequantised & set(node.input)}
    assert readers == {"Gemm"}, readers
    assert int8.runtime.decoder is fp32.runtime.decoder  # one shared fp32 decoder session

    a, b = int8.features.numpy(), fp32.features.numpy()
    relative = np.linalg.norm(a - b) / np.linalg.norm(b)
    ious = []
    for click in CLICKS:
        prompt = dict(point_coords=np.array([click]), point_labels=np.array([1]), multimask_output=False)
        ious.append(_iou(int8.predict(**prompt)[0], fp32.predict(**prompt)[0]))
    print(f"\n[int8 static] embedding relative error {relative:.4f}; mask IoU min {min(ious):.4f}")
    assert 1e-4 < relative <= MAX_RELATIVE_ERROR  # int8 is in use, and close
    assert min(ious) >= MIN_MASK_IOU


def test_standalone_predictor_runs_the_same_int8_files(exported, image):
    folder, _, int8 = exported
    standalone = StandalonePredictor(folder, precision="int8")
    standalone.set_image(image)
    # the same int8 encoder; preprocessing (PIL resize, normalise) agrees within float rounding
    assert np.abs(standalone.features - int8.features.numpy()).max() <= 1e-3
    assert (folder / ENCODER_FILE).is_file() and (folder / DECODER_FILE).is_file()


def test_legacy_int8_files_are_removed_not_loaded(exported, small_model):
    folder = exported[0]
    for name in LEGACY_INT8_FILES:
        (folder / name).write_bytes(b"dynamic int8 model of an older version")
    OnnxSamPredictor(small_model, onnx_dir=folder, precision="int8")
    assert not any((folder / name).exists() for name in LEGACY_INT8_FILES)


def test_int8_warns_on_cpus_without_int8_instructions(exported, monkeypatch):
    monkeypatch.setattr(mobilesam.runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(RuntimeWarning, match="no faster than 'fp32'"):
        StandalonePredictor(exported[0], precision="int8")


def test_calibration_images_are_fixed_and_varied():
    first, second = calibration_images(), calibration_images()
    assert len(first) >= 4
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # deterministic
    assert len({image.shape for image in first}) >= 3  # sizes and aspects differ
    assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image in first)
    assert min(float(image.std()) for image in first) > 10  # none is blank
