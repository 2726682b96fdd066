"""Stand-ins and helpers for the napari plugin tests."""

import threading

import numpy as np
import torch

from mobilesam.predictor import EmbeddingState


class DiskPredictor:
    """Quacks like `mobilesam.SamPredictor`. Candidates are disks of radius 2, 5 and 8 pixels around
    the first positive point (predicted IoU 0.5, 0.9, 0.7, so 'best' is the radius-5 disk), minus
    3-pixel disks around negative points; with a box, all three are the filled box.

    `gate`: when given, `set_image` waits for it (to hold the worker thread in "embedding").
    """

    radii = (2, 5, 8)
    scores = np.array([0.5, 0.9, 0.7], dtype=np.float32)

    def __init__(self, gate: threading.Event = None):
        self.gate = gate
        self.encode_threads = []
        self.encoded_images = []
        self.original_size = None
        self.is_image_set = False
        self.model = None

    def set_image(self, image, image_format="RGB"):
        self.encode_threads.append(threading.current_thread())
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the gate"
        self.encoded_images.append(np.array(image))
        self.original_size = image.shape[:2]
        self.is_image_set = True

    def get_embedding_state(self):
        return EmbeddingState(torch.zeros(1, 256, 64, 64), tuple(self.original_size), (64, 64))

    def set_embedding(self, state):
        self.original_size = tuple(state.original_size)
        self.is_image_set = True

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        h, w = self.original_size
        yy, xx = np.mgrid[:h, :w]
        if box is not None:
            x0, y0, x1, y1 = box
            masks = np.repeat(((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1))[None], 3, axis=0)
        else:
            coords, labels = np.asarray(point_coords), np.asarray(point_labels)
            x, y = coords[labels == 1][0]
            masks = np.stack([(xx - x) ** 2 + (yy - y) ** 2 <= r * r for r in self.radii])
            for nx, ny in coords[labels == 0]:
                masks &= ~((xx - nx) ** 2 + (yy - ny) ** 2 <= 9)
        return masks, self.scores.copy(), np.zeros((3, 256, 256), np.float32)


def disk(shape, centre_yx, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre_yx[0]) ** 2 + (xx - centre_yx[1]) ** 2 <= radius * radius


def wait_idle(qtbot, widget, timeout=60_000):
    """Wait until the widget's background task (if any) has finished."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


class ContentPredictor(DiskPredictor):
    """A `DiskPredictor` whose masks also depend on the encoded image: each disk is cut to the pixels
    brighter than 127 in the image the current embedding was made from (the embedding carries the
    image). A mask decoded from another image's embedding therefore differs, or has another shape."""

    def set_image(self, image, image_format="RGB"):
        super().set_image(image, image_format)
        self._bright = np.asarray(image)[..., 0] > 127

    def get_embedding_state(self):
        h, w = self.original_size
        return EmbeddingState(torch.from_numpy(self._bright.astype(np.float32))[None, None], (h, w), (h, w))

    def set_embedding(self, state):
        super().set_embedding(state)
        self._bright = state.features[0, 0].numpy() > 0.5

    def predict(self, *args, **kwargs):
        masks, scores, logits = super().predict(*args, **kwargs)
        return masks & self._bright[None], scores, logits


def click(viewer, world_yx, modifiers=None):
    """A real left click on the canvas at world (y, x) (the displayed slice for volumes)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas
    x, y = canvas.view.scene.transform.map([world_yx[-1], world_yx[-2], 0, 1])[:2]
    QTest.mouseClick(
        canvas.native,
        Qt.MouseButton.LeftButton,
        modifiers or Qt.KeyboardModifier.NoModifier,
        QPoint(int(round(x)), int(round(y))),
    )


def drag(viewer, start_yx, end_yx):
    """A real left-button drag on the canvas between world (y, x) points (draws a box in box mode)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas
    native = canvas.native

    def to_canvas(world):
        x, y = canvas.view.scene.transform.map([world[-1], world[-2], 0, 1])[:2]
        return QPoint(int(round(x)), int(round(y)))

    start, end = to_canvas(start_yx), to_canvas(end_yx)
    QTest.mousePress(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for step in range(1, 6):
        point = start + (end - start) * (step / 5)
        QTest.mouseMove(native, point)
    QTest.mouseRelease(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def press(viewer, key):
    """Send a key press to the canvas, as when the user types it."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QKeyEvent
    from qtpy.QtWidgets import QApplication

    *mods, name = key.split("-")
    modifiers = Qt.KeyboardModifier.NoModifier
    if "Shift" in mods:
        modifiers |= Qt.KeyboardModifier.ShiftModifier
    if "Control" in mods:
        modifiers |= Qt.KeyboardModifier.ControlModifier
    qt_key = getattr(Qt.Key, f"Key_{name.upper()}")
    canvas = viewer.window._qt_viewer.canvas.native
    text = name.upper() if mods else name.lower()
    for kind in (QKeyEvent.Type.KeyPress, QKeyEvent.Type.KeyRelease):
        QApplication.sendEvent(canvas, QKeyEvent(kind, qt_key, modifiers, text))


class MaskInputPredictor(DiskPredictor):
    """A `DiskPredictor` that also reads `mask_input`: with it, the answer is the given mask
    (read back from the (1, 256, 256) logits in the padded 1024 frame) grown by 2 pixels and cut
    to the box, plus 4-pixel disks around positive points, minus 3-pixel disks around negative
    ones; so the box, the mask input and each point all show in the mask."""

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        if mask_input is None:
            return super().predict(point_coords, point_labels, box, None, multimask_output, return_logits)
        from scipy import ndimage

        h, w = self.original_size
        scale = mask_input.shape[-1] / max(h, w)
        rows = np.minimum(((np.arange(h) + 0.5) * scale).astype(int), mask_input.shape[-1] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * scale).astype(int), mask_input.shape[-1] - 1)
        given = np.asarray(mask_input)[0][np.ix_(rows, cols)] > 0
        yy, xx = np.mgrid[:h, :w]
        x0, y0, x1, y1 = box
        mask = ndimage.binary_dilation(given, iterations=2) & (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        if point_coords is not None:
            for (x, y), label in zip(point_coords, point_labels):
                near = (xx - x) ** 2 + (yy - y) ** 2 <= (16 if label == 1 else 9)
                mask = mask | near if label == 1 else mask & ~near
        count = 3 if multimask_output else 1
        return np.repeat(mask[None], count, axis=0), self.scores[:count].copy(), np.zeros((count, 256, 256))


def bright_image(shape, seed):
    """uint8 image: random bright rectangles (>127) on a dark background (<100)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 100, shape).astype(np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, shape[0] - 10), rng.integers(0, shape[1] - 10)
        image[y : y + rng.integers(5, 20), x : x + rng.integers(5, 20)] = 200
    return image
