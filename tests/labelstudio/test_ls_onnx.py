"""The backend on ONNX Runtime (MOBILESAM_BACKEND=onnx): settings, startup errors, and masks equal to
the torch backend's for the same clicks. A 256-pixel random-weight model keeps the export short;
the backend exports it into the default folder under MOBILESAM_HOME once per module."""

import numpy as np
import pytest
from ls_requests import decode_brush, keypoint, predict_body, rectangle

A = "/data/upload/1/a.png"  # 48 x 64
B = "/data/upload/1/b.png"  # 60 x 40
TOL = 1e-3


@pytest.fixture(scope="module")
def mobilesam_home(tmp_path_factory):
    """MOBILESAM_HOME for this module: the default ONNX folder is <home>/onnx/vit_t."""
    home = tmp_path_factory.mktemp("mobilesam-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILESAM_HOME", str(home))
        yield home


def _ready(backend):
    from labelstudio_backend.api import create_app

    client = create_app(backend).test_client()
    backend.setup()
    assert backend._model_ready.wait(300)
    assert backend.model_status()["model_state"] == "ready", backend.model_status()
    return client


@pytest.fixture(scope="module")
def torch_client(make_backend, memory_images, small_model):
    backend = make_backend(image_loader=memory_images, model_loader=lambda: small_model)
    return backend, _ready(backend)


@pytest.fixture(scope="module")
def onnx_client(make_backend, memory_images, small_model, mobilesam_home):
    backend = make_backend(image_loader=memory_images, model_loader=lambda: small_model, backend="onnx")
    return backend, _ready(backend)


def _predict(client, body):
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]


def test_settings_from_environment():
    from pathlib import Path

    from labelstudio_backend.settings import Settings

    default = Settings.from_env({})
    assert (default.backend, default.onnx_dir, default.onnx_precision) == ("torch", None, "fp32")
    chosen = Settings.from_env(
        {
            "MOBILESAM_BACKEND": " ONNX ",
            "MOBILESAM_ONNX_DIR": "~/exported",
            "MOBILESAM_ONNX_PRECISION": "int8",
        }
    )
    assert (chosen.backend, chosen.onnx_dir, chosen.onnx_precision) == (
        "onnx",
        Path("~/exported").expanduser(),
        "int8",
    )


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("MOBILESAM_BACKEND", "tensorrt", "torch, onnx"),
        ("MOBILESAM_ONNX_PRECISION", "fp16", "fp32, int8"),
        ("MOBILESAM_PRECISION", "fp16", "fp32, bf16, auto"),
    ],
)
def test_bad_values_stop_startup_naming_the_variable(name, value, allowed, monkeypatch, capsys):
    from labelstudio_backend._wsgi import build_app
    from mobilesam.cli import main as cli_main

    with pytest.raises(ValueError) as excinfo:
        build_app({name: value})
    assert name in str(excinfo.value) and allowed in str(excinfo.value) and repr(value) in str(excinfo.value)
    # `mobilesam serve` turns it into one line and exit status 1, before any model is loaded
    monkeypatch.setenv(name, value)
    assert cli_main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{name} must be one of {allowed}" in err and "Traceback" not in err


def test_onnx_click_gives_the_torch_backends_mask(torch_client, onnx_client, mobilesam_home):
    (torch_backend, torch_api), (onnx_backend, onnx_api) = torch_client, onnx_client
    encoder, decoder = onnx_backend._predictors()
    assert encoder.backend == decoder.backend == "onnx"
    assert encoder.runtime.encoder is decoder.runtime.encoder  # one copy of the exported model
    assert (mobilesam_home / "onnx" / "vit_t" / "encoder.onnx").is_file()  # the default folder
    assert onnx_backend.model_version == torch_backend.model_version  # fp32 embeddings are interchangeable

    for body, region in (
        (predict_body([keypoint(28, 21, 64, 48)], A), "kp1"),
        (predict_body([rectangle(4, 6, 30, 36, 40, 60)], B), "rect1"),
    ):
        url = body["tasks"][0]["data"]["image"]
        expected, got = _predict(torch_api, body), _predict(onnx_api, body)
        mask_t, mask_o = decode_brush(expected["result"][0]), decode_brush(got["result"][0])
        assert mask_t.any(), "test needs a non-empty mask"
        iou = (mask_t & mask_o).sum() / (mask_t | mask_o).sum()
        assert iou >= 0.99, iou
        assert got["score"] == pytest.approx(expected["score"], abs=TOL)
        key = (url, frozenset({region}))  # the low-res logits each backend keeps for refinement
        assert np.abs(onnx_backend._refinements[key] - torch_backend._refinements[key]).max() <= TOL
        state_t, _ = torch_backend.embedding(url)
        state_o, _ = onnx_backend.embedding(url)
        assert (state_t.features - state_o.features).abs().max() <= TOL


def test_int8_precision_has_its_own_model_version(
    make_backend, memory_images, small_model, onnx_client, mobilesam_home
):
    int8 = make_backend(
        image_loader=memory_images, model_loader=lambda: small_model, backend="onnx", onnx_precision="int8"
    )
    assert (
        int8.model_version == onnx_client[0].model_version + "-int8static"
    )  # never shares cached embeddings
    client = _ready(int8)
    assert (mobilesam_home / "onnx" / "vit_t" / "encoder.int8-static.onnx").is_file()
    prediction = _predict(client, predict_body([keypoint(28, 21, 64, 48)], A))
    assert decode_brush(prediction["result"][0]).shape == (48, 64)
    assert prediction["model_version"].endswith("-int8static")


def test_missing_onnxruntime_is_reported_and_the_server_keeps_serving(
    make_backend, memory_images, small_model, tmp_path, monkeypatch
):
    from labelstudio_backend.api import create_app

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # makes the import fail
    backend = make_backend(
        image_loader=memory_images, model_loader=lambda: small_model, backend="onnx", onnx_dir=tmp_path
    )
    client = create_app(backend).test_client()
    backend.setup()
    assert backend._model_ready.wait(60)
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["model_state"] == "error"
    assert "pip install 'napari-mobilesam[onnx]'" in health.get_json()["model_error"]
    response = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    assert response.status_code == 503 and "napari-mobilesam[onnx]" in response.get_json()["error"]


def test_default_precision_is_bf16_where_the_cpu_has_it(make_backend, memory_images, vit_t_checkpoint):
    """Settings from an empty environment: the encoder runs in bf16 on a CPU with AVX512-BF16/AMX
    (fp32 elsewhere), under a model version of its own, and a click still gives a mask."""
    import mobilesam
    from labelstudio_backend.settings import Settings
    from mobilesam.runtime import bf16_supported

    precision = Settings.from_env({}).precision
    own_model = mobilesam.load_model("vit_t", vit_t_checkpoint)  # fp32 until the backend sets it
    backend = make_backend(image_loader=memory_images, model_loader=lambda: own_model, precision=precision)
    api = _ready(backend)
    expected = "bf16" if bf16_supported() else "fp32"
    assert own_model.precision == expected
    assert backend.model_version.endswith("-bf16") == (expected == "bf16")
    body = predict_body([keypoint(28, 21, 64, 48)], A)
    assert decode_brush(_predict(api, body)["result"][0]).any()
