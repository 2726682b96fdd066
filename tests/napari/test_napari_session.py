"""A working session in a real viewer (1366x768 window), driven by real mouse clicks on the canvas
and real key presses: one test per defect of issue 12, then a multi-image session with the real
(random-weight) model whose masks must equal the core predictor's for each image."""

import threading
import urllib.error

import numpy as np
import pytest
from napari.layers import Labels
from standins import ContentPredictor, DiskPredictor, bright_image, click, disk, drag, press, wait_idle

PLUGIN_SUFFIXES = ("prompts", "boxes", "current object", "objects")


def choose(viewer, widget, qtbot, layer):
    """Pick `layer` in the widget's Image combo, as the user does, and wait for its prompts layer."""
    combo = widget.image.native
    combo.setCurrentIndex(combo.findText(layer.name))
    _ready_to_click(viewer, qtbot, layer)


def _ready_to_click(viewer, qtbot, layer):
    qtbot.waitUntil(
        lambda: viewer.layers.selection.active is viewer.layers[f"{layer.name} prompts"], timeout=5000
    )
    viewer.reset_view()


def _last_point(viewer, name):
    return viewer.layers[f"{name} prompts"].data[-1]


def test_switching_images_never_decodes_from_another_images_embedding(dock, qtbot):
    """Defect 1: after choosing another image (same or other shape) a click is decoded from that
    image's own embedding; going back re-uses the first image's embedding without re-encoding."""
    viewer, widget = dock
    predictor = ContentPredictor()
    widget.use_predictor(predictor)
    images = [
        viewer.add_image(bright_image(shape, seed), name=name)
        for name, shape, seed in (("a", (60, 80), 1), ("b", (60, 80), 2), ("c", (50, 70), 3))
    ]
    for layer in [*images, images[0]]:
        choose(viewer, widget, qtbot, layer)
        click(viewer, (22.0, 31.0))
        wait_idle(qtbot, widget)
        assert not [m for m in widget.messages if m[0] == "error"], widget.messages
        expected = disk(layer.data.shape, _last_point(viewer, layer.name), 5) & (layer.data > 127)
        current = viewer.layers[f"{layer.name} current object"].data
        assert current.shape == layer.data.shape
        np.testing.assert_array_equal(current > 0, expected)
    assert len(predictor.encoded_images) == 3  # a, b, c once each; back on a: its own embedding again


def test_removing_all_layers_then_opening_a_new_image_uses_its_embedding(dock, qtbot):
    """Defect 1, second way: delete everything, open another image, click."""
    viewer, widget = dock
    predictor = ContentPredictor()
    widget.use_predictor(predictor)
    first = viewer.add_image(bright_image((40, 50), 4), name="first")
    _ready_to_click(viewer, qtbot, first)
    click(viewer, (20.0, 20.0))
    wait_idle(qtbot, widget)
    viewer.layers.clear()
    second = viewer.add_image(bright_image((64, 48), 5), name="second")
    _ready_to_click(viewer, qtbot, second)
    click(viewer, (30.0, 20.0))
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    expected = disk((64, 48), _last_point(viewer, "second"), 5) & (second.data > 127)
    np.testing.assert_array_equal(viewer.layers["second current object"].data > 0, expected)


