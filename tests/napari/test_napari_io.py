"""The plugin's reader and writers in a real viewer: files open with their voxel size as the layer's
scale (TIFF, OME-TIFF, DICOM), Labels layers save with it (File > Save Selected Layers), and a label
file with a sidecar reopens as Labels carrying the sidecar for the dock to resume."""

import json
import os

import numpy as np
import pytest
import tifffile

PLUGIN = "napari-mobilesam"


def make_labels() -> np.ndarray:
    labels = np.zeros((5, 24, 32), np.uint16)
    labels[1:4, 3:10, 4:15] = 2
    labels[2:5, 12:20, 18:30] = 9
    return labels


def test_tiff_and_dicom_open_with_their_voxel_size(make_napari_viewer, tmp_path):
    from mobilesam.testing import write_dicom_series

    viewer = make_napari_viewer()
    stack = np.arange(4 * 16 * 20, dtype=np.uint16).reshape(4, 16, 20)
    imagej = tmp_path / "stack.tif"
    tifffile.imwrite(
        imagej,
        stack,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"},
    )
    [layer] = viewer.open(str(imagej), plugin=PLUGIN)
    assert layer.name == "stack" and layer.metadata["axes"] == "ZYX"
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(layer.data), stack)

    two_channels = np.stack([stack, stack + 1], axis=1)  # Z, C, Y, X
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        ome,
        two_channels,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5},
    )
    layers = viewer.open(str(ome), plugin=PLUGIN)
    assert len(layers) == 2  # one layer per channel
    for channel, layer in enumerate(layers):
        np.testing.assert_allclose(layer.scale, (1.5, 0.25, 0.25))
        np.testing.assert_array_equal(np.asarray(layer.data), stack + channel)

    volume = np.random.default_rng(1).integers(-500, 500, (5, 12, 14)).astype(np.int16)
    files = write_dicom_series(
        tmp_path / "ct", volume, (3.0, 0.8, 0.7), origin=(20.0, -5.0, 4.0), file_order=[4, 2, 0, 3, 1]
    )
    # Selected slice files, stacked, give the same volume as their folder.
    [stacked] = viewer.open([str(f) for f in files], stack=True, plugin=PLUGIN)
    np.testing.assert_array_equal(stacked.data, volume)
    [layer] = viewer.open(str(tmp_path / "ct"), plugin=PLUGIN)
    np.testing.assert_array_equal(layer.data, volume)
    np.testing.assert_allclose(layer.scale, (3.0, 0.8, 0.7))
    np.testing.assert_allclose(layer.translate, (20.0, -5.0, 4.0))
    assert [str(u) for u in layer.units] == ["millimeter"] * 3


@pytest.mark.parametrize("name", ["objects.tif", "objects.ome.tif", "objects.nii.gz", "objects.ome.zarr"])
def test_labels_save_and_reopen_with_spacing_and_sidecar(make_napari_viewer, tmp_path, name):
    viewer = make_napari_viewer()
    sidecar = {"objects": [{"id": 2, "prompts": [{"slice": 2, "points": [[6, 8]], "labels": [1]}]}]}
    viewer.add_labels(
        make_labels(),
        name="objects",
        scale=(2.0, 0.5, 0.25),
        translate=(1.0, 0.0, -3.0),
        units="millimeter",
        metadata={"mobilesam": sidecar},
    )
    path = tmp_path / name
    written = viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    assert written == [str(path)]
    if name.endswith(".tif"):
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
                assert (pixels["PhysicalSizeZ"], pixels["PhysicalSizeY"], pixels["PhysicalSizeX"]) == (
                    2.0,
                    0.5,
                    0.25,
                )
            else:
                assert tif.imagej_metadata["spacing"] == 2.0 and tif.imagej_metadata["unit"] == "mm"
                num, den = tif.pages[0].tags["XResolution"].value
                assert den / num == pytest.approx(0.25)
    elif name.endswith(".nii.gz"):
        import nibabel as nib

        header = nib.load(str(path)).header
        assert header.get_zooms() == pytest.approx((0.25, 0.5, 2.0)) and header.get_xyzt_units()[0] == "mm"
    assert json.loads((tmp_path / f"{name}.mobilesam.json").read_text())["objects"] == sidecar["objects"]

    viewer.layers.clear()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.__class__.__name__ == "Labels" and layer.name == "objects"
    np.testing.assert_array_equal(np.asarray(layer.data), make_labels())
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (1.0, 0.0, -3.0))
    assert [str(u) for u in layer.units] == ["millimeter"] * 3
    assert layer.metadata["mobilesam"]["objects"] == sidecar["objects"]
    assert layer.metadata["mobilesam"]["label_image"]["ids"] == [2, 9]


def test_bad_files_and_targets_report_the_file_and_keep_the_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(make_labels(), name="objects", scale=(2.0, 0.5, 0.5))
    saved = tmp_path / "objects.tif"
    viewer.layers.save(str(saved), selected=True, plugin=PLUGIN)
    before = saved.read_bytes()

    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(Exception, match=r"blocked.*is a file, not a folder"):
        viewer.layers.save(str(tmp_path / "blocked" / "objects.tif"), selected=True, plugin=PLUGIN)
    labels.data[labels.data == 9] = 0
    labels.metadata["mobilesam"] = {"objects": [object()]}  # not JSON: the save fails before writing
    with pytest.raises(Exception, match="cannot be written as JSON"):
        viewer.layers.save(str(saved), selected=True, plugin=PLUGIN)
    assert saved.read_bytes() == before and "objects" in viewer.layers
    assert sorted(os.listdir(tmp_path)) == ["blocked", "objects.tif"]

    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(before[: len(before) // 2])
    with pytest.raises(Exception, match=r"could not read image .*damaged\.tif: the file is truncated"):
        viewer.open(str(damaged), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["objects"]
