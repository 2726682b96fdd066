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

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
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