def test_committed_objects_survive_switching_and_removed_layers_get_results(dock, qtbot):
    """Defects 2 and 10: All objects after switching away and back; the objects layer removed while
    All objects runs; removing an image removes its prompt layers."""
    viewer, widget = dock
    gate = threading.Event()
    gate.set()
    predictor = DiskPredictor(gate=gate)
    widget.use_predictor(predictor)
    vol = viewer.add_image(
        np.random.default_rng(0).integers(0, 3000, (4, 32, 32)).astype(np.uint16), name="vol"
    )
    other = viewer.add_image(np.zeros((4, 32, 32), np.uint16), name="other")
    choose(viewer, widget, qtbot, vol)
    viewer.dims.set_point(0, 1)
    click(viewer, (16.0, 16.0))
    wait_idle(qtbot, widget)
    press(viewer, "C")
    assert set(np.unique(viewer.layers["vol objects"].data)) == {0, 1}
    choose(viewer, widget, qtbot, other)
    choose(viewer, widget, qtbot, vol)

    gate.clear()  # hold the encoder so the objects layer can be removed while the task runs
    widget.all_objects_button.native.click()
    qtbot.waitUntil(lambda: widget.busy, timeout=5000)
    assert not any("commit at least one" in text for _, text in widget.messages)
    viewer.layers.remove("vol objects")
    gate.set()
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    assert any(level == "warning" and "were removed while working" in text for level, text in widget.messages)
    objects = viewer.layers["vol objects"].data
    assert objects.shape == (4, 32, 32) and (objects == 1).sum() > 0  # the result is in the new layer

    viewer.layers.remove("other")
    assert not [name for name in (f"other {s}" for s in PLUGIN_SUFFIXES) if name in viewer.layers]


def test_keys_work_whichever_layer_is_active(dock, qtbot):
    """Defect 3: C with the image layer active commits (napari would auto-contrast); M with a
    Labels layer active cycles the candidate (napari would pick a new label)."""
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    image = viewer.add_image(bright_image((60, 80), 1), name="img")
    _ready_to_click(viewer, qtbot, image)
    click(viewer, (30.0, 40.0))
    wait_idle(qtbot, widget)
    contrast = tuple(image.contrast_limits)
    viewer.layers.selection.active = image
    press(viewer, "C")
    assert (
        (viewer.layers["img objects"].data == 1).sum() == disk((60, 80), _last_point(viewer, "img"), 5).sum()
        if len(viewer.layers["img prompts"].data)
        else (viewer.layers["img objects"].data == 1).any()
    )
    assert tuple(image.contrast_limits) == contrast
    other = viewer.add_labels(np.zeros((60, 80), np.int32), name="other labels")
    viewer.layers.selection.active = other
    selected = other.selected_label
    press(viewer, "M")
    assert widget.candidate.value == "1" and other.selected_label == selected


def test_the_widget_follows_napari_selection(dock, qtbot):
    """Defect 4: a newly opened image is targeted and clicks on it segment; selecting an image in
    the layer list targets it."""
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    first = viewer.add_image(bright_image((40, 50), 1), name="first")
    second = viewer.add_image(bright_image((40, 50), 2), name="second")
    assert widget.image.value is second
    _ready_to_click(viewer, qtbot, second)
    click(viewer, (20.0, 25.0))
    wait_idle(qtbot, widget)
    assert viewer.layers["second current object"].data.any()
    viewer.layers.selection.active = first
    assert widget.image.value is first
    _ready_to_click(viewer, qtbot, first)
    viewer.layers.selection.active = first  # the image itself: a click adds nothing, and says so
    click(viewer, (10.0, 10.0))
    assert "add no prompts" in widget.status.value and "'first prompts'" in widget.status.value


def test_channel_toggles_add_no_duplicate_layers(dock, qtbot):
    """Defect 5."""
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    viewer.add_image(np.zeros((3, 40, 50), np.uint16), name="img")
    for value in ("first axis is channels", "auto", "first axis is channels", "auto"):
        widget.channels.value = value
        viewer.layers["img prompts"].add(np.array([[1.0, 20.0, 20.0]]))  # something in the current object
        wait_idle(qtbot, widget)
        assert viewer.layers["img current object"].data.any()
    names = [layer.name for layer in viewer.layers]
    assert not [name for name in names if "[" in name], names
    assert "img objects" not in viewer.layers  # made by the first commit, not by a setting


