"""Label images with geometry and a sidecar: round trips through ImageJ TIFF, OME-TIFF, NIfTI and
OME-Zarr (checked against each library's own metadata), atomic saves and clear errors on bad files."""

import json
import os

import numpy as np
import pytest
import tifffile

from mobilesam.volume import (
    Segmentation,
    SegmentationFileError,
    load_segmentation,
    save_segmentation,
    segmentation_io,
)

SPACING = (2.0, 0.5, 0.25)  # (dz, dy, dx)
ORIGIN = (4.0, -1.5, 3.0)


def make_labels(shape=(6, 32, 48)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[1:4, 4:12, 5:20] = 3
    labels[2:5, 20:30, 30:44] = 7
    labels[0, 0:2, 0:2] = 12
    return labels


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if "mobilesam-tmp" in name)


def stored_geometry(path, kind):
    """(spacing, origin) as the format's own library reads them, in (z, y, x) order."""
    if kind == "imagej":
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata
            xres, yres = (tif.pages[0].tags[t].value for t in ("XResolution", "YResolution"))
            assert meta["unit"] == "um" and tif.series[0].axes == "ZYX"
            spacing = (meta["spacing"], yres[1] / yres[0], xres[1] / xres[0])
            origin = tuple(-meta[f"{a}origin"] * s for a, s in zip("zyx", spacing))
            return spacing, origin
    if kind == "ome":
        with tifffile.TiffFile(path) as tif:
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
            assert pixels["PhysicalSizeXUnit"] == "µm"
            first = pixels["Plane"][0]
            spacing = tuple(pixels[f"PhysicalSize{a}"] for a in "ZYX")
            return spacing, tuple(first[f"Position{a}"] for a in "ZYX")
    if kind == "nifti":
        import nibabel as nib

        image = nib.load(str(path))
        assert image.header.get_xyzt_units()[0] == "micron"
        return tuple(image.header.get_zooms()[::-1]), tuple(image.affine[:3, 3][::-1])
    import zarr

    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    transforms = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    by_type = {t["type"]: t for t in transforms}
    return tuple(by_type["scale"]["scale"]), tuple(by_type["translation"]["translation"])


@pytest.mark.parametrize(
    "name, kind",
    [
        ("cells.tif", "imagej"),
        ("cells.ome.tif", "ome"),
        ("cells.nii.gz", "nifti"),
        ("cells.nii", "nifti"),
        ("cells.ome.zarr", "zarr"),
    ],
)
def test_round_trip_keeps_labels_geometry_and_sidecar(tmp_path, name, kind):
    labels = make_labels()
    sidecar = {"objects": [{"id": 3, "prompts": [{"slice": 2, "points": [[10, 6]], "labels": [1]}]}]}
    path = save_segmentation(tmp_path / name, labels, spacing=SPACING, origin=ORIGIN, sidecar=sidecar)
    assert path == tmp_path / name
    spacing, origin = stored_geometry(path, kind)
    assert spacing == pytest.approx(SPACING) and origin == pytest.approx(ORIGIN)

    on_disk = json.loads((tmp_path / f"{name}.mobilesam.json").read_text())
    assert on_disk["objects"] == sidecar["objects"]
    assert on_disk["label_image"]["shape"] == [6, 32, 48]
    assert on_disk["label_image"]["ids"] == [3, 7, 12]
    assert on_disk["label_image"]["dtype"] == "uint8"  # smallest type that holds id 12

    loaded = load_segmentation(path)
    assert isinstance(loaded, Segmentation) and loaded.path == path and loaded.unit == "µm"
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.spacing == pytest.approx(SPACING) and loaded.origin == pytest.approx(ORIGIN)
    assert loaded.sidecar["objects"] == sidecar["objects"]
    assert leftovers(tmp_path) == []


