"""The widget's Backend choice: ONNX Runtime gives the torch backend's mask for the same click, the
export runs off the GUI thread, and a backend that cannot start leaves the session as it was.

`mobilesam.load_model` is replaced by a 256-pixel random-weight model (exported in seconds instead of
the 1024-pixel model's ~15 s); the default ONNX folder lies under a temporary MOBILESAM_HOME."""

import threading

import numpy as np
import pytest
from standins import wait_idle


@pytest.fixture(scope="module")
def mobilesam_home(tmp_path_factory):
    """Shared by the module's tests, so the model is exported once."""
    return tmp_path_factory.mktemp("mobilesam-home")


@pytest.fixture
def small_model_loads(small_model, mobilesam_home, monkeypatch):
    """The widget's model loads return `small_model`; returns the list of load calls."""
    import mobilesam

    monkeypatch.setenv("MOBILESAM_HOME", str(mobilesam_home))
    monkeypatch.delenv("MOBILESAM_BACKEND", raising=False)
    # The loads hand out the session's shared model; the factory sets its precision, which the
    # other tests need left at fp32.
    monkeypatch.setenv("MOBILESAM_PRECISION", "fp32")
    loads = []
    monkeypatch.setattr(mobilesam, "load_model", lambda *args, **kwargs: loads.append(args) or small_model)
    return loads


def _image():
    yy, xx = np.mgrid[:60, :80]
    image = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1)
    image[(yy - 30) ** 2 + (xx - 40) ** 2 < 15**2] = 230
    return image.astype(np.uint8)


def _click_with_torch(viewer, widget, qtbot):
    viewer.add_image(_image(), name="rgb")
    assert widget.backend.value == "torch"
    viewer.layers["rgb prompts"].add(np.array([[30.0, 40.0]]))
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    mask = viewer.layers["rgb current object"].data > 0
    assert mask.any(), "test needs a non-empty mask"
    return mask


def test_onnx_backend_gives_the_torch_mask(
    plugin_widget, qtbot, small_model_loads, mobilesam_home, monkeypatch
):
    import mobilesam.onnx.predictor as onnx_predictor

    export_threads = []
    real_export = onnx_predictor.export_onnx
    monkeypatch.setattr(
        onnx_predictor,
        "export_onnx",
        lambda *a, **k: export_threads.append(threading.current_thread()) or real_export(*a, **k),
    )
    viewer, widget = plugin_widget
    torch_mask = _click_with_torch(viewer, widget, qtbot)
    torch_predictor = widget._predictor

    widget.backend.value = "onnx"  # re-segments the shown prompt with the new backend
    qtbot.waitUntil(lambda: widget.busy, timeout=10_000)
    wait_idle(qtbot, widget, timeout=180_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    predictor = widget._predictor
    assert predictor.backend == "onnx" and predictor is not torch_predictor
    assert (
        predictor.model is torch_predictor.model and len(small_model_loads) == 1
    )  # weights not loaded again
    assert (mobilesam_home / "onnx" / "vit_t" / "decoder.onnx").is_file()
    assert len(export_threads) == 1 and export_threads[0] is not threading.main_thread()
    onnx_mask = viewer.layers["rgb current object"].data > 0
    iou = (onnx_mask & torch_mask).sum() / (onnx_mask | torch_mask).sum()
    assert iou >= 0.99, iou

    widget.backend.value = "torch"  # back again: a torch predictor on the same weights, the same mask
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget._predictor.backend == "torch" and len(small_model_loads) == 1
    np.testing.assert_array_equal(viewer.layers["rgb current object"].data > 0, torch_mask)


def test_missing_onnxruntime_shows_the_error_and_keeps_torch(
    plugin_widget, qtbot, small_model_loads, monkeypatch
):
    viewer, widget = plugin_widget
    torch_mask = _click_with_torch(viewer, widget, qtbot)
    torch_predictor = widget._predictor
    layers_before = [layer.name for layer in viewer.layers]

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # makes the import fail
    widget.backend.value = "onnx"
    qtbot.waitUntil(lambda: any(level == "error" for level, _ in widget.messages), timeout=60_000)
    wait_idle(qtbot, widget)
    errors = [text for level, text in widget.messages if level == "error"]
    assert len(errors) == 1 and "pip install 'napari-mobilesam[onnx]'" in errors[0], widget.messages
    assert widget.backend.value == "torch" and widget._predictor is torch_predictor  # the previous backend
    assert [layer.name for layer in viewer.layers] == layers_before
    assert len(viewer.layers["rgb prompts"].data) == 1
    np.testing.assert_array_equal(viewer.layers["rgb current object"].data > 0, torch_mask)

    # Still working: a second click is segmented by the torch predictor.
    viewer.layers["rgb prompts"].add(np.array([[10.0, 10.0]]))
    wait_idle(qtbot, widget)
    assert widget._predictor is torch_predictor
    assert len([m for m in widget.messages if m[0] == "error"]) == 1


def test_backend_default_from_environment(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("MOBILESAM_BACKEND", "ONNX")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    assert widget.backend.value == "onnx"

    from napari_mobilesam._widget import MobileSamWidget

    monkeypatch.setenv("MOBILESAM_BACKEND", "tensorrt")
    other = MobileSamWidget(viewer)
    assert other.backend.value == "torch"
    assert any(
        level == "warning" and "MOBILESAM_BACKEND" in text and "'tensorrt'" in text
        for level, text in other.messages
    )
