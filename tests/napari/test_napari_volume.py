"""Volumes in a real napari viewer: prompts in world coordinates on anisotropic, translated
volumes land on the right voxels; propagation, all objects, embedding cache, cancel, NIfTI reader,
segment everything."""

import threading

import numpy as np
import pytest
from standins import DiskPredictor, disk, wait_idle


def _volume(shape=(6, 40, 50), seed=0):
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


def test_prompts_on_a_slice_segment_that_slice(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    viewer.add_image(_volume(), name="vol", scale=(4.0, 0.5, 0.5), translate=(10.0, 0.0, 0.0))
    predictor = DiskPredictor()
    widget.use_predictor(predictor)
    points = viewer.layers["vol prompts"]
    # Identity transform on the prompt layer: its data coordinates are world coordinates, so the
    # widget must convert world -> voxel itself. Voxel (3, 20, 25) sits at world (22, 10, 12.5).
    points.scale, points.translate = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    points.add(np.array([[22.0, 10.0, 12.5]]))
    wait_idle(qtbot, widget)
    current = viewer.layers["vol current object"]
    assert current.data.shape == (6, 40, 50) and tuple(current.scale) == (4.0, 0.5, 0.5)
    np.testing.assert_array_equal(current.data[3] > 0, disk((40, 50), (20, 25), 5))
    assert not np.delete(current.data, 3, axis=0).any()
    assert len(predictor.encoded_images) == 1  # embeddings are lazy: only the prompted slice

    # A prompt on another slice segments that slice and leaves slice 3 as it was.
    points.add(np.array([[10.0 + 4.0 * 1, 0.5 * 30, 0.5 * 10]]))
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(current.data[1] > 0, disk((40, 50), (30, 10), 5))
    np.testing.assert_array_equal(current.data[3] > 0, disk((40, 50), (20, 25), 5))
    assert len(predictor.encoded_images) == 2

    # Removing the slice-1 prompt clears slice 1 only.
    points.selected_data = {1}
    points.remove_selected()
    wait_idle(qtbot, widget)
    assert not current.data[1].any() and current.data[3].any()

    # The slice shown by the viewer (used by "segment everything") is found through world coordinates.
    from napari_mobilesam._layers import current_slice

    viewer.dims.set_point(0, 22.0)
    assert current_slice(viewer, viewer.layers["vol"]) == 3

    # Commit writes the object into the 3D committed labels.
    widget.commit()
    objects = viewer.layers["vol objects"].data
    np.testing.assert_array_equal(objects[3] == 1, disk((40, 50), (20, 25), 5))


def test_precompute_saves_a_cache_that_later_sessions_load(plugin_widget, qtbot, tmp_path):
    viewer, widget = plugin_widget
    viewer.add_image(_volume((4, 32, 32)), name="vol")
    widget.cache_dir.value = str(tmp_path)
    predictor = DiskPredictor()
    widget.use_predictor(predictor)
    widget.precompute_embeddings()
    wait_idle(qtbot, widget)
    assert len(predictor.encoded_images) == 4
    assert any(tmp_path.rglob("*")), "nothing written to the cache folder"
    assert widget.messages[-1] == ("info", "MobileSAM: embeddings ready; click to segment")

    # A fresh predictor (as after restarting napari) loads the slices from the cache.
    fresh = DiskPredictor()
    widget.use_predictor(fresh)
    viewer.layers["vol prompts"].add(np.array([[2.0, 16.0, 16.0]]))
    wait_idle(qtbot, widget)
    assert fresh.encoded_images == []
    np.testing.assert_array_equal(
        viewer.layers["vol current object"].data[2] > 0, disk((32, 32), (16, 16), 5)
    )


def test_cancel_stops_precomputing_and_keeps_layers(plugin_widget, qtbot):
    viewer, widget = plugin_widget
    viewer.add_image(_volume((5, 32, 32)), name="vol")
    gate = threading.Event()
    predictor = DiskPredictor(gate=gate)
    widget.use_predictor(predictor)
    viewer.layers["vol prompts"].add(np.array([[0.0, 16.0, 16.0]]))
    qtbot.waitUntil(lambda: len(predictor.encode_threads) == 1, timeout=10_000)
    gate.set()
    wait_idle(qtbot, widget)
    gate.clear()
    widget.precompute_embeddings()
    qtbot.waitUntil(lambda: len(predictor.encode_threads) == 2, timeout=10_000)
    widget.cancel_button.native.click()
    gate.set()
    wait_idle(qtbot, widget)
    assert len(predictor.encoded_images) < 5
    assert any(level == "info" and "cancelled" in text for level, text in widget.messages)
    assert {"vol", "vol prompts", "vol boxes", "vol current object"} <= {
        layer.name for layer in viewer.layers
    }
    assert len(viewer.layers["vol prompts"].data) == 1 and viewer.layers["vol current object"].data[0].any()


def test_segment_volume_and_all_objects_with_the_real_model(plugin_widget, qtbot, vit_t_checkpoint):
    from mobilesam.volume import propagate_object, segment_objects

    viewer, widget = plugin_widget
    viewer.add_image(_volume((3, 64, 64), seed=1), name="vol", scale=(2.0, 1.0, 1.0))
    widget.checkpoint.value = str(vit_t_checkpoint)
    widget.iou_threshold.value = 0.0  # random weights: predicted IoUs are arbitrary, never stop early
    points = viewer.layers["vol prompts"]
    points.add(np.array([[1.0, 30.0, 30.0]]))
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages

    widget.segment_volume()
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    embeddings = widget._segmenter.embeddings
    prompts = widget_slice_prompts({1: ((30.0, 30.0),)})
    expected = propagate_object(embeddings, prompts, iou_threshold=0.0, projection=widget.projection.value)
    current = viewer.layers["vol current object"].data
    assert current.shape == (3, 64, 64)
    np.testing.assert_array_equal(current > 0, expected)

    widget.commit()
    points.add(np.array([[0.0, 10.0, 50.0]]))
    wait_idle(qtbot, widget, timeout=120_000)
    widget.commit()
    before = viewer.layers["vol objects"].data.copy()
    assert set(np.unique(before)) == {0, 1, 2}
    widget.segment_all_objects()
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    objects = [widget_slice_prompts({1: ((30.0, 30.0),)}), widget_slice_prompts({0: ((50.0, 10.0),)})]
    propagated = segment_objects(embeddings, objects, iou_threshold=0.0, projection=widget.projection.value)
    # Voxels already committed stay as they were; empty ones are filled from the propagation.
    np.testing.assert_array_equal(viewer.layers["vol objects"].data, np.where(before > 0, before, propagated))


def widget_slice_prompts(points_by_slice):
    from mobilesam.volume import SlicePrompt

    return [
        SlicePrompt(z, np.array(pts, dtype=np.float64), np.ones(len(pts), dtype=np.int64), None)
        for z, pts in sorted(points_by_slice.items())
    ]


def test_nifti_reader_keeps_voxel_spacing(make_napari_viewer, tmp_path):
    nib = pytest.importorskip("nibabel", reason="the volume extra is not installed")
    from mobilesam.volume import read_volume

    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0])), str(path))
    expected, spacing = read_volume(path)
    assert sorted(np.round(spacing, 3)) == [0.8, 0.9, 2.5]
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-mobilesam")
    assert len(layers) == 1 and layers[0].name == "scan"
    np.testing.assert_array_equal(layers[0].data, expected)
    np.testing.assert_allclose(layers[0].scale, spacing)


def test_segment_everything_fills_a_labels_layer(plugin_widget, qtbot, vit_t_checkpoint, sample_image):
    import mobilesam
    from mobilesam.mask_outputs import records_to_label_image

    viewer, widget = plugin_widget
    image = sample_image[:96, :128]
    viewer.add_image(image, name="rgb")
    widget.checkpoint.value = str(vit_t_checkpoint)
    widget.points_per_side.value = 2
    # Random weights: predicted IoUs and stability are arbitrary, so keep every mask.
    widget.everything_iou.value = 0.0
    widget.everything_stability.value = 0.0
    widget.segment_everything()
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    layer = viewer.layers["rgb everything"]
    generator = mobilesam.SamAutomaticMaskGenerator(
        widget._predictor.model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    expected = records_to_label_image(generator.generate(image), shape=(96, 128))
    assert layer.data.shape == (96, 128) and expected.max() > 0
    np.testing.assert_array_equal(layer.data, expected)