def test_two_d_labels_and_ids_beyond_imagej_16_bits(tmp_path):
    flat = make_labels()[2]
    loaded = load_segmentation(save_segmentation(tmp_path / "flat.tif", flat, spacing=(0.5, 0.25)))
    np.testing.assert_array_equal(loaded.labels, flat)
    assert loaded.spacing == pytest.approx((0.5, 0.25)) and loaded.sidecar is None

    # ImageJ holds 8/16-bit data only: ids > 65535 go to a 32-bit TIFF that still has the spacing.
    many = make_labels()
    many[5, 30, 40] = 70_000
    path = save_segmentation(tmp_path / "many.tif", many, spacing=SPACING, origin=ORIGIN, sidecar={})
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dtype == np.uint32
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.25)
    loaded = load_segmentation(path)
    np.testing.assert_array_equal(loaded.labels, many)
    assert loaded.spacing == pytest.approx(SPACING) and loaded.origin == pytest.approx(ORIGIN)
    assert loaded.sidecar["label_image"]["ids"] == [3, 7, 12, 70_000]


def test_units_other_than_micrometres(tmp_path):
    import nibabel as nib

    labels = make_labels()
    for name in ("ct.nii.gz", "ct.tif", "ct.ome.tif", "ct.zarr"):
        path = save_segmentation(tmp_path / name, labels, spacing=(3.0, 0.7, 0.7), unit="millimeter")
        assert load_segmentation(path).unit == "mm"
    assert nib.load(str(tmp_path / "ct.nii.gz")).header.get_xyzt_units()[0] == "mm"
    with tifffile.TiffFile(tmp_path / "ct.tif") as tif:
        assert tif.imagej_metadata["unit"] == "mm"
    assert load_segmentation(save_segmentation(tmp_path / "default.tif", labels)).unit == "µm"
    with pytest.raises(SegmentationFileError, match="unknown length unit 'furlong'"):
        save_segmentation(tmp_path / "x.tif", labels, unit="furlong")


def test_saving_without_sidecar_removes_a_stale_one_and_zarr_is_replaced_whole(tmp_path):
    path = tmp_path / "cells.zarr"
    save_segmentation(path, make_labels(), spacing=SPACING, sidecar={"objects": []})
    assert (tmp_path / "cells.zarr.mobilesam.json").exists()
    smaller = make_labels((3, 16, 16))
    save_segmentation(path, smaller)
    assert not (tmp_path / "cells.zarr.mobilesam.json").exists()
    loaded = load_segmentation(path)
    np.testing.assert_array_equal(loaded.labels, smaller)
    assert loaded.spacing == (1.0, 1.0, 1.0) and loaded.sidecar is None
    assert sorted(os.listdir(tmp_path)) == ["cells.zarr"]


@pytest.mark.parametrize("name", ["cells.tif", "cells.nii.gz", "cells.ome.zarr"])
def test_failed_save_keeps_the_previous_files(tmp_path, monkeypatch, name):
    path = tmp_path / name
    first = make_labels()
    save_segmentation(path, first, spacing=SPACING, sidecar={"objects": ["first"]})
    before = sorted(os.listdir(tmp_path))
    kind = segmentation_io.segmentation_format(path)
    real_writer = segmentation_io._WRITERS[kind]

    def write_then_fail(target, *args):
        real_writer(target, *args)  # a complete file under the temp name...
        raise OSError(28, "No space left on device")  # ...then the disk fills up

    monkeypatch.setitem(segmentation_io._WRITERS, kind, write_then_fail)
    with pytest.raises(SegmentationFileError, match=rf"could not save .*{name}: No space left"):
        save_segmentation(path, first * 0, spacing=(1, 1, 1), sidecar={"objects": ["second"]})
    assert sorted(os.listdir(tmp_path)) == before
    loaded = load_segmentation(path)
    np.testing.assert_array_equal(loaded.labels, first)
    assert loaded.sidecar["objects"] == ["first"]

    # A sidecar that cannot be serialised fails before anything is written.
    monkeypatch.setitem(segmentation_io._WRITERS, kind, real_writer)
    with pytest.raises(SegmentationFileError, match="cannot be written as JSON"):
        save_segmentation(path, first * 0, sidecar={"objects": [object()]})
    assert sorted(os.listdir(tmp_path)) == before


