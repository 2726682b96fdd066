"""The plugin as napari sees it (manifest, menus, sample data), work off the GUI thread, clear
messages on errors, and the real model end to end."""

import subprocess
import sys
import threading
import urllib.error
from pathlib import Path

import numpy as np
from standins import DiskPredictor, disk, wait_idle


def test_npe2_validate_passes():
    npe2 = Path(sys.executable).with_name("npe2")  # the venv's console script
    result = subprocess.run(
        [str(npe2), "validate", "napari-mobilesam", "--imports"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_contributions_and_segment_menu(make_napari_viewer):
    from napari._app_model import get_app_model
    from npe2 import PluginManager

    make_napari_viewer()  # discovers plugins and registers their menus in napari's app model
    manifest = PluginManager.instance().get_manifest("napari-mobilesam")
    assert manifest.name == "napari-mobilesam"  # the distribution name
    assert [w.display_name for w in manifest.contributions.widgets] == ["MobileSAM"]
    assert {s.key for s in manifest.contributions.sample_data} == {"cell_2d", "blobs_3d"}
    items = get_app_model().menus.get_menu("napari/layers/segment")
    titles = [getattr(item, "command", None) and item.command.title for item in items]
    assert "MobileSAM" in " ".join(str(t) for t in titles)


def test_sample_data_opens_offline(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mobilesam", "cell_2d")
    viewer.open_sample("napari-mobilesam", "blobs_3d")
    cell, volume = viewer.layers
    assert cell.data.ndim == 2 and cell.data.shape == (660, 550)
    assert volume.data.ndim == 3 and tuple(volume.scale) == (4.0, 1.0, 1.0)
    assert volume.data.dtype == np.uint16 and volume.data.max() > 4 * np.median(volume.data)


def test_embedding_runs_off_the_gui_thread(plugin_widget, qtbot):
    from napari.utils import progress
    from qtpy.QtCore import QTimer

    viewer, widget = plugin_widget
    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    gate = threading.Event()
    predictor = DiskPredictor(gate=gate)
    widget.use_predictor(predictor)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    try:
        points = viewer.layers["img prompts"]
        points.add(np.array([[10.0, 10.0]]))
        qtbot.waitUntil(lambda: len(predictor.encode_threads) == 1, timeout=10_000)
        # The encoder is "running" (held by the gate) and the GUI event loop keeps processing.
        before = len(ticks)
        qtbot.waitUntil(lambda: len(ticks) >= before + 5, timeout=10_000)
        assert widget.busy and widget.cancel_button.enabled
        assert predictor.encode_threads[0] is not threading.main_thread()
        assert any("embedding" in str(bar.desc) for bar in progress._all_instances)  # napari progress bar
        # A prompt added meanwhile is kept and segmented once the embedding is ready.
        points.add(np.array([[30.0, 40.0]]))
    finally:
        gate.set()
        timer.stop()
    wait_idle(qtbot, widget)
    assert not widget.cancel_button.enabled
    expected = disk((40, 50), (10, 10), 5)  # the first positive point defines the stand-in's disk
    np.testing.assert_array_equal(viewer.layers["img current object"].data > 0, expected)
    assert len(points.data) == 2 and len(predictor.encoded_images) == 1


def test_messages_for_no_image_and_wrong_layer_type(plugin_widget):
    viewer, widget = plugin_widget
    widget.segment_prompts()
    assert widget.messages[-1][0] == "error" and "no image layer" in widget.messages[-1][1]
    viewer.add_labels(np.zeros((10, 10), np.int32), name="masks")
    widget.segment_prompts()
    assert "Labels layer" in widget.messages[-1][1] and "'masks'" in widget.messages[-1][1]
    assert len(viewer.layers) == 1


def test_prompts_outside_the_image_are_reported_and_kept(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    widget.use_predictor(DiskPredictor())
    points = viewer.layers["img prompts"]
    points.add(np.array([[-20.0, 10.0], [20.0, 25.0]]))
    wait_idle(qtbot, widget)
    assert any(level == "warning" and "1 prompt(s) outside" in text for level, text in widget.messages)
    assert len(points.data) == 2  # nothing the user drew is removed
    np.testing.assert_array_equal(viewer.layers["img current object"].data > 0, disk((40, 50), (20, 25), 5))


def test_missing_weights_message_keeps_prompts(plugin_widget, qtbot, monkeypatch, tmp_path):
    import mobilesam.weights

    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    monkeypatch.delenv("MOBILESAM_CHECKPOINT", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mobilesam.weights.urllib.request, "urlopen", offline)
    viewer, widget = plugin_widget
    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    viewer.layers["img prompts"].add(np.array([[20.0, 25.0]]))
    wait_idle(qtbot, widget)
    level, text = widget.messages[-1]
    assert level == "error" and "no model weights" in text
    assert "mobile_sam.pt" in text and str(tmp_path) in text  # says where to put the file
    assert "Checkpoint" in text
    assert len(viewer.layers["img prompts"].data) == 1 and "img" in viewer.layers


def test_real_model_segments_rgb_image(plugin_widget, qtbot, vit_t_checkpoint, sample_image):
    """Random weights, real pipeline: the mask shown is the core predictor's answer for the prompt."""
    import mobilesam

    viewer, widget = plugin_widget
    viewer.add_image(sample_image, name="rgb", scale=(2.0, 2.0))
    widget.checkpoint.value = str(vit_t_checkpoint)
    viewer.layers["rgb prompts"].add(np.array([[120.0, 160.0]]))  # data coords: pixel (y=120, x=160)
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    predictor = widget._predictor
    assert isinstance(predictor, mobilesam.SamPredictor) and predictor.original_size == (240, 320)
    masks, scores, _ = predictor.predict(np.array([[160.0, 120.0]]), np.array([1]), multimask_output=True)
    current = viewer.layers["rgb current object"]
    assert current.data.shape == (240, 320) and tuple(current.scale) == (2.0, 2.0)
    np.testing.assert_array_equal(current.data > 0, masks[int(np.argmax(scores))])


def test_widget_applies_the_core_allocator_settings(make_napari_viewer, monkeypatch):
    import mobilesam.runtime

    calls = []
    real = mobilesam.runtime.configure_allocator
    monkeypatch.setattr(mobilesam.runtime, "configure_allocator", lambda: calls.append(1) or real())
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    assert calls == [1]


def test_model_section_says_which_arithmetic_the_encoder_runs(plugin_widget, monkeypatch):
    """The Model section's Encoder line follows the model, backend and $MOBILESAM_PRECISION: bf16
    for vit_t where the CPU has it (the front-ends' default), fp32 otherwise, with the reason."""
    from mobilesam.runtime import bf16_supported

    _, widget = plugin_widget
    monkeypatch.delenv("MOBILESAM_PRECISION", raising=False)
    widget.model_type.value = "vit_b"
    assert widget.arithmetic.value.startswith("fp32 (")
    widget.model_type.value = "vit_t"
    if bf16_supported():
        assert widget.arithmetic.value.startswith("bf16 (this CPU has AVX512-BF16/AMX")
    else:
        assert widget.arithmetic.value == "fp32 (this CPU has no AVX512-BF16/AMX)"
    monkeypatch.setenv("MOBILESAM_PRECISION", "fp32")
    widget.backend.value = "onnx"
    assert widget.arithmetic.value == "fp32 (ONNX Runtime)"
    widget.backend.value = "torch"
    assert widget.arithmetic.value == "fp32 ($MOBILESAM_PRECISION=fp32)"
    monkeypatch.setenv("MOBILESAM_PRECISION", "fast")
    widget.model_type.value = "vit_l"
    assert "MOBILESAM_PRECISION must be one of" in widget.arithmetic.value