def test_compute_embeddings_keeps_every_slice_and_persists_by_default(dock, qtbot, tmp_path, monkeypatch):
    """Defect 6: the explicit step keeps all slices (memory budget, not 16) and writes them to the
    default cache folder, so a fresh session encodes nothing."""
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    viewer, widget = dock
    volume = np.random.default_rng(1).integers(0, 3000, (20, 24, 24)).astype(np.uint16)
    viewer.add_image(volume, name="vol")
    predictor = DiskPredictor()
    widget.use_predictor(predictor)
    widget.embed_button.native.click()
    wait_idle(qtbot, widget)
    assert len(predictor.encoded_images) == 20
    assert len(widget._segmenter.embeddings.in_memory) == 20
    assert any((tmp_path / "embeddings.zarr").rglob("*")), "nothing persisted in the default cache folder"
    fresh = DiskPredictor()
    widget.use_predictor(fresh)
    viewer.layers["vol prompts"].add(np.array([[7.0, 12.0, 12.0]]))
    wait_idle(qtbot, widget)
    assert fresh.encoded_images == [] and viewer.layers["vol current object"].data[7].any()


def test_plugin_layers_follow_the_image_transform_and_results_are_made_lazily(dock, qtbot):
    """Defect 7, and huge images: opening an image makes no full-size layer; the first click makes
    'current object', the first C 'objects', both with the image's scale/translate at that moment
    and below the prompts; every plugin layer follows a later change of the transform; the prompts
    layer keeps the clicks."""
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    image = viewer.add_image(bright_image((40, 50), 1), name="img")
    _ready_to_click(viewer, qtbot, image)
    assert not [layer.name for layer in viewer.layers if isinstance(layer, Labels)]
    image.scale = (2.0, 0.5)
    image.translate = (5.0, -3.0)
    _ready_to_click(viewer, qtbot, image)
    click(viewer, (25.0, 10.0))  # world (25, 10) = image pixel (10, 26)
    wait_idle(qtbot, widget)
    current = viewer.layers["img current object"]
    assert "img objects" not in viewer.layers
    first = disk((40, 50), _last_point(viewer, "img"), 5)  # near pixel (10, 26)
    assert first[10, 26]
    np.testing.assert_array_equal(current.data > 0, first)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers["img prompts"], timeout=5000)
    press(viewer, "C")
    objects = viewer.layers["img objects"]
    np.testing.assert_array_equal(objects.data == 1, first)
    names = [layer.name for layer in viewer.layers]
    assert names.index("img objects") < names.index("img current object") < names.index("img boxes")
    for layer in (current, objects):
        np.testing.assert_allclose(layer.scale, (2.0, 0.5))
        np.testing.assert_allclose(layer.translate, (5.0, -3.0))
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers["img prompts"], timeout=5000)
    click(viewer, (45.0, 15.0))  # the prompts layer still takes clicks: image pixel (20, 36)
    wait_idle(qtbot, widget)
    second = disk((40, 50), _last_point(viewer, "img"), 5)
    assert second[20, 36]
    np.testing.assert_array_equal(current.data > 0, second)

    image.scale = (1.0, 3.0)
    image.translate = (-2.0, 4.0)
    for suffix in PLUGIN_SUFFIXES:
        layer = viewer.layers[f"img {suffix}"]
        np.testing.assert_allclose(layer.scale, (1.0, 3.0))
        np.testing.assert_allclose(layer.translate, (-2.0, 4.0))


