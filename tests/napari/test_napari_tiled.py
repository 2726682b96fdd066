"""Large images in a real viewer: 2-D images above 2048 px are prompted through the core's tiling
(tiles encoded where the user clicks, the mask pasted for its bounding region only), shown and
overridable in the dock; multiscale layers are tiled on level 0, read lazily.

The stand-in predictor (`mobilesam.tiling.testing.ComponentPredictor`) gives the connected object
under a click in the tile it sees, so an object on a tile corner comes out whole only if the
plugin lets the core follow it into the neighbouring tiles."""

import numpy as np
import pytest
from standins import click, disk, press, wait_idle

from mobilesam.tiling.testing import ComponentPredictor
from napari_mobilesam._segmenter import ImageSegmenter
from napari_mobilesam._tiled import TiledSegmenter

CORNERS = ((768, 768), (768, 1536), (1536, 1536), (2304, 768))  # tile corners of the 768 px grid
RADIUS = 150


def objects_on_corners(shape):
    image = np.zeros(shape, np.uint8)
    for centre in CORNERS:
        image[disk(shape, centre, RADIUS)] = 200
    return image


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def ready(viewer, qtbot, name):
    qtbot.waitUntil(lambda: viewer.layers.selection.active is viewer.layers[f"{name} prompts"], timeout=5000)
    viewer.reset_view()


def test_large_image_is_tiled_where_clicked_and_the_override_goes_back(dock, qtbot):
    viewer, widget = dock
    predictor = ComponentPredictor()
    widget.use_predictor(predictor)
    image = objects_on_corners((3000, 3000))
    viewer.add_image(image, name="big")
    ready(viewer, qtbot, "big")
    assert widget.tiling.value.startswith("Tiled: 768 px tiles + 128 halo (image 3000 x 3000")

    click(viewer, (760.0, 740.0))  # just inside tile 0 at the corner of four tiles
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    segmenter = widget._segmenter
    assert isinstance(segmenter, TiledSegmenter)
    truth = disk(image.shape, CORNERS[0], RADIUS)
    current = viewer.layers["big current object"].data
    assert dice(current > 0, truth) >= 0.98
    assert (current > 0).sum() <= truth.sum() * 1.02  # only this object, not its neighbours
    encoded = segmenter.embeddings.encoder_calls
    assert encoded == 4  # the four tiles the object touches, not the 16 of the image
    assert predictor.image.shape == (1024, 1024, 3)  # a full-resolution tile, not the image shrunk

    click(viewer, (700.0, 700.0))  # a second positive point in the same tile
    wait_idle(qtbot, widget)
    assert len(viewer.layers["big prompts"].data) == 2
    assert segmenter.embeddings.encoder_calls == encoded  # nothing new encoded
    assert dice(viewer.layers["big current object"].data > 0, truth) >= 0.98

    widget.tile_large.native.click()  # the override: back to one whole-image embedding
    assert widget.tile_large.value is False
    assert widget.tiling.value.startswith("off") and not widget.tile_size.enabled
    wait_idle(qtbot, widget)
    assert isinstance(widget._segmenter, ImageSegmenter)
    assert predictor.image.shape[:2] == (3000, 3000)  # the untiled path encoded the whole image
    assert dice(viewer.layers["big current object"].data > 0, truth) >= 0.98


