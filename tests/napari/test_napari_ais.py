"""'Segment automatically' in a real viewer: a random-weight vit_t_lm (model + AIS decoder in
micro-sam's released layout, in the cache folder where the plugin looks for them) picked in the
real Model combo, the button clicked with the mouse; the Labels layer must equal the core's AIS
labels for the same image and weights."""

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from standins import wait_idle

import mobilesam
from mobilesam.image import to_rgb_uint8
from mobilesam.instance_segmentation import InstanceSegmenter
from mobilesam.modeling.instance_decoder import InstanceSegmentationDecoder
from mobilesam.weights import cached_path


@pytest.fixture
def decoder_file():
    """vit_t_lm_decoder.pt (the bare decoder state, as micro-sam's zoo ships it) with seeded random
    weights, in the test's private cache folder."""
    torch.manual_seed(1)
    decoder = InstanceSegmentationDecoder()
    # Contrast in the maps (as tests/test_ais.py), so the watershed finds several objects.
    decoder.out_conv.weight.data *= 10
    decoder.out_conv.bias.data = torch.tensor([1.0, -0.5, -0.5])
    torch.save(decoder.state_dict(), cached_path("vit_t_lm_decoder"))
    return cached_path("vit_t_lm_decoder")


@pytest.fixture
def vit_t_lm_weights(decoder_file):
    """vit_t_lm.pt (a plain SAM state dict, as micro-sam's zoo ships it) with seeded random weights
    next to the decoder in the cache folder."""
    torch.manual_seed(0)
    torch.save(mobilesam.build_sam("vit_t_lm").state_dict(), cached_path("vit_t_lm"))
    return cached_path("vit_t_lm"), decoder_file


def _image(h=96, w=128):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:h, :w]
    img = rng.integers(0, 60, (h, w))
    for cy, cx, r in ((30, 35, 18), (60, 90, 22), (25, 100, 12)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
    return img.astype(np.uint8)


def _pick_model(widget, qtbot, name):
    combo = widget.model_type.native  # the QComboBox the user clicks
    combo.setCurrentIndex(combo.findText(name))
    qtbot.waitUntil(lambda: widget.model_type.value == name, timeout=2000)


def _click(widget, qtbot):
    widget.automatic_section.set_collapsed(False)
    button = widget.automatic_button.native
    qtbot.waitUntil(button.isVisible, timeout=2000)
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def test_segment_automatically_equals_core_ais_and_keeps_layers_without_decoder(
    make_napari_viewer, qtbot, vit_t_lm_weights, tmp_path, monkeypatch
):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    image = viewer.add_image(_image(), name="cells", scale=(2.0, 0.5), translate=(10.0, -5.0))

    _pick_model(widget, qtbot, "vit_t")
    assert not widget.automatic_button.enabled
    assert "vit_t_lm or vit_t_em_organelles" in widget.automatic_button.tooltip

    _pick_model(widget, qtbot, "vit_t_lm")
    assert widget.automatic_button.enabled
    _click(widget, qtbot)
    wait_idle(qtbot, widget, timeout=120_000)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages

    rgb = to_rgb_uint8(image.data)  # the core's reading of a grayscale image, as `mobilesam ais` does
    # at the plugin's default precision, "auto" (bf16 on CPUs that have it), as `mobilesam ais` runs
    segmenter = InstanceSegmenter.from_checkpoints("vit_t_lm", allow_download=False, precision="auto")
    expected = segmenter.segment(rgb)
    assert expected.max() > 1  # several objects: the comparison is not trivially all-background
    layer = viewer.layers["cells automatic"]
    np.testing.assert_array_equal(layer.data, expected)
    np.testing.assert_array_equal(layer.scale, image.scale)
    np.testing.assert_array_equal(layer.translate, image.translate)

    # The decoder file is missing: a clear status line, and every layer stays as it was; the image's
    # embedding was re-used (the decoder is looked for after it: no second encoder pass).
    predictor = widget._predictor
    encoded = []
    original_set_image = predictor.set_image
    predictor.set_image = lambda *a, **k: (encoded.append(1), original_set_image(*a, **k))[1]
    names = [lyr.name for lyr in viewer.layers]
    missing = tmp_path / "nowhere" / "vit_t_lm_decoder.pt"
    monkeypatch.setenv("MOBILESAM_DECODER_CHECKPOINT", str(missing))
    _click(widget, qtbot)
    wait_idle(qtbot, widget, timeout=60_000)
    assert "no vit_t_lm_decoder weights" in widget.status.value and str(missing) in widget.status.value
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(viewer.layers["cells automatic"].data, expected)
    assert encoded == []


def test_segment_automatically_labels_the_current_slice_of_a_volume(make_napari_viewer, qtbot, decoder_file):
    """A (Z, Y, X) volume: only the slice shown is labelled, as the core labels that slice (read
    with the volume-wide contrast). A 256-pixel model keeps it quick; the decoder follows its size."""
    from mobilesam.instance_segmentation import load_decoder
    from mobilesam.volume import VolumeEmbeddings

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    volume = np.stack([_image(), _image()[::-1], _image()[:, ::-1]]).astype(np.uint16) * 7
    layer = viewer.add_image(volume, name="vol")
    _pick_model(widget, qtbot, "vit_t_lm")
    torch.manual_seed(2)
    sam = mobilesam.build_sam("vit_t_lm", image_size=256).eval()
    widget.use_predictor(mobilesam.SamPredictor(sam))
    viewer.dims.set_point(0, 2)
    _click(widget, qtbot)
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages

    rgb = VolumeEmbeddings(volume, mobilesam.SamPredictor(sam)).slice_image(2)
    expected = InstanceSegmenter(sam, load_decoder(decoder_file, image_size=256)).segment(rgb)
    assert expected.max() > 1
    labels = viewer.layers["vol automatic"].data
    assert labels.shape == layer.data.shape
    np.testing.assert_array_equal(labels[2], expected)
    assert not labels[:2].any()  # the other slices are untouched
