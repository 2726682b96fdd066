"""Save objects… and resume in a new viewer (issue 16): real clicks and keys segment 3 objects of an
anisotropic volume, the file keeps the voxel size and the prompts, and *All objects* on the
reopened session gives what it gave before saving."""

import json

import numpy as np
from standins import DiskPredictor, bright_image, click, press, wait_idle

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (4.0, 1.0, 0.0)


def _open_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    widget.use_predictor(DiskPredictor())
    qtbot.wait(20)
    return viewer, widget


def _wait_for_prompts_layer(viewer, qtbot):
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers["vol prompts"], timeout=5000)


def _add_volume(viewer, qtbot, volume):
    viewer.add_image(volume, name="vol", scale=SCALE, translate=TRANSLATE)
    _wait_for_prompts_layer(viewer, qtbot)
    viewer.reset_view()


def _world(z, y, x):
    return tuple(t + s * v for t, s, v in zip(TRANSLATE, SCALE, (z, y, x)))


def _all_objects(qtbot, widget):
    seen = len(widget.messages)
    widget.all_objects_button.native.click()
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages[seen:] if m[0] != "info"], widget.messages[seen:]


def test_save_close_reopen_and_resume_gives_the_same_all_objects(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    volume = np.stack([bright_image((64, 64), seed) for seed in range(6)])
    viewer, widget = _open_dock(make_napari_viewer, qtbot)
    _add_volume(viewer, qtbot, volume)
    widget.iou_threshold.value = 0.25  # the disks' boxes overlap them by ~0.5: keep propagating
    for z, y, x in ((1, 16, 16), (3, 40, 44), (4, 16, 48)):
        viewer.dims.set_point(0, _world(z, 0, 0)[0])
        click(viewer, _world(z, y, x)[1:])
        wait_idle(qtbot, widget)
        press(viewer, "C")
        _wait_for_prompts_layer(viewer, qtbot)  # a newly made result layer takes the selection for a moment
    objects = viewer.layers["vol objects"]
    saved = objects.data.copy()
    prompts = {k: dict(v) for k, v in widget._session().object_prompts.items()}
    assert set(np.unique(saved)) == {0, 1, 2, 3} and set(prompts) == {1, 2, 3}

    # The objects layer carries the sidecar, so napari's File > Save Selected Layers keeps the prompts.
    assert [o["id"] for o in objects.metadata["mobilesam"]["objects"]] == [1, 2, 3]
    viewer.layers.selection = {objects}
    via_napari = tmp_path / "via napari.ome.tif"
    viewer.layers.save(str(via_napari), selected=True, plugin="napari-mobilesam")

    # A failed save (the target's folder is a file) says so in the dock; nothing is lost.
    blocker = tmp_path / "not a folder"
    blocker.write_text("x")
    assert widget.persistence.save(blocker / "cells.tif") is None
    assert "could not save" in widget.status.value and str(blocker) in widget.status.value
    np.testing.assert_array_equal(objects.data, saved)

    path = widget.persistence.save(tmp_path / "cells.tif")
    assert path is not None and "saved 3 objects" in widget.status.value
    with tifffile.TiffFile(path) as tif:  # the voxel size is in the file, as ImageJ reads it
        assert tif.imagej_metadata["spacing"] == SCALE[0]
        x_resolution = tif.pages[0].tags["XResolution"].value
        assert x_resolution[0] / x_resolution[1] == 1 / SCALE[2]
    sidecar = json.loads(path.with_name("cells.tif.mobilesam.json").read_text())
    assert [o["id"] for o in sidecar["objects"]] == [1, 2, 3]
    assert sidecar["objects"][1]["prompts"][0]["slice"] == 3
    assert sidecar["model"]["identity"] == "standin-vit_t" and sidecar["settings"]["projection"]

    _all_objects(qtbot, widget)
    before = objects.data.copy()
    assert (before > 0).sum() > (saved > 0).sum()  # propagation filled other slices
    viewer.close()

    viewer, widget = _open_dock(make_napari_viewer, qtbot)
    _add_volume(viewer, qtbot, volume)
    assert widget.persistence.open(path)
    objects = viewer.layers["vol objects"]
    np.testing.assert_array_equal(objects.data, saved)
    np.testing.assert_allclose(objects.scale, SCALE)
    np.testing.assert_allclose(objects.translate, TRANSLATE)
    assert widget._session().object_prompts == prompts
    assert widget.iou_threshold.value == 0.25  # the settings used come back too
    _all_objects(qtbot, widget)
    np.testing.assert_array_equal(objects.data, before)
    press(viewer, "Control-Z")  # All objects is undoable too
    np.testing.assert_array_equal(objects.data, saved)
    press(viewer, "Control-Shift-Z")
    np.testing.assert_array_equal(objects.data, before)

    # A label image without a sidecar: committed objects without prompts (undoable).
    from mobilesam.volume.segmentation_io import save_segmentation

    plain = save_segmentation(tmp_path / "plain.nii.gz", (saved == 2).astype(np.uint8) * 7, spacing=SCALE)
    assert widget.persistence.open(plain)
    assert set(np.unique(objects.data)) == {0, 7} and widget._session().object_prompts == {}
    press(viewer, "Control-Z")
    np.testing.assert_array_equal(objects.data, before)
    assert widget._session().object_prompts == prompts

    # File > Open with our reader: a Labels layer with the sidecar in its metadata, resumed at once.
    viewer.open(str(via_napari), plugin="napari-mobilesam")
    qtbot.waitUntil(lambda: "via napari" not in viewer.layers, timeout=5000)
    np.testing.assert_array_equal(objects.data, saved)
    assert widget._session().object_prompts == prompts
    from napari.layers._layer_actions import _duplicate_layer  # Layers > Duplicate

    viewer.layers.selection = {objects}
    _duplicate_layer(viewer.layers)  # a copy made in napari is left alone (it is not a file to resume)
    qtbot.wait(50)
    assert "vol objects copy" in viewer.layers

    # A sidecar written for another image is refused with a message; nothing changes. Prompts of an
    # id missing from the labels (erased by hand after its commit) are left out with a warning.
    wrong = dict(sidecar, image=dict(sidecar["image"], shape=[1, 2, 3]))
    assert not widget.persistence.resume(saved, wrong, "wrong.tif")
    assert "wrong.tif" in widget.status.value and "[1, 2, 3]" in widget.status.value
    np.testing.assert_array_equal(objects.data, saved)
    assert widget.persistence.resume(np.where(saved == 3, 0, saved), sidecar, "erased.tif")
    assert set(widget._session().object_prompts) == {1, 2} and "object(s) 3" in widget.messages[-2][1]


def test_objects_of_a_volume_in_millimetres_are_saved_in_millimetres(make_napari_viewer, qtbot, tmp_path):
    """A CT opened in mm: the plugin's layers take the image's unit, and Save objects… writes mm
    (a file claiming µm would shrink the voxels a thousandfold)."""
    import nibabel

    volume = np.stack([bright_image((64, 64), seed) for seed in range(6)])
    viewer, widget = _open_dock(make_napari_viewer, qtbot)
    viewer.add_image(volume, name="vol", scale=SCALE, translate=TRANSLATE, units="mm")
    _wait_for_prompts_layer(viewer, qtbot)
    viewer.reset_view()
    viewer.dims.set_point(0, _world(2, 0, 0)[0])
    click(viewer, _world(2, 16, 16)[1:])
    wait_idle(qtbot, widget)
    press(viewer, "C")
    _wait_for_prompts_layer(viewer, qtbot)
    assert {str(u) for u in viewer.layers["vol objects"].units} == {"millimeter"}
    path = widget.persistence.save(tmp_path / "ct objects.nii.gz")
    assert path is not None, widget.status.value
    header = nibabel.load(path).header
    assert header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(header.get_zooms()[:3], SCALE[::-1])
