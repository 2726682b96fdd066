"""ONNX Runtime path: `mobilesam export-onnx` and `SamPredictor(model, backend="onnx")` against the
torch path on the same weights. A 256-pixel model keeps export and inference fast; the graphs are
the same as at 1024 (benchmarks/run.py measures the full-size model against the reference)."""

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam.cli import main as cli_main
from mobilesam.onnx import DECODER_FILE, ENCODER_FILE, OnnxSamPredictor, export_onnx
from mobilesam.onnx.layout import INT8_ENCODER_FILE
from mobilesam.testing import save_random_checkpoint

TOL = 1e-3
IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_random_checkpoint(
        tmp_path_factory.mktemp("w") / "small.pt", "vit_t", seed=3, image_size=IMAGE_SIZE
    )


@pytest.fixture(scope="module")
def small_model(small_checkpoint):
    return mobilesam.build_sam("vit_t", small_checkpoint, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def onnx_dir(small_checkpoint, small_model, tmp_path_factory):
    """Exported once for the module's tests."""
    out = tmp_path_factory.mktemp("onnx")
    # The CLI reads the architecture from the checkpoint; the image size must be given to build_sam,
    # so export the small model directly and check the CLI separately on its own arguments.
    export_onnx(small_model, out)
    return out


@pytest.fixture(scope="module")
def predictors(small_model, onnx_dir, sample_image_module):
    torch_predictor = mobilesam.SamPredictor(small_model)
    onnx_predictor = mobilesam.SamPredictor(small_model, backend="onnx", onnx_dir=onnx_dir)
    torch_predictor.set_image(sample_image_module)
    onnx_predictor.set_image(sample_image_module)
    return torch_predictor, onnx_predictor


@pytest.fixture(scope="module")
def sample_image_module():
    yy, xx = np.mgrid[:240, :320]
    img = np.stack([xx * 0.5, yy * 0.8, (xx + yy) * 0.3], axis=-1)
    img[(yy - 120) ** 2 + (xx - 160) ** 2 < 50**2] = 230
    return img.astype(np.uint8)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _assert_same_masks(predictor, kwargs, masks_t, masks_o):
    """Masks may differ only where the torch logit is within TOL of the threshold."""
    differ = np.asarray(masks_t) != np.asarray(masks_o)
    if differ.any():
        logits = predictor.predict(**kwargs, return_logits=True)[0]
        assert np.abs(logits[differ]).max() <= TOL
    assert differ.mean() < 1e-3


def test_export_writes_models_and_keeps_eval_mode(onnx_dir, small_model, tmp_path):
    assert (onnx_dir / ENCODER_FILE).stat().st_size > 1e6 and (onnx_dir / DECODER_FILE).stat().st_size > 1e6
    assert not small_model.training
    small_model.train()
    try:
        export_onnx(small_model, tmp_path, encoder=False)
        assert small_model.training  # restored, not forced either way
    finally:
        small_model.eval()
    assert not list(tmp_path.glob("*.part"))


def test_embedding_matches_torch(predictors):
    torch_predictor, onnx_predictor = predictors
    assert _max_diff(torch_predictor.features, onnx_predictor.features) <= TOL
    assert onnx_predictor.original_size == torch_predictor.original_size == (240, 320)


PROMPTS = {
    "one point": dict(point_coords=np.array([[160, 120]]), point_labels=np.array([1])),
    "fg and bg points": dict(
        point_coords=np.array([[160, 120], [20, 200], [300, 30]]), point_labels=np.array([1, 0, 0])
    ),
    "box": dict(box=np.array([100, 60, 230, 190])),
    "box and point": dict(
        point_coords=np.array([[160, 120]]),
        point_labels=np.array([1]),
        box=np.array([100, 60, 230, 190]),
        multimask_output=False,
    ),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches_torch(predictors, name):
    torch_predictor, onnx_predictor = predictors
    # Same embedding on both sides, so this compares the decoders alone.
    onnx_predictor.set_embedding(torch_predictor.get_embedding_state())
    prompt = PROMPTS[name]
    for mask_input in (None, "previous"):
        kwargs = dict(prompt)
        if mask_input:
            kwargs["mask_input"] = torch_predictor.predict(**prompt)[2][:1]
        masks_t, iou_t, low_t = torch_predictor.predict(**kwargs)
        masks_o, iou_o, low_o = onnx_predictor.predict(**kwargs)
        assert masks_o.shape == masks_t.shape and masks_o.dtype == bool
        assert _max_diff(low_t, low_o) <= TOL and _max_diff(iou_t, iou_o) <= TOL
        _assert_same_masks(torch_predictor, kwargs, masks_t, masks_o)


def test_batched_prompts_match_torch(predictors):
    torch_predictor, onnx_predictor = predictors
    onnx_predictor.set_embedding(torch_predictor.get_embedding_state())
    coords = torch.tensor(
        [[[40.0, 50.0], [100.0, 120.0]], [[200.0, 30.0], [10.0, 10.0]], [[128.0, 128.0], [60.0, 90.0]]]
    )
    labels = torch.tensor([[1, 0], [1, 1], [1, 0]])
    boxes = torch.tensor([[10.0, 10.0, 120.0, 150.0], [50.0, 20.0, 250.0, 180.0], [0.0, 0.0, 60.0, 60.0]])
    for kwargs in (dict(boxes=None), dict(boxes=boxes)):
        masks_t, iou_t, low_t = torch_predictor.predict_torch(coords, labels, **kwargs)
        masks_o, iou_o, low_o = onnx_predictor.predict_torch(coords, labels, **kwargs)
        assert low_o.shape == (3, 3, 64, 64)
        assert _max_diff(low_t, low_o) <= TOL and _max_diff(iou_t, iou_o) <= TOL
        assert (masks_t != masks_o).float().mean() < 1e-3


def test_embedding_state_round_trip(predictors, small_model, onnx_dir):
    _, onnx_predictor = predictors
    state = onnx_predictor.get_embedding_state()
    other = OnnxSamPredictor(small_model, onnx_dir=onnx_dir)
    other.set_embedding(state)
    prompt = PROMPTS["one point"]
    assert np.array_equal(other.predict(**prompt)[2], onnx_predictor.predict(**prompt)[2])


def test_stale_export_is_replaced(small_model, onnx_dir, tmp_path):
    import shutil

    for name in (ENCODER_FILE, DECODER_FILE, "weights.sha256"):
        shutil.copy(onnx_dir / name, tmp_path / name)
    torch.manual_seed(7)
    other_model = mobilesam.build_sam("vit_t", image_size=IMAGE_SIZE).eval()  # different weights
    image = np.full((64, 64, 3), 100, np.uint8)
    reference = mobilesam.SamPredictor(other_model)
    reference.set_image(image)
    predictor = OnnxSamPredictor(other_model, onnx_dir=tmp_path)
    predictor.set_image(image)
    assert (tmp_path / "weights.sha256").read_text() != (onnx_dir / "weights.sha256").read_text()
    assert _max_diff(reference.features, predictor.features) <= TOL


def test_int8_runs_close_to_fp32(predictors, small_model, onnx_dir, sample_image_module):
    torch_predictor, _ = predictors
    quantized = OnnxSamPredictor(small_model, onnx_dir=onnx_dir, precision="int8")
    # the statically quantised encoder is written next to the fp32 files; the decoder stays fp32
    assert (onnx_dir / INT8_ENCODER_FILE).stat().st_size < 0.5 * (onnx_dir / ENCODER_FILE).stat().st_size
    quantized.set_image(sample_image_module)
    masks_q, _, low_q = quantized.predict(**PROMPTS["box"])
    masks_f, _, low_f = torch_predictor.predict(**PROMPTS["box"])
    assert np.isfinite(low_q).all()
    assert np.corrcoef(low_q.ravel(), low_f.ravel())[0, 1] > 0.9


def test_missing_onnxruntime_is_a_clear_error(small_model, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(mobilesam.MobileSamError, match="pip install"):
        mobilesam.SamPredictor(small_model, backend="onnx")


def test_bad_options_are_clear_errors(small_model):
    with pytest.raises(ValueError, match="backend"):
        mobilesam.SamPredictor(small_model, backend="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        mobilesam.SamPredictor(small_model, backend="onnx", precision="fp8")


def test_cli_export_onnx(tmp_path, capsys):
    checkpoint = save_random_checkpoint(tmp_path / "w.pt", "vit_t", seed=1)
    out = tmp_path / "models"
    assert cli_main(["export-onnx", str(out), "--checkpoint", str(checkpoint), "--no-download"]) == 0
    assert (out / ENCODER_FILE).is_file() and (out / DECODER_FILE).is_file()
    assert "decoder.onnx" in capsys.readouterr().out
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert cli_main(["export-onnx", str(not_a_dir), "--checkpoint", str(checkpoint), "--no-download"]) == 1
    assert "not a directory" in capsys.readouterr().err