def test_unwritable_targets_and_bad_arguments(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SegmentationFileError, match=r"a_file.*is a file, not a folder"):
        save_segmentation(tmp_path / "a_file" / "cells.tif", make_labels())
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(SegmentationFileError, match=r"folder\.tif is a folder"):
        save_segmentation(tmp_path / "folder.tif", make_labels())
    with pytest.raises(SegmentationFileError, match=r"cells\.png: unknown label file type"):
        save_segmentation(tmp_path / "cells.png", make_labels())
    with pytest.raises(SegmentationFileError, match="negative"):
        save_segmentation(tmp_path / "cells.tif", make_labels() - 1)
    with pytest.raises(SegmentationFileError, match="integers"):
        save_segmentation(tmp_path / "cells.tif", make_labels().astype(np.float32))
    with pytest.raises(SegmentationFileError, match="one value per axis"):
        save_segmentation(tmp_path / "cells.tif", make_labels(), spacing=(1.0, 1.0))
    with pytest.raises(SegmentationFileError, match="positive"):
        save_segmentation(tmp_path / "cells.tif", make_labels(), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(SegmentationFileError, match=r"a_file.*is a file, not a folder"):
        save_segmentation(tmp_path / "a_file" / "cells.ome.zarr", make_labels())
    assert sorted(os.listdir(tmp_path)) == ["a_file", "folder.tif"]


@pytest.mark.parametrize("name", ["cells.tif", "cells.ome.tif", "cells.nii", "cells.nii.gz"])
def test_truncated_or_damaged_files_name_the_file_and_problem(tmp_path, name):
    path = save_segmentation(tmp_path / name, make_labels(), spacing=SPACING)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SegmentationFileError, match=rf"could not read .*{name}"):
        load_segmentation(path)
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SegmentationFileError, match=rf"could not read .*{name}"):
        load_segmentation(path)
    with pytest.raises(SegmentationFileError, match=r"missing\.tif does not exist"):
        load_segmentation(tmp_path / "missing.tif")


def test_zarr_folder_without_ome_metadata(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(SegmentationFileError, match=r"plain\.zarr.*no OME-Zarr 'multiscales'"):
        load_segmentation(tmp_path / "plain.zarr")


def test_sidecar_that_does_not_match_its_labels(tmp_path):
    path = save_segmentation(tmp_path / "cells.tif", make_labels(), spacing=SPACING, sidecar={"objects": []})
    side = tmp_path / "cells.tif.mobilesam.json"
    document = json.loads(side.read_text())

    edited = make_labels()
    edited[edited == 7] = 0  # someone deleted object 7 in another program
    tifffile.imwrite(path, edited.astype(np.uint8), imagej=True)
    with pytest.raises(
        SegmentationFileError,
        match=r"cells\.tif\.mobilesam\.json does not match.*missing from the labels \[7\]",
    ):
        load_segmentation(path)

    tifffile.imwrite(path, make_labels((6, 32, 40)).astype(np.uint8), imagej=True)
    with pytest.raises(SegmentationFileError, match=r"shape \(6, 32, 48\).*shape \(6, 32, 40\)"):
        load_segmentation(path)

    document["label_image"]["ids"] = [3]
    side.write_text(json.dumps(document))
    save_path = save_segmentation(tmp_path / "other.tif", make_labels())
    (tmp_path / "other.tif.mobilesam.json").write_text(json.dumps(document))
    with pytest.raises(SegmentationFileError, match=r"ids not in the sidecar \[7, 12\]"):
        load_segmentation(save_path)

    side.write_text("{not json")
    with pytest.raises(SegmentationFileError, match=r"could not read sidecar .*cells\.tif\.mobilesam\.json"):
        load_segmentation(path)
    side.write_text(json.dumps({"objects": []}))
    with pytest.raises(SegmentationFileError, match="not a MobileSAM segmentation sidecar"):
        load_segmentation(path)


# ------------------------------------------------------------------------------- reading images


def test_read_image_keeps_tiff_axes_and_geometry(tmp_path):
    from mobilesam.volume.io import read_image

    stack = np.arange(2 * 4 * 16 * 24, dtype=np.uint16).reshape(4, 2, 16, 24)  # Z, C, Y, X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.3, 1 / 0.3),
        metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um", "xorigin": 10.0},
    )
    data, geometry = read_image(path)
    assert geometry.axes == "ZCYX" and geometry.unit == "µm"
    assert geometry.spacing == pytest.approx((1.5, 1.0, 0.3, 0.3))
    assert geometry.origin == pytest.approx((0.0, 0.0, 0.0, -3.0))
    np.testing.assert_array_equal(np.asarray(data), stack)

    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        ome, stack[:, 0], ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeZ": 0.9}
    )
    data, geometry = read_image(ome)
    assert geometry.axes == "ZYX" and geometry.spacing == pytest.approx((0.9, 1.0, 0.2))

    # A truncated OME-TIFF whose metadata lies past the cut: tifffile only logs that; we raise.
    whole = ome.read_bytes()
    ome.write_bytes(whole[: len(whole) - 200])
    with pytest.raises(ValueError, match=r"could not read image .*cells\.ome\.tif: the file is truncated"):
        read_image(ome)


