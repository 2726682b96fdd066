"""Undo / redo, delete object and refining an existing label, in a real viewer with real clicks and
keys (issue 16). Stand-in predictors make the expected masks exact."""

import numpy as np
from standins import DiskPredictor, MaskInputPredictor, bright_image, click, disk, press, wait_idle


def _ready(viewer, qtbot, name):
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers[f"{name} prompts"], timeout=5000)
    viewer.reset_view()


def _hover(viewer, world_yx):
    """Move the mouse over world (y, x) on the canvas (napari's cursor follows it)."""
    from qtpy.QtCore import QPoint
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas
    x, y = canvas.view.scene.transform.map([world_yx[-1], world_yx[-2], 0, 1])[:2]
    QTest.mouseMove(canvas.native, QPoint(int(round(x)), int(round(y))))


def test_undo_redo_commit_clear_and_delete_with_keys(dock, qtbot):
    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    viewer.add_image(bright_image((60, 80), 1), name="img")
    _ready(viewer, qtbot, "img")
    points = viewer.layers["img prompts"]

    click(viewer, (20.0, 20.0))
    wait_idle(qtbot, widget)
    press(viewer, "C")
    objects, current = viewer.layers["img objects"], viewer.layers["img current object"]  # made by now
    _ready(viewer, qtbot, "img")  # a newly made layer takes the selection until the dock gives it back
    after_first = objects.data.copy()
    prompts_first = {k: dict(v) for k, v in widget._session().object_prompts.items()}
    assert set(np.unique(after_first)) == {0, 1} and set(prompts_first) == {1}

    click(viewer, (40.0, 55.0))
    wait_idle(qtbot, widget)
    shown = current.data.copy()
    point = points.data.copy()
    press(viewer, "C")
    after_second = objects.data.copy()
    assert set(np.unique(after_second)) == {0, 1, 2} and not current.data.any()

    # Undo (any plugin layer active: here the objects layer, whose napari Ctrl-Z would do nothing)
    # restores the labels exactly, the committed-object prompts, and the prompts of object 2.
    viewer.layers.selection.active = objects
    press(viewer, "Control-Z")
    np.testing.assert_array_equal(objects.data, after_first)
    assert widget._session().object_prompts == prompts_first
    np.testing.assert_array_equal(points.data, point)
    np.testing.assert_array_equal(current.data, shown)
    assert list(points.features["label"]) == ["positive"]

    viewer.layers.selection.active = points
    press(viewer, "Control-Shift-Z")
    np.testing.assert_array_equal(objects.data, after_second)
    assert set(widget._session().object_prompts) == {1, 2} and not len(points.data)

    # A stroke painted by hand on the objects layer is undone first, in its place among the edits.
    objects.brush_size = 3
    objects.paint((5, 70), 9)
    assert (objects.data == 9).any()
    press(viewer, "Control-Z")
    np.testing.assert_array_equal(objects.data, after_second)
    press(viewer, "Control-Shift-Z")
    assert (objects.data == 9).any()
    press(viewer, "Control-Z")
    np.testing.assert_array_equal(objects.data, after_second)

    # Clear is undoable too.
    click(viewer, (10.0, 70.0))
    wait_idle(qtbot, widget)
    press(viewer, "Shift-C")
    assert not len(points.data) and not current.data.any()
    press(viewer, "Control-Z")
    assert len(points.data) == 1 and current.data.any()
    press(viewer, "Shift-C")

    # Delete the object under the cursor (Shift-D), then undo it; the dock button takes the id field.
    _hover(viewer, (20.0, 20.0))
    press(viewer, "Shift-D")
    assert 1 not in objects.data and (objects.data == 2).sum() == (after_second == 2).sum()
    assert set(widget._session().object_prompts) == {2}
    press(viewer, "Control-Z")
    np.testing.assert_array_equal(objects.data, after_second)
    assert set(widget._session().object_prompts) == {1, 2}
    widget.object_id.value = 2
    widget.objects_section.delete_button.native.click()
    assert set(np.unique(objects.data)) == {0, 1}

    # Refining object 1 of the image's own objects layer (2D) with a negative click.
    from mobilesam.mask_prompt import mask_box, mask_input_logits

    one = objects.data == 1
    widget.use_predictor(MaskInputPredictor())
    widget.object_id.value = 0
    _hover(viewer, (20.0, 20.0))
    press(viewer, "Shift-R")
    assert widget.refiner.refining and widget.refiner.target.obj == 1
    _ready(viewer, qtbot, "img")
    press(viewer, "T")
    click(viewer, (20.0, 24.0))
    wait_idle(qtbot, widget)
    ((y, x),) = points.data
    expected, _, _ = widget._predictor.predict(
        np.array([[x, y]]), np.array([0]), mask_box(one), mask_input_logits(one), multimask_output=False
    )
    assert one[round(y), round(x)] and not expected[0][round(y), round(x)]  # the negative point cut it
    np.testing.assert_array_equal(current.data > 0, expected[0])
    press(viewer, "C")
    np.testing.assert_array_equal(objects.data == 1, expected[0])
    assert set(widget._session().object_prompts) == {1}

    # A Labels layer the plugin did not edit keeps napari's own paint undo.
    other = viewer.add_labels(np.zeros((60, 80), np.int32), name="hand")
    other.paint((30, 30), 7)
    viewer.layers.selection.active = other
    press(viewer, "Control-Z")
    assert not other.data.any() and (objects.data == 1).sum() == expected[0].sum()