class ReadCounter:
    """An array that counts the pixels read from it (dask reads it chunk by chunk)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.pixels_read = 0

    def __getitem__(self, index):
        out = self.array[index]
        self.pixels_read += out.size
        return out


def test_multiscale_layer_is_tiled_on_level_0_read_lazily(dock, qtbot):
    da = pytest.importorskip("dask.array")
    viewer, widget = dock
    widget.use_predictor(ComponentPredictor())
    full = np.zeros((2600, 2600), np.uint8)
    truth = disk(full.shape, (1100, 1200), 200)  # inside one tile's interior
    full[truth] = 200
    counter = ReadCounter(full)
    level0 = da.from_array(counter, chunks=256)
    layer = viewer.add_image([level0, full[::2, ::2], full[::4, ::4]], multiscale=True, name="pyramid")
    ready(viewer, qtbot, "pyramid")
    assert widget.tiling.value.startswith("Tiled: 768 px tiles + 128 halo (image 2600 x 2600")
    counter.pixels_read = 0

    click(viewer, (1100.0, 1200.0))
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    segmenter = widget._segmenter
    assert isinstance(segmenter, TiledSegmenter)
    assert segmenter.embeddings.image.array is layer.data[0]  # level 0 itself, not a copy
    assert segmenter.embeddings.encoder_calls == 1
    current = viewer.layers["pyramid current object"].data
    assert current.shape == full.shape
    assert dice(current > 0, truth) >= 0.98
    assert counter.pixels_read < full.size / 2  # one tile's region (and napari's view), never the whole image

    widget.embed_button.native.click()  # Compute embeddings: every tile, in the worker
    wait_idle(qtbot, widget)
    assert widget._segmenter is segmenter
    # Every tile is ready; tiles with the same pixels share one content-addressed embedding.
    assert all(segmenter.embeddings.is_cached(i) for i in range(16)) and len(segmenter.embeddings.grid) == 16
    assert segmenter.embeddings.encoder_calls == distinct_tiles(segmenter.embeddings)
    assert "16 tile embeddings ready" in widget.status.value


def distinct_tiles(embeddings) -> int:
    """How many tiles of the grid have different pixels (the embedding store is content-addressed)."""
    return len({embeddings.tile_image(i).tobytes() for i in range(len(embeddings.grid))})


def test_segment_everything_on_a_large_image_reuses_the_clicked_tiles(dock, qtbot, monkeypatch):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from standins import press

    import napari_mobilesam._tiled as tiled
    from mobilesam.tiling.testing import ComponentGenerator

    viewer, widget = dock
    widget.use_predictor(ComponentPredictor())
    generators = []

    def stand_in_generator(predictor, settings):  # objects = the connected regions of the tile it is given
        generators.append(ComponentGenerator(predictor=ComponentPredictor()))
        return generators[-1]

    monkeypatch.setattr(tiled, "mask_generator", stand_in_generator)
    image = objects_on_corners((3000, 3000))
    viewer.add_image(image, name="big")
    ready(viewer, qtbot, "big")
    click(viewer, (760.0, 740.0))  # the object on the corner of tiles 0, 1, 4, 5
    wait_idle(qtbot, widget)
    segmenter = widget._segmenter
    assert segmenter.embeddings.encoder_calls == 4

    widget.everything_section.header.native.click()  # folded by default
    QTest.mouseClick(widget.everything_button.native, Qt.MouseButton.LeftButton)
    assert "segmenting everything (16 tiles)" in widget.status.value  # in the worker, with Cancel
    assert widget.cancel_button.enabled
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    assert widget._segmenter is segmenter  # the tiled segmenter (and its tiles) is kept
    # Each distinct tile encoded once (tiles with the same pixels share an embedding): the 4 clicked
    # tiles were not encoded again.
    encoded = segmenter.embeddings.encoder_calls
    assert encoded == distinct_tiles(segmenter.embeddings) > 4
    assert len(generators) == 1 and generators[0].predictor.set_image_calls == 0  # it only decodes
    labels = viewer.layers["big everything"].data
    assert labels.shape == image.shape
    assert len(np.unique(labels)) - 1 == len(CORNERS)  # one label per object: none split at a tile border
    for centre in CORNERS:
        truth = disk(image.shape, centre, RADIUS)
        values, counts = np.unique(labels[truth], return_counts=True)
        assert dice(labels == values[np.argmax(counts)], truth) >= 0.98
    assert "4 objects found" in widget.status.value

    ready(viewer, qtbot, "big")  # the prompts layer takes the clicks again
    press(viewer, "Shift-C")  # clear the first object's prompt
    click(viewer, (2300.0, 760.0))  # the object on the corner of tiles 8, 9, 12, 13: encoded by everything
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    assert len(viewer.layers["big prompts"].data) == 1
    assert segmenter.embeddings.encoder_calls == encoded  # nothing encoded for this click
    assert dice(viewer.layers["big current object"].data > 0, disk(image.shape, CORNERS[3], RADIUS)) >= 0.98


def _rss() -> int:
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def test_commit_on_a_huge_image_writes_the_object_box(dock, qtbot):
    """6000 x 6000: a click on a tile-corner object and `C` commit exactly that object (the commit
    compares and writes only the object's bounding box). Opening makes no full-size layer (the
    click makes 'current object', the commit 'objects'). RSS figures are printed: the plugin's
    layers stay numpy (napari's display reads a whole plane of a Labels layer, so a chunked array
    would not save memory, see the report)."""
    viewer, widget = dock
    widget.use_predictor(ComponentPredictor())
    shape = (6000, 6000)
    image = np.zeros(shape, np.uint8)
    window = (slice(768 - RADIUS, 768 + RADIUS + 1),) * 2  # the clicked object's bounding box
    local = disk((2 * RADIUS + 1,) * 2, (RADIUS, RADIUS), RADIUS)
    for y, x in CORNERS:
        image[y - RADIUS : y + RADIUS + 1, x - RADIUS : x + RADIUS + 1][local] = 200
    before = _rss()
    viewer.add_image(image, name="huge")
    ready(viewer, qtbot, "huge")
    opened = _rss()
    # Nothing full-size before it is needed (main before lazy result layers: open +327 MiB).
    assert "huge current object" not in viewer.layers and "huge objects" not in viewer.layers
    click(viewer, (760.0, 740.0))
    wait_idle(qtbot, widget)
    assert not [m for m in widget.messages if m[0] == "error"], widget.messages
    assert "huge objects" not in viewer.layers
    clicked = _rss()
    press(viewer, "c")
    qtbot.waitUntil(lambda: any("committed object 1" in m[1] for m in widget.messages), timeout=5000)
    committed = _rss()
    print(
        f"\nRSS growth (MiB): open {(opened - before) >> 20}, click {(clicked - opened) >> 20}, "
        f"commit {(committed - clicked) >> 20}; the uint8 current-object and int32 objects layers: "
        f"{(image.size + 4 * image.size) >> 20}"
    )
    objects = viewer.layers["huge objects"].data
    assert dice(objects[window] == 1, local) >= 0.98
    assert np.count_nonzero(objects) == np.count_nonzero(objects[window])  # nothing outside the box
    assert not viewer.layers["huge current object"].data.any()  # cleared after the commit
