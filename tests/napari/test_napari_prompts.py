"""Prompting in 2D through a real napari viewer: points/boxes -> current object, candidates, keys,
commit and clear. A stand-in predictor makes the expected masks exact."""

import threading

import numpy as np
from napari.layers import Labels, Points, Shapes
from standins import DiskPredictor, disk, press, wait_idle


def _image(viewer, shape=(60, 80), **kwargs):
    rng = np.random.default_rng(0)
    return viewer.add_image(rng.integers(0, 4000, shape).astype(np.uint16), name="img", **kwargs)


def test_widget_creates_prompt_layers(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    _image(viewer)
    assert widget.image.value is viewer.layers["img"]
    assert isinstance(viewer.layers["img prompts"], Points)
    assert isinstance(viewer.layers["img boxes"], Shapes)
    # The full-size result layers are made by the first mask and the first commit (lazily).
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers["img prompts"])
    # The key bindings are listed in the widget.
    for key in ("S", "Shift-S", "C", "Shift-C", "T", "M"):
        assert key in widget.key_help.value


def test_points_in_world_coordinates_segment_the_right_pixels(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    image = _image(viewer, scale=(0.5, 2.0), translate=(10.0, -4.0))
    predictor = DiskPredictor()
    widget.use_predictor(predictor)
    points = viewer.layers["img prompts"]
    # Prompts are read through world coordinates, so they land right even when the prompt layer's
    # transform differs from the image's (here: identity, so its data coordinates are world ones).
    points.scale, points.translate = (1.0, 1.0), (0.0, 0.0)
    # World (y, x) = translate + scale * data (y, x): image pixel (20, 30) sits at world (20, 56).
    points.add(np.array([[10 + 0.5 * 20, -4 + 2.0 * 30]]))
    wait_idle(qtbot, widget)
    current = viewer.layers["img current object"].data
    np.testing.assert_array_equal(current > 0, disk((60, 80), (20, 30), 5))  # 'best' = radius 5
    assert len(predictor.encoded_images) == 1
    assert predictor.encode_threads[0] is not threading.main_thread()
    # uint16 input reaches the predictor as RGB uint8 of the same size.
    assert predictor.encoded_images[0].shape == (60, 80, 3) and predictor.encoded_images[0].dtype == np.uint8
    np.testing.assert_allclose(image.scale, viewer.layers["img current object"].scale)

    # Another point re-segments without encoding again.
    points.feature_defaults = {"label": "negative"}
    points.add(np.array([[10 + 0.5 * 22, -4 + 2.0 * 30]]))
    wait_idle(qtbot, widget)
    expected = disk((60, 80), (20, 30), 5) & ~disk((60, 80), (22, 30), 3)
    np.testing.assert_array_equal(viewer.layers["img current object"].data > 0, expected)
    assert len(predictor.encoded_images) == 1


def test_candidates_keys_commit_and_clear(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    _image(viewer)
    widget.use_predictor(DiskPredictor())
    points = viewer.layers["img prompts"]
    points.add(np.array([[20.0, 30.0]]))
    wait_idle(qtbot, widget)
    current = viewer.layers["img current object"]
    assert (current.data > 0).sum() == disk((60, 80), (20, 30), 5).sum()
    assert "[0.90]" in widget.scores.value

    widget.candidate.value = "3"
    np.testing.assert_array_equal(current.data > 0, disk((60, 80), (20, 30), 8))
    press(viewer, "M")  # next candidate comes back to "best" ...
    assert widget.candidate.value == "best"
    np.testing.assert_array_equal(current.data > 0, disk((60, 80), (20, 30), 5))
    press(viewer, "M")  # ... and then 1
    assert widget.candidate.value == "1"
    np.testing.assert_array_equal(current.data > 0, disk((60, 80), (20, 30), 2))
    widget.candidate.value = "best"

    # T toggles the label of new points; the two kinds get different colours.
    press(viewer, "T")
    assert widget.point_mode.value == "negative"
    points.add(np.array([[20.0, 33.0]]))
    wait_idle(qtbot, widget)
    assert list(points.features["label"]) == ["positive", "negative"]
    assert not np.allclose(points.face_color[0], points.face_color[1])
    press(viewer, "T")
    assert widget.point_mode.value == "positive"

    # C commits with id 1 and clears the prompts; a second overlapping object gets id 2 and
    # does not overwrite object 1.
    first = current.data > 0
    press(viewer, "C")
    objects = viewer.layers["img objects"].data
    np.testing.assert_array_equal(objects == 1, first)
    assert len(points.data) == 0 and not current.data.any()

    points.add(np.array([[20.0, 36.0]]))
    wait_idle(qtbot, widget)
    second = current.data > 0
    press(viewer, "C")
    np.testing.assert_array_equal(objects == 1, first)
    np.testing.assert_array_equal(objects == 2, second & ~first)

    # Shift-C clears prompts and the current object.
    points.add(np.array([[40.0, 60.0]]))
    wait_idle(qtbot, widget)
    assert current.data.any()
    press(viewer, "Shift-C")
    assert len(points.data) == 0 and not current.data.any()
    assert set(np.unique(objects)) == {0, 1, 2}


def test_box_prompt_and_manual_segment_key(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    _image(viewer)
    widget.use_predictor(DiskPredictor())
    widget.auto_segment.value = False
    boxes = viewer.layers["img boxes"]
    boxes.add_rectangles(np.array([[10.0, 20.0], [30.0, 50.0]]))
    assert "img current object" not in viewer.layers  # no automatic segmentation
    press(viewer, "S")
    wait_idle(qtbot, widget)
    current = viewer.layers["img current object"]
    expected = np.zeros((60, 80), bool)
    expected[10:31, 20:51] = True
    np.testing.assert_array_equal(current.data > 0, expected)


def test_channels_first_image_is_one_2d_image(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    data = np.zeros((2, 40, 50), np.uint16)
    data[0, 10:30, 10:30] = 1000  # channel 0 -> red, channel 1 -> green in the RGB the encoder sees
    data[1, 5:15, 30:45] = 500
    viewer.add_image(data, name="img", scale=(1.0, 0.5, 0.5))
    widget.channels.value = "first axis is channels"
    predictor = DiskPredictor()
    widget.use_predictor(predictor)
    points = viewer.layers["img prompts"]
    assert points.ndim == 3
    points.add(np.array([[1.0, 20.0, 25.0]]))  # clicked while the channel slider shows channel 1
    wait_idle(qtbot, widget)
    assert viewer.layers["img current object"].data.shape == (40, 50)
    np.testing.assert_array_equal(viewer.layers["img current object"].data > 0, disk((40, 50), (20, 25), 5))
    rgb = predictor.encoded_images[0]
    assert rgb.shape == (40, 50, 3)
    assert rgb[20, 20, 0] > rgb[20, 20, 1] and rgb[10, 40, 1] > rgb[10, 40, 0] and not rgb[..., 2].any()
    assert tuple(viewer.layers["img current object"].scale) == (0.5, 0.5)
