"""Stand-ins for tests and benchmarks of tiling: a predictor and a mask generator whose masks
follow the objects of an image (connected non-background regions), with no model at all.

They see only the image they are given (a tile's outer box), exactly as the real model does, so an
object cut by a tile's edge gives a cut mask there: what tiling must put back together. They live
in the package (not in tests/) so that dask workers in other processes can unpickle them.
"""

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..predictor import EmbeddingState


def foreground(rgb: np.ndarray, background: int = 0) -> np.ndarray:
    """(H, W) bool: pixels whose colour differs from the background grey level."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0] != background) | (rgb[..., 1] != background) | (rgb[..., 2] != background)


class ComponentPredictor:
    """`SamPredictor` stand-in: a point gives the connected object under it, a box the largest
    object part inside the box. Its "embedding" is the tile image itself (so it caches like one)."""

    def __init__(self, background: int = 0) -> None:
        self.background = background
        self.set_image_calls = 0
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.image = np.asarray(image)
        self.set_image_calls += 1

    def get_embedding_state(self) -> EmbeddingState:
        return EmbeddingState(
            torch.from_numpy(self.image.astype(np.float32))[None], self.image.shape[:2], self.image.shape[:2]
        )

    def set_embedding(self, state: EmbeddingState) -> None:
        self.image = state.features[0].numpy().astype(np.uint8)

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output: bool = True, **_):
        components, _ = ndimage.label(foreground(self.image, self.background))
        mask = np.zeros(components.shape, bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            ids, counts = np.unique(components[inside & (components > 0)], return_counts=True)
            if len(ids):
                mask = (components == ids[np.argmax(counts)]) & inside
        if point_coords is not None:
            for (x, y), label in zip(np.asarray(point_coords), np.asarray(point_labels)):
                hit = components[int(y), int(x)]
                if hit and label == 1 and box is None:
                    mask |= components == hit
                elif hit and label == 0:
                    mask &= components != hit
        n = 3 if multimask_output else 1
        score = 0.9 if mask.any() else 0.0
        return np.repeat(mask[None], n, 0), np.full(n, score, np.float32), np.zeros((n, 256, 256), np.float32)


class ComponentGenerator:
    """`SamAutomaticMaskGenerator` stand-in: one record per connected object of the image."""

    def __init__(self, background: int = 0, predictor: ComponentPredictor | None = None) -> None:
        self.background = background
        self.predictor = predictor  # given: the image goes through its set_image, as SAM's generator does
        self.crop_n_layers = 0

    def generate(self, image: np.ndarray, progress=None, cancel=None) -> list[dict[str, Any]]:
        if self.predictor is not None:
            self.predictor.set_image(image)
            image = self.predictor.image
        components, _ = ndimage.label(foreground(image, self.background))
        records = []
        for i, found in enumerate(ndimage.find_objects(components), start=1):
            mask = components == i
            records.append(
                {
                    "segmentation": mask,
                    "area": int(np.count_nonzero(mask[found])),
                    "bbox": [
                        found[1].start,
                        found[0].start,
                        found[1].stop - found[1].start,
                        found[0].stop - found[0].start,
                    ],
                    "predicted_iou": 0.9,
                    "stability_score": 0.95,
                    "point_coords": [[0.0, 0.0]],
                    "crop_box": [0, 0, image.shape[1], image.shape[0]],
                }
            )
        return records


def component_generator(background: int = 0) -> ComponentGenerator:
    """A picklable generator factory for `segment_everything_tiled`."""
    return ComponentGenerator(background)


class DyingOnceGenerator(ComponentGenerator):
    """A `ComponentGenerator` whose process dies (as a lost dask worker does) on its `die_at`-th
    tile, once per `marker` file: the first process to create the marker exits on the spot."""

    def __init__(self, marker: str, die_at: int = 2) -> None:
        super().__init__()
        self.marker, self.die_at, self.calls = marker, die_at, 0

    def generate(self, image: np.ndarray, progress=None, cancel=None) -> list[dict[str, Any]]:
        import os

        self.calls += 1
        if self.calls == self.die_at:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().generate(image, progress, cancel)


def dying_once_generator(marker: str, die_at: int = 2) -> DyingOnceGenerator:
    """A picklable generator factory whose first worker dies mid-run (see `DyingOnceGenerator`)."""
    return DyingOnceGenerator(marker, die_at)
