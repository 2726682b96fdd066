"""The core's serving layer that every front-end uses: one `MOBILESAM_BACKEND` policy and one
predictor factory (`mobilesam.serving`)."""

import sys

import numpy as np
import pytest

from mobilesam.serving import BackendUnavailable, backend_from_env, build_predictor, parse_backend


@pytest.mark.parametrize(
    "value, expected", [(None, "torch"), ("", "torch"), ("  ", "torch"), (" ONNX ", "onnx")]
)
def test_backend_setting_reads_blank_as_torch_and_ignores_case(value, expected):
    assert parse_backend(value) == expected


def test_unknown_backend_is_an_error_naming_the_allowed_values():
    with pytest.raises(ValueError, match=r"MOBILESAM_BACKEND must be one of torch, onnx, not 'tensorrt'"):
        backend_from_env({"MOBILESAM_BACKEND": "TensorRT"})


def test_label_studio_settings_use_the_policy():
    from labelstudio_backend.settings import Settings

    assert Settings.from_env({"MOBILESAM_BACKEND": " Onnx"}).backend == "onnx"
    with pytest.raises(ValueError) as server_error:
        Settings.from_env({"MOBILESAM_BACKEND": "cuda"})
    with pytest.raises(ValueError) as core_error:
        parse_backend("cuda")
    assert str(server_error.value) == str(core_error.value)  # the napari dock shows it as a warning


def test_factory_builds_torch_and_onnx_predictors_of_one_model(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    torch_predictor = build_predictor(small_model)
    onnx_predictor = build_predictor(small_model, model_type="vit_t", backend="onnx")
    assert (torch_predictor.backend, onnx_predictor.backend) == ("torch", "onnx")
    assert (tmp_path / "onnx" / "vit_t" / "encoder.onnx").is_file()  # the default folder
    for predictor in (torch_predictor, onnx_predictor):
        predictor.set_image(image)
    _, iou_t, low_t = torch_predictor.predict(np.array([[20, 30]]), np.array([1]))
    _, iou_o, low_o = onnx_predictor.predict(np.array([[20, 30]]), np.array([1]))
    assert np.abs(low_t - low_o).max() <= 1e-3 and np.abs(iou_t - iou_o).max() <= 1e-3


def test_factory_reports_a_backend_that_cannot_start(small_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(
        BackendUnavailable, match=r"onnx backend could not be started.*napari-mobilesam\[onnx\]"
    ):
        build_predictor(small_model, backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(ValueError, match="backend must be one of torch, onnx"):
        build_predictor(small_model, backend="openvino")