def test_refining_an_eroded_label_with_one_click_gives_the_core_predictors_mask(dock, qtbot):
    from scipy import ndimage

    from mobilesam.mask_prompt import mask_box, mask_input_logits

    viewer, widget = dock
    predictor = MaskInputPredictor()
    widget.use_predictor(predictor)
    volume = np.stack([bright_image((64, 72), seed) for seed in range(4)])
    viewer.add_image(volume, name="vol", scale=(2.0, 0.5, 0.5))
    _ready(viewer, qtbot, "vol")
    # A label from elsewhere (e.g. Cellpose): object 5 on slices 1-2, eroded; object 3 nearby.
    truth = np.zeros(volume.shape, bool)
    truth[1:3] = disk((64, 72), (30, 30), 12)
    eroded = ndimage.binary_erosion(truth, iterations=3, structure=np.ones((1, 3, 3)))
    cellpose = np.zeros(volume.shape, np.int32)
    cellpose[eroded] = 5
    cellpose[1, 50:60, 55:65] = 3
    layer = viewer.add_labels(cellpose.copy(), name="cellpose", scale=(2.0, 0.5, 0.5))
    widget.edit_layer.value = layer

    viewer.dims.set_point(0, 2.0 * 1)  # slice 1
    _hover(viewer, (0.5 * 30, 0.5 * 30))
    press(viewer, "Shift-R")  # refine the object under the cursor
    assert widget.refiner.refining and widget.refiner.target.obj == 5
    np.testing.assert_array_equal(viewer.layers["vol current object"].data > 0, eroded)
    _ready(viewer, qtbot, "vol")
    click(viewer, (0.5 * 30, 0.5 * 16))  # a positive point where the erosion cut the disk
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    (z, y, x), label = viewer.layers["vol prompts"].data[-1], 1
    assert round(z) == 1

    # Every slice the object covers is prompted with its box + mask input; slice 1 also with the point.
    expected = np.zeros_like(eroded)
    for s in (1, 2):
        predictor.original_size = eroded[s].shape
        coords = np.array([[x, y]]) if s == 1 else None
        masks, _, _ = predictor.predict(
            coords,
            np.array([label]) if s == 1 else None,
            box=mask_box(eroded[s]),
            mask_input=mask_input_logits(eroded[s]),
            multimask_output=False,
        )
        expected[s] = masks[0]
    assert not np.array_equal(expected, eroded)
    np.testing.assert_array_equal(viewer.layers["vol current object"].data > 0, expected)

    press(viewer, "C")  # replaces object 5 in place; object 3 and the background elsewhere stay
    want = cellpose.copy()
    want[want == 5] = 0
    want[expected & (want == 0)] = 5
    np.testing.assert_array_equal(layer.data, want)
    assert not widget.refiner.refining and not len(viewer.layers["vol prompts"].data)
    press(viewer, "Control-Z")  # undoable
    np.testing.assert_array_equal(layer.data, cellpose)


def test_a_label_seeds_the_volume_propagation_and_commit_replaces_it(dock, qtbot):
    from mobilesam.volume import SlicePrompt, propagate_object

    viewer, widget = dock
    widget.use_predictor(DiskPredictor())
    volume = np.stack([bright_image((40, 48), seed) for seed in range(5)])
    viewer.add_image(volume, name="vol")
    _ready(viewer, qtbot, "vol")
    widget.iou_threshold.value = 0.0
    seed = np.zeros(volume.shape, np.int32)
    seed[2, 10:20, 12:26] = 4  # a 2-D label on one slice of another tool's layer
    seed[2, 30:35, 30:35] = 1
    layer = viewer.add_labels(seed.copy(), name="stardist")
    widget.edit_layer.value = layer
    widget.object_id.value = 4
    widget.objects_section.seed_button.native.click()
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    expected = propagate_object(
        widget._segmenter.embeddings,
        [SlicePrompt(2, box=np.array([12.0, 10.0, 25.0, 19.0]))],
        iou_threshold=0.0,
    )
    assert expected[[0, 4]].any()  # reached the other slices
    np.testing.assert_array_equal(viewer.layers["vol current object"].data > 0, expected)
    press(viewer, "C")
    want = np.where(seed == 4, 0, seed)
    want[expected & (want == 0)] = 4
    np.testing.assert_array_equal(layer.data, want)