def write_non_image_dicom(path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_is_ordered_by_position_with_spacing(tmp_path):
    from mobilesam.testing import write_dicom_series
    from mobilesam.volume.dicom import read_dicom_series
    from mobilesam.volume.io import read_image, read_volume

    volume = np.random.default_rng(0).integers(-1000, 1000, (6, 16, 20)).astype(np.int16)
    files = write_dicom_series(
        tmp_path / "ct", volume, (2.5, 0.7, 0.6), origin=(-40.0, 12.0, -8.0), file_order=[3, 0, 5, 1, 4, 2]
    )
    write_non_image_dicom(tmp_path / "ct" / "DICOMDIR")  # skipped in a folder
    series = read_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(series.data, volume)  # in HU: RescaleIntercept applied
    assert series.spacing == pytest.approx((2.5, 0.7, 0.6))
    assert series.origin == pytest.approx((-40.0, 12.0, -8.0))
    assert [p.name for p in series.files] == [files[i].name for i in (1, 3, 5, 0, 4, 2)]

    data, geometry = read_image(list(reversed(files)))  # a selection of files, in any order
    np.testing.assert_array_equal(data, volume)
    assert geometry.axes == "ZYX" and geometry.spacing == pytest.approx((2.5, 0.7, 0.6))
    data, spacing = read_volume(tmp_path / "ct")  # what the CLI's `mobilesam volume` reads
    np.testing.assert_array_equal(data, volume)
    assert spacing == pytest.approx((2.5, 0.7, 0.6))
    one, geometry = read_image(files[0])  # one file: that slice
    np.testing.assert_array_equal(one, volume[3])
    assert geometry.spacing == pytest.approx((0.7, 0.6))


def test_bad_dicom_series(tmp_path):
    from mobilesam.testing import write_dicom_series
    from mobilesam.volume.dicom import DicomSeriesError, read_dicom_series

    volume = np.zeros((5, 8, 8), np.int16)
    files = write_dicom_series(tmp_path / "gap", volume, (2.0, 0.5, 0.5))
    files[2].unlink()
    with pytest.raises(
        DicomSeriesError,
        match=r"series in .*gap has 1 missing slice\(s\): IM0001\.dcm at 2 and IM0003\.dcm at 6",
    ):
        read_dicom_series(tmp_path / "gap")

    write_dicom_series(tmp_path / "mixed", volume, (2.0, 0.5, 0.5))
    write_dicom_series(tmp_path / "mixed", volume[:2], (1.0, 0.5, 0.5), first_file=10)
    with pytest.raises(DicomSeriesError, match=r"mixed mixes 2 DICOM series .*5 files.*2 files"):
        read_dicom_series(tmp_path / "mixed")

    files = write_dicom_series(tmp_path / "cut", volume, (2.0, 0.5, 0.5))
    whole = files[3].read_bytes()
    files[3].write_bytes(whole[: len(whole) - 40])
    with pytest.raises(DicomSeriesError, match=r"IM0003\.dcm"):
        read_dicom_series(tmp_path / "cut")
    files[3].write_bytes(b"not a dicom file" * 20)
    with pytest.raises(DicomSeriesError, match=r"could not read DICOM file .*IM0003\.dcm"):
        read_dicom_series(tmp_path / "cut")

    write_non_image_dicom(tmp_path / "report.dcm")
    with pytest.raises(DicomSeriesError, match=r"report\.dcm has no PixelData"):
        read_dicom_series([tmp_path / "report.dcm", files[0]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match=r"empty holds no DICOM files"):
        read_dicom_series(tmp_path / "empty")