def test_status_line_progress_and_full_error(dock, qtbot, monkeypatch, tmp_path):
    """Defect 8: progress in the dock while encoding; errors in full in the status line, leading
    with the action; the status is not replaced by "ready" afterwards."""
    import mobilesam.weights

    viewer, widget = dock
    gate = threading.Event()
    widget.use_predictor(DiskPredictor(gate=gate))
    image = viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    _ready_to_click(viewer, qtbot, image)
    click(viewer, (20.0, 20.0))
    qtbot.waitUntil(lambda: widget.busy, timeout=5000)
    assert widget.progress.visible and widget.cancel_button.enabled
    assert "embedding" in widget.status.value
    press(viewer, "C")  # nothing to commit yet: the task's status line stays
    assert "embedding" in widget.status.value
    gate.set()
    wait_idle(qtbot, widget)
    assert not widget.progress.visible

    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    monkeypatch.delenv("MOBILESAM_CHECKPOINT", raising=False)
    monkeypatch.setattr(
        mobilesam.weights.urllib.request,
        "urlopen",
        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no network")),
    )
    widget.model_type.value = "vit_b"  # not loaded yet: needs weights that are not there
    wait_idle(qtbot, widget)
    status = widget.status.value
    assert status.startswith("MobileSAM: no model weights. Choose a checkpoint file")
    assert str(tmp_path) in status and "MOBILESAM_CHECKPOINT" in status  # the instructions, in full
    assert widget.status.native.wordWrap()


def test_huge_image_is_refused_before_anything_is_allocated(dock, qtbot):
    """Defect 9: a 16400 x 16400 image (a zero-cost broadcast array) gets no plugin layers."""
    viewer, widget = dock
    viewer.add_image(np.broadcast_to(np.uint8(0), (16400, 16400)), name="huge", contrast_limits=(0, 1))
    assert not [layer for layer in viewer.layers if layer.name.startswith("huge ")]
    assert any("pixel limit" in text for _, text in widget.messages)


def test_model_reading_boxes_and_point_mode(dock, qtbot, tmp_path):
    """Defect 11: the checkpoint disables Model and names the file; a (5, Y, X) layout is said;
    two boxes are two objects; T's negative mode ends with a commit; a junk checkpoint's message
    never suggests weights_only=False."""
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    image = viewer.add_image(np.zeros((60, 80), np.uint8), name="img")
    _ready_to_click(viewer, qtbot, image)
    viewer.layers.selection.active = viewer.layers["img boxes"]
    viewer.layers["img boxes"].mode = "add_rectangle"
    drag(viewer, (5.0, 5.0), (20.0, 25.0))
    drag(viewer, (30.0, 40.0), (50.0, 70.0))
    qtbot.wait(50)  # the box is segmented once napari has finished the drawing
    wait_idle(qtbot, widget)
    assert len(viewer.layers["img boxes"].data) == 2
    current = viewer.layers["img current object"].data
    assert set(np.unique(current)) == {0, 1, 2}
    press(viewer, "T")
    assert widget.point_mode.value == "negative"
    press(viewer, "C")
    objects = viewer.layers["img objects"].data
    assert set(np.unique(objects)) == {0, 1, 2}
    assert objects[12, 15] != objects[40, 55] and objects[12, 15] > 0 and objects[40, 55] > 0
    assert widget.point_mode.value == "positive"
    assert str(viewer.layers["img prompts"].feature_defaults["label"].iloc[0]) == "positive"

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 64)
    widget.checkpoint.value = str(junk)
    assert not widget.model_type.enabled and "junk.pt" in widget.weights.value

    viewer.add_image(np.zeros((5, 30, 30), np.uint16), name="five")
    assert "5 slices" in widget.reading.value and "channels" in widget.reading.value
    viewer.layers["five prompts"].add(np.array([[2.0, 10.0, 10.0]]))
    wait_idle(qtbot, widget)
    errors = [text for level, text in widget.messages if level == "error"]
    assert errors and "junk.pt" in errors[-1] and "weights_only" not in errors[-1], errors


