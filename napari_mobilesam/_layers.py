"""The layers the plugin works with: the user's image, prompt layers, and result Labels.

Prompts are read through world coordinates (prompt layer data -> world -> image data), so they
land on the right pixels whatever `scale`/`translate` each layer has. Result Labels get the image
layer's transform, so they overlay the image exactly.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

POSITIVE, NEGATIVE = "positive", "negative"
PROMPT_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}


class LayerError(ValueError):
    """An image layer the plugin cannot segment (wrong type or shape); the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """How the plugin reads an Image layer.

    spatial_shape: (Y, X) for 2D, (Z, Y, X) for volumes (no channel axis).
    channel_axis: axis of the layer's data holding channels (RGB(A) layers: -1), or None.
    """

    spatial_shape: tuple[int, ...]
    channel_axis: Optional[int]

    @property
    def is_volume(self) -> bool:
        return len(self.spatial_shape) == 3


def describe_image(layer) -> ImageInfo:
    """Check that `layer` is an image the plugin can segment and say how to read it."""
    if not isinstance(layer, Image):
        kind = f"a {layer.__class__.__name__} layer" if layer is not None else "nothing"
        raise LayerError(f"MobileSAM segments Image layers; the selected layer is {kind}")
    if layer.multiscale:
        raise LayerError(f"layer {layer.name!r} is multiscale; open a single resolution level to segment it")
    shape = tuple(int(s) for s in layer.data.shape)
    channel_axis = -1 if layer.rgb else None
    spatial = shape[:-1] if layer.rgb else shape
    if len(spatial) not in (2, 3):
        raise LayerError(
            f"layer {layer.name!r} has shape {shape}; MobileSAM needs a 2D image (Y, X), an RGB image "
            "(Y, X, 3) or a volume (Z, Y, X). Split channels/time points into separate layers first."
        )
    return ImageInfo(spatial, channel_axis)


def _layer_transform(image_layer) -> dict:
    """Keyword arguments that give a new layer the same data->world transform as `image_layer`."""
    return {"scale": image_layer.scale, "translate": image_layer.translate,
            "rotate": image_layer.rotate, "shear": image_layer.shear,
            "affine": image_layer.affine.affine_matrix}


@dataclass
class PromptLayers:
    points: Points
    boxes: Shapes
    current: Labels
    objects: Labels

    def all(self) -> list:
        return [self.points, self.boxes, self.current, self.objects]


def _find(viewer, name: str, kind: type, ndim: int):
    """The existing layer called `name` if it has the right type and dimensionality."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, kind) and layer.ndim == ndim:
            return layer
    return None


def ensure_prompt_layers(viewer, image_layer, info: ImageInfo) -> PromptLayers:
    """Find or create the four layers that belong to `image_layer` (reused so nothing is lost)."""
    ndim = len(info.spatial_shape)
    base = image_layer.name
    transform = _layer_transform(image_layer)

    objects = _find(viewer, f"{base} objects", Labels, ndim)
    if objects is None or objects.data.shape != info.spatial_shape:
        objects = viewer.add_labels(np.zeros(info.spatial_shape, np.int32), name=f"{base} objects",
                                    opacity=0.5, **transform)
    current = _find(viewer, f"{base} current object", Labels, ndim)
    if current is None or current.data.shape != info.spatial_shape:
        current = viewer.add_labels(np.zeros(info.spatial_shape, np.uint8), name=f"{base} current object",
                                    opacity=0.6, **transform)
        current.colormap = _single_colour_colormap()
    boxes = _find(viewer, f"{base} boxes", Shapes, ndim)
    if boxes is None:
        boxes = viewer.add_shapes(ndim=ndim, name=f"{base} boxes", edge_color="yellow", face_color="transparent",
                                  edge_width=2, **transform)
        boxes.mode = "add_rectangle"
    points = _find(viewer, f"{base} prompts", Points, ndim)
    if points is None:
        features = pd.DataFrame({"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
        points = viewer.add_points(ndim=ndim, name=f"{base} prompts", features=features, face_color="label",
                                   face_color_cycle=PROMPT_COLORS, border_color="white", size=10, **transform)
        points.feature_defaults = {"label": POSITIVE}
        points.mode = "add"
    return PromptLayers(points, boxes, current, objects)


def _single_colour_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "cyan"})


def point_label_mode(points: Points) -> str:
    """The label (positive/negative) that newly clicked points get."""
    return str(points.feature_defaults["label"].iloc[0])


def set_point_label_mode(points: Points, label: str) -> None:
    points.feature_defaults = {"label": label}


def to_image_coords(layer, coords: np.ndarray, image_layer) -> np.ndarray:
    """(N, D) data coordinates of `layer` -> (N, D) data coordinates of `image_layer`, via world."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    return np.array([image_layer.world_to_data(layer.data_to_world(c)) for c in coords],
                    dtype=float).reshape(-1, image_layer.ndim)


def read_points(points: Points, image_layer) -> tuple[np.ndarray, np.ndarray]:
    """All prompt points in image data coordinates (N, D) (z, y, x order) and labels (N,) 1/0."""
    coords = to_image_coords(points, points.data, image_layer) if len(points.data) else np.zeros((0, image_layer.ndim))
    labels = np.array([1 if str(v) == POSITIVE else 0 for v in points.features["label"]], dtype=np.int64)
    return coords, labels


def read_boxes(shapes: Shapes, image_layer) -> list[np.ndarray]:
    """Each shape's corners as (4, D) image data coordinates (any shape type counts as its bounding box)."""
    return [to_image_coords(shapes, vertices, image_layer) for vertices in shapes.data]


def current_slice(viewer, image_layer) -> int:
    """Index along the image's first axis of the slice shown in the viewer."""
    world = np.asarray(viewer.dims.point)[-image_layer.ndim:]
    return int(np.round(image_layer.world_to_data(world)[0]))
