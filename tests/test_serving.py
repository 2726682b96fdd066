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


def test_precision_setting_defaults_to_auto_and_names_the_allowed_values():
    from mobilesam.serving import parse_precision

    assert parse_precision(None) == parse_precision("  ") == "auto"
    assert parse_precision(" BF16") == "bf16"
    with pytest.raises(ValueError, match=r"MOBILESAM_PRECISION must be one of fp32, bf16, auto, not 'fp16'"):
        parse_precision("fp16")


def test_encoder_precision_is_bf16_only_for_tinyvit_on_a_bf16_cpu():
    from mobilesam.runtime import bf16_supported
    from mobilesam.serving import encoder_precision

    native = bf16_supported()
    assert encoder_precision("auto", "vit_t") == ("bf16" if native else "fp32")
    assert encoder_precision("auto", "vit_b") == encoder_precision("fp32", "vit_t") == "fp32"
    with pytest.raises(ValueError, match="vit_b has no low-precision path"):
        encoder_precision("bf16", "vit_b")
    if not native:
        with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
            encoder_precision("bf16", "vit_t")


def test_factory_sets_the_precision_of_the_models_it_loads(small_model, tmp_path, monkeypatch):
    """A loaded model gets $MOBILESAM_PRECISION (default auto); a model handed in keeps its own
    unless a precision is asked for; the embedding cache identity follows the precision."""
    import mobilesam
    from mobilesam.runtime import bf16_supported
    from mobilesam.serving import model_identity
    from mobilesam.testing import save_random_checkpoint

    checkpoint = save_random_checkpoint(tmp_path / "w.pt", "vit_t", seed=0, image_size=64)
    monkeypatch.delenv("MOBILESAM_PRECISION", raising=False)
    auto = build_predictor(model_type="vit_t", checkpoint=checkpoint)
    assert auto.model.precision == ("bf16" if bf16_supported() else "fp32")
    monkeypatch.setenv("MOBILESAM_PRECISION", "fp32")
    assert build_predictor(model_type="vit_t", checkpoint=checkpoint).model.precision == "fp32"
    assert build_predictor(small_model).model.precision == small_model.precision == "fp32"

    fp32_model = mobilesam.build_sam("vit_t", checkpoint, image_size=64)
    assert model_identity(fp32_model) == model_identity(fp32_model, precision="fp32")
    if bf16_supported():
        bf16_model = build_predictor(
            mobilesam.build_sam("vit_t", checkpoint, image_size=64), precision="bf16"
        ).model
        assert model_identity(bf16_model) == model_identity(fp32_model) + "-bf16"
        assert model_identity(model_type="vit_t", checkpoint=checkpoint, precision="bf16").endswith("-bf16")