def test_dock_fits_a_small_screen(dock, qtbot):
    """Defect 12: at 1366x768 the status line and Cancel are on screen, the sections scroll,
    long messages do not widen the dock, and volume tools are hidden for 2D images."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QScrollArea

    viewer, widget = dock
    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    qtbot.wait(50)
    window = viewer.window._qt_window
    for part in (widget.status.native, widget.cancel_button.native):
        top_left = part.mapTo(window, QPoint(0, 0))
        assert part.isVisible() and 0 <= top_left.y() and top_left.y() + part.height() <= window.height()
    scroll = widget.native.findChild(QScrollArea)
    assert scroll is not None and scroll.widget() is widget.sections.native
    assert not widget.volume_section.visible
    width = widget.native.width()
    widget._notify("info", "MobileSAM: " + "a very long message " * 40)
    qtbot.wait(50)
    assert widget.native.width() == width
    viewer.add_image(np.zeros((6, 40, 50), np.uint8), name="vol")
    assert widget.volume_section.visible
    widget.prompt_section.header.native.click()
    assert widget.prompt_section.collapsed and not widget.candidate.native.isVisible()


def test_multi_image_session_matches_the_core_predictor(dock, qtbot, small_model):
    """Three images (two of one shape, one of another), prompts and commits on each, switching back
    and forth; every mask equals the core predictor's mask for that image; All objects on each volume."""
    import mobilesam
    from mobilesam.image import to_rgb_uint8
    from mobilesam.volume import SlicePrompt, VolumeEmbeddings, segment_objects

    viewer, widget = dock
    widget.use_predictor(mobilesam.SamPredictor(small_model))
    rng = np.random.default_rng(7)
    images = {
        "p": viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="p"),
        "q": viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="q"),
        "v": viewer.add_image(rng.integers(0, 255, (3, 48, 80), dtype=np.uint8), name="v"),
    }
    oracle = mobilesam.SamPredictor(small_model)
    plan = [
        ("p", (20.0, 30.0)),
        ("q", (40.0, 20.0)),
        ("v", (24.0, 40.0)),
        ("p", (45.0, 45.0)),
        ("q", (10.0, 50.0)),
        ("v", (12.0, 15.0)),
    ]
    committed = {name: [] for name in images}
    for name, yx in plan:
        layer = images[name]
        choose(viewer, widget, qtbot, layer)
        if name == "v":
            viewer.dims.set_point(0, 1)
        click(viewer, yx)
        wait_idle(qtbot, widget)
        assert not [m for m in widget.messages if m[0] == "error"], widget.messages
        point = _last_point(viewer, name)
        data = layer.data[1] if name == "v" else layer.data
        rgb = VolumeEmbeddings(layer.data, oracle).slice_image(1) if name == "v" else to_rgb_uint8(data)
        oracle.set_image(rgb)
        masks, scores, _ = oracle.predict(np.array([[point[-1], point[-2]]]), np.array([1]))
        current = viewer.layers[f"{name} current object"].data
        shown = current[1] if name == "v" else current
        np.testing.assert_array_equal(shown > 0, masks[int(np.argmax(scores))])
        press(viewer, "C")
        committed[name].append(point)
    for name in ("p", "q"):
        assert set(np.unique(viewer.layers[f"{name} objects"].data)) <= {0, 1, 2}
        assert (viewer.layers[f"{name} objects"].data > 0).any()

    choose(viewer, widget, qtbot, images["v"])
    before = viewer.layers["v objects"].data.copy()
    widget.all_objects_button.native.click()
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    embeddings = VolumeEmbeddings(images["v"].data, oracle)
    prompts = [[SlicePrompt(1, np.array([[p[-1], p[-2]]]), np.array([1]), None)] for p in committed["v"]]
    ids = sorted(i for i in np.unique(before) if i)
    objects = [prompt for i, prompt in zip(range(1, 3), prompts) if i in ids]
    propagated = segment_objects(
        embeddings, objects, iou_threshold=widget.iou_threshold.value, projection=widget.projection.value
    )
    label_of = np.array([0, *ids])
    np.testing.assert_array_equal(
        viewer.layers["v objects"].data, np.where(before > 0, before, label_of[propagated])
    )
    assert isinstance(viewer.layers["v objects"], Labels)

    # Defect 4, second half: after Segment everything, clicks still add prompts.
    choose(viewer, widget, qtbot, images["p"])
    widget.points_per_side.value = 2
    widget.everything_iou.value = widget.everything_stability.value = 0.0
    widget.everything_section.header.native.click()  # folded by default
    widget.everything_button.native.click()
    wait_idle(qtbot, widget)
    assert "p everything" in viewer.layers
    _ready_to_click(viewer, qtbot, images["p"])
    before_points = len(viewer.layers["p prompts"].data)
    click(viewer, (30.0, 30.0))
    wait_idle(qtbot, widget)
    assert len(viewer.layers["p prompts"].data) == before_points + 1


def test_2d_embeddings_persist_by_default_and_a_chosen_folder_reuses_them(dock, qtbot, tmp_path, monkeypatch):
    """2D images are persisted in the default cache folder like volumes (content-addressed): the
    same pixels opened again encode nothing, and a cache folder chosen afterwards is filled from
    the default one instead of encoding again."""
    home = tmp_path / "home"
    monkeypatch.setenv("MOBILESAM_HOME", str(home))
    viewer, widget = dock
    pixels = bright_image((60, 80), 7)
    first = DiskPredictor()
    widget.use_predictor(first)
    _ready_to_click(viewer, qtbot, viewer.add_image(pixels, name="a"))
    click(viewer, (22.0, 31.0))
    wait_idle(qtbot, widget)
    assert len(first.encoded_images) == 1
    assert list((home / "embeddings.zarr").rglob("zarr.json")), (
        "nothing persisted in the default cache folder"
    )

    viewer.layers.clear()  # as after closing the image and opening the same file again
    fresh = DiskPredictor()
    widget.use_predictor(fresh)
    _ready_to_click(viewer, qtbot, viewer.add_image(pixels.copy(), name="b"))
    click(viewer, (22.0, 31.0))
    wait_idle(qtbot, widget)
    assert fresh.encoded_images == [] and viewer.layers["b current object"].data.any()

    chosen = tmp_path / "chosen"
    widget.cache_dir.value = str(chosen)
    click(viewer, (40.0, 50.0))
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    assert fresh.encoded_images == [] and viewer.layers["b current object"].data.any()
    assert list(chosen.rglob("zarr.json")), "the chosen folder was not filled from the default one"


def test_cancel_segment_everything_is_prompt_and_the_gui_never_freezes(dock, qtbot, tmp_path):
    """Segment everything with many prompts (random-weight vit_t, embedding computed first and
    reused, not encoded again): a real click on Cancel stops it quickly, and a QTimer heartbeat on
    the GUI thread never stalls long while it runs. Goals: cancel < 1 s, GUI stalls < 0.2 s;
    asserted with generous bounds (the test machine is shared: 1.8-4.3 s seen with batches of 16
    under load; 0.9-2.1 s with 8 checked per batch, 0.15-0.37 s with the check per torch op at a
    load average of 6-12 on 2 cores), the measured figures printed."""
    import time

    from qtpy.QtCore import QPoint, Qt, QTimer
    from qtpy.QtTest import QTest

    from mobilesam.testing import save_random_checkpoint

    viewer, widget = dock
    widget.checkpoint.value = str(save_random_checkpoint(tmp_path / "w.pt", "vit_t", seed=0))
    image = viewer.add_image(bright_image((96, 128), 3), name="img")
    _ready_to_click(viewer, qtbot, image)
    widget.embed_button.native.click()
    wait_idle(qtbot, widget, timeout=120_000)
    widget.points_per_side.value = 64  # 4096 prompts, 512 batches: far longer than the test waits
    widget.everything_iou.value = widget.everything_stability.value = 0.0
    widget.everything_section.header.native.click()  # folded by default

    beats = []
    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
    heartbeat.start()
    widget.everything_button.native.click()
    assert widget.busy
    qtbot.wait(1500)  # batches are running
    assert widget.busy, "Segment everything finished before it could be cancelled"
    button = widget.cancel_button.native
    clicked = time.perf_counter()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton, pos=QPoint(button.width() // 2, button.height() // 2))
    wait_idle(qtbot, widget, timeout=30_000)
    cancel_s = time.perf_counter() - clicked
    qtbot.wait(100)
    heartbeat.stop()
    stall_s = float(np.diff(beats).max())
    print(
        f"\nSegment everything: cancel took {cancel_s:.2f} s (goal < 1 s); "
        f"longest GUI stall {stall_s * 1000:.0f} ms (goal < 200 ms) over {len(beats)} heartbeats"
    )
    assert "img everything" not in viewer.layers  # cancelled: no result layer
    assert "cancelled" in widget.status.value.lower(), widget.status.value
    assert cancel_s < 6.0
    assert stall_s < 1.0


def test_cancel_checks_stop_torch_work_at_the_next_op_in_this_thread_only():
    """Segment everything's Cancel lands within one torch op (not one decoder batch): inside the
    block an op after Cancel raises `Cancelled`; other threads and code after the block run on."""
    import torch

    from mobilesam.errors import Cancelled
    from napari_mobilesam._tasks import cancel_checks_inside

    model, cancel = torch.nn.Linear(4, 4), threading.Event()
    x = torch.ones(2, 4)
    other_thread = []
    with cancel_checks_inside(model, cancel, "segment everything"):
        assert model(x).shape == (2, 4)  # not cancelled: ops run as usual
        cancel.set()
        worker = threading.Thread(target=lambda: other_thread.append(torch.add(x, 1)))
        worker.start()
        worker.join()
        with pytest.raises(Cancelled, match="segment everything was cancelled"):
            torch.mul(x, 2)
    assert len(other_thread) == 1  # the mode is this thread's only
    assert torch.mul(x, 2).sum() == 16  # and gone after the block
    with cancel_checks_inside(None, cancel, "x"):  # not a torch model (ONNX Runtime): no checks
        assert torch.mul(x, 2).sum() == 16


def test_keys_are_listed_in_napari_shortcut_preferences(dock, qtbot):
    """The plugin's keys are napari actions: Preferences ▸ Shortcuts lists them under the viewer's
    key bindings with the plugin's keys, and a key changed there is the one the widget answers."""
    from napari._qt.widgets.qt_keyboard_settings import ShortcutEditor
    from napari.utils.action_manager import action_manager

    viewer, widget = dock
    editor = ShortcutEditor()
    qtbot.addWidget(editor)
    listed = editor.key_bindings_strs[editor.VIEWER_KEYBINDINGS]
    for name, key in (
        ("segment", "S"),
        ("commit", "C"),
        ("clear", "Shift-C"),
        ("toggle", "T"),
        ("candidate", "M"),
        ("volume", "Shift-S"),
    ):
        action = listed[f"napari_mobilesam:{name}"]
        assert action.description.startswith("MobileSAM: ")
        assert [str(s) for s in action_manager._shortcuts[f"napari_mobilesam:{name}"]] == [key]

    widget.use_predictor(DiskPredictor())
    image = viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    _ready_to_click(viewer, qtbot, image)
    action_manager.unbind_shortcut("napari_mobilesam:toggle")
    action_manager.bind_shortcut("napari_mobilesam:toggle", "Y")  # as the Preferences editor does
    try:
        before = widget.point_mode.value
        press(viewer, "Y")
        assert widget.point_mode.value != before
        press(viewer, "T")  # no longer the toggle key
        assert widget.point_mode.value != before
    finally:
        action_manager.unbind_shortcut("napari_mobilesam:toggle")
        action_manager.bind_shortcut("napari_mobilesam:toggle", "T")
    press(viewer, "T")
    assert widget.point_mode.value == before
