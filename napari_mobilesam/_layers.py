"""The layers the plugin works with: the user's image, prompt layers, and result Labels.

Prompts are read through world coordinates (prompt layer data -> world -> image data), so they
land on the right pixels whatever `scale`/`translate` each layer has. Result Labels get the image
layer's transform, so they overlay the image exactly.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

POSITIVE, NEGATIVE = "positive", "negative"
PROMPT_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}


class LayerError(ValueError):
    """An image layer the plugin cannot segment (wrong type or shape); the message says why."""


CHANNEL_CHOICES = ("auto", "first axis is channels")


@dataclass(frozen=True)
class ImageInfo:
    """How the plugin reads an Image layer.

    spatial_shape: (Y, X) for 2D, (Z, Y, X) for volumes (no channel axis).
    channel_axis: axis of the layer's data holding channels (RGB(A) layers: -1), or None.
    spatial_axes: which of the layer's (napari) dimensions are spatial; prompt coordinates on the
        others (a channel slider) are ignored.
    """

    spatial_shape: tuple[int, ...]
    channel_axis: int | None
    spatial_axes: tuple[int, ...]

    @property
    def is_volume(self) -> bool:
        return len(self.spatial_shape) == 3


def describe_image(layer, channels: str = "auto") -> ImageInfo:
    """Check that `layer` is an image the plugin can segment and say how to read it.

    channels: "auto" (RGB(A) layers have channels last, anything else 3-D is a volume) or
        "first axis is channels" for a (C, Y, X) layer shown with a channel slider.
    """
    if not isinstance(layer, Image):
        kind = f"a {layer.__class__.__name__} layer" if layer is not None else "nothing"
        raise LayerError(f"MobileSAM segments Image layers; the selected layer is {kind}")
    # Multiscale layers are segmented on level 0, read lazily (tiled above a size, see _tiled.py).
    shape = tuple(int(s) for s in (layer.data[0] if layer.multiscale else layer.data).shape)
    if layer.rgb:
        info = ImageInfo(shape[:-1], -1, tuple(range(len(shape) - 1)))
    elif channels == CHANNEL_CHOICES[1]:
        if len(shape) != 3:
            raise LayerError(
                f"layer {layer.name!r} has shape {shape}; 'first axis is channels' needs (C, Y, X)"
            )
        info = ImageInfo(shape[1:], 0, (1, 2))
    else:
        info = ImageInfo(shape, None, tuple(range(len(shape))))
    if len(info.spatial_shape) not in (2, 3):
        raise LayerError(
            f"layer {layer.name!r} has shape {shape}; MobileSAM needs a 2D image (Y, X), an RGB image "
            "(Y, X, 3), channels first (C, Y, X) or a volume (Z, Y, X). Split time points into separate layers first."
        )
    return info


def _layer_transform(image_layer, axes: tuple[int, ...] | None = None) -> dict:
    """Keyword arguments that give a new layer the same data->world transform as `image_layer`
    (restricted to `axes` for a layer with fewer dimensions, e.g. labels of a channels-first image)."""
    if axes is None or len(axes) == image_layer.ndim:
        return {
            "scale": image_layer.scale,
            "translate": image_layer.translate,
            "rotate": image_layer.rotate,
            "shear": image_layer.shear,
            "affine": image_layer.affine.affine_matrix,
            "units": image_layer.units,  # so saved labels keep the image's length unit (mm for CT)
        }
    axes = list(axes)
    return {
        "scale": np.asarray(image_layer.scale)[axes],
        "translate": np.asarray(image_layer.translate)[axes],
        "units": tuple(image_layer.units[a] for a in axes),
    }


SUFFIXES = {"prompts": "prompts", "boxes": "boxes", "current": "current object", "objects": "objects"}


def layer_names(image_name: str) -> dict[str, str]:
    """The fixed names of an image's plugin layers: '<image> prompts', '<image> boxes', ..."""
    return {role: f"{image_name} {suffix}" for role, suffix in SUFFIXES.items()}


def _find(viewer, name: str, kind: type, ndim: int):
    """The existing layer called `name` if it has the right type and dimensionality."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, kind) and layer.ndim == ndim:
            return layer
    return None


def _shape_name(name: str, shape: tuple[int, ...]) -> str:
    return f"{name} ({'x'.join(str(s) for s in shape)})"


def _labels_layer(viewer, name: str, shape: tuple[int, ...], dtype, transform: dict, index: int, **kwargs):
    """The Labels layer `name` of this shape: reused, or swapped in from where an earlier channel
    setting parked it, or new (inserted at `index` in the layer list). A layer of another shape under the name is parked as
    '<name> (<shape>)' when it holds labels (nothing is lost) and removed when empty, so toggling
    a setting never piles up 'name [1]', 'name [2]' duplicates."""
    existing = viewer.layers[name] if name in viewer.layers else None
    if isinstance(existing, Labels) and existing.data.shape == shape:
        return existing
    if existing is not None:
        if isinstance(existing, Labels) and np.asarray(existing.data).any():
            parked = _shape_name(name, existing.data.shape)
            if parked in viewer.layers:
                viewer.layers.remove(viewer.layers[parked])
            existing.name = parked
        else:
            viewer.layers.remove(existing)
    parked = _shape_name(name, shape)
    if parked in viewer.layers and isinstance(viewer.layers[parked], Labels):
        layer = viewer.layers[parked]
        layer.name = name
        return layer
    layer = Labels(np.zeros(shape, dtype), name=name, **transform, **kwargs)
    viewer.layers.insert(min(index, len(viewer.layers)), layer)
    return layer


RESULT_STYLE = {"current": (np.uint8, 0.6), "objects": (np.int32, 0.5)}  # role -> (dtype, opacity)


class PromptLayers:
    """An image's plugin layers. The points and boxes layers (small) exist from the start, so that
    clicks work at once; the full-size Labels ('current object', 'objects') are made only when
    something is first written into them (`current`, `objects`): on a 6000 x 6000 image they cost
    hundreds of MiB as soon as napari displays them. `existing(role)` looks without making.

    napari selects an inserted layer (and a shown viewer's layer list selects it again later), so
    the layer that was active is given the selection back at once and via `reselect(layer)` (the
    widget defers it to after the layer list's own handling): the clicks stay where they were.
    """

    def __init__(self, viewer, image_layer, info: ImageInfo, points: Points, boxes: Shapes, reselect=None):
        self.viewer, self.image_layer, self.info = viewer, image_layer, info
        self.points, self.boxes = points, boxes
        self._reselect = reselect
        self._held: dict[str, Labels] = {}  # role -> the result layer found or made last

    def existing(self, role: str) -> Labels | None:
        """The image's result layer `role` ("current"/"objects") of the image's shape, or None."""
        layer = self._held.get(role)
        if layer is None or layer not in self.viewer.layers:  # made before, or since removed
            layer = _find(
                self.viewer, layer_names(self.image_layer.name)[role], Labels, len(self.info.spatial_shape)
            )
        if layer is None or layer.data.shape != self.info.spatial_shape:
            return None
        self._held[role] = layer
        return layer

    def result_layer(self, role: str) -> Labels:
        """The result layer `role`, made now (with the image's current transform) if missing."""
        layer = self.existing(role)
        if layer is not None:
            return layer
        dtype, opacity = RESULT_STYLE[role]
        in_list = [
            self.viewer.layers.index(lay) for lay in self.points_and_boxes() if lay in self.viewer.layers
        ]
        if role == "objects" and self.existing("current") is not None:
            in_list.append(self.viewer.layers.index(self._held["current"]))
        index = min(in_list, default=len(self.viewer.layers))  # below the prompts: points stay visible
        active = self.viewer.layers.selection.active
        layer = _labels_layer(
            self.viewer,
            layer_names(self.image_layer.name)[role],
            self.info.spatial_shape,
            dtype,
            _layer_transform(self.image_layer, self.info.spatial_axes),
            index,
            opacity=opacity,
        )
        if role == "current":
            layer.colormap = _current_colormap()
        self._held[role] = layer
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
            if self._reselect is not None:
                self._reselect(active)
        return layer

    @property
    def current(self) -> Labels:
        return self.result_layer("current")

    @property
    def objects(self) -> Labels:
        return self.result_layer("objects")

    def points_and_boxes(self) -> list:
        return [self.points, self.boxes]

    def all(self) -> list:
        """The layers that exist now (result layers are not made by asking)."""
        return [*self.points_and_boxes(), *(lay for role in RESULT_STYLE if (lay := self.existing(role)))]


def ensure_prompt_layers(viewer, image_layer, info: ImageInfo, reselect=None) -> PromptLayers:
    """Find or create the points and boxes layers of `image_layer` (reused so nothing is lost);
    its result Labels are found or made when needed (`PromptLayers`)."""
    ndim = image_layer.ndim  # prompts live in all the image's dimensions (incl. a channel slider)
    names = layer_names(image_layer.name)
    transform = _layer_transform(image_layer)
    boxes = _find(viewer, names["boxes"], Shapes, ndim)
    if boxes is None:
        boxes = viewer.add_shapes(
            ndim=ndim,
            name=names["boxes"],
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **transform,
        )
        boxes.mode = "add_rectangle"
    points = _find(viewer, names["prompts"], Points, ndim)
    if points is None:
        features = pd.DataFrame({"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
        points = viewer.add_points(
            ndim=ndim,
            name=names["prompts"],
            features=features,
            face_color="label",
            face_color_cycle=PROMPT_COLORS,
            border_color="white",
            size=10,
            **transform,
        )
        points.feature_defaults = {"label": POSITIVE}
        points.mode = "add"
    return PromptLayers(viewer, image_layer, info, points, boxes, reselect)


def sync_transform(viewer, image_layer, info: ImageInfo) -> None:
    """Give the image's plugin layers its current scale and translate (after the user changed them)."""
    full = {"scale": image_layer.scale, "translate": image_layer.translate, "units": image_layer.units}
    spatial = _layer_transform(image_layer, info.spatial_axes)
    for name in layer_names(image_layer.name).values():
        if name not in viewer.layers:
            continue
        layer = viewer.layers[name]
        values = full if layer.ndim == image_layer.ndim else spatial
        layer.scale, layer.translate = values["scale"], values["translate"]
        layer.units = values["units"]


def remove_prompt_layers(viewer, image_name: str) -> str | None:
    """Remove an image's prompt, box and current-object layers (and an empty objects layer).
    Returns the objects layer's name when it was kept because it holds committed labels."""
    names = layer_names(image_name)
    for role in ("prompts", "boxes", "current"):
        if names[role] in viewer.layers:
            viewer.layers.remove(viewer.layers[names[role]])
    if names["objects"] in viewer.layers:
        objects = viewer.layers[names["objects"]]
        if np.asarray(objects.data).any():
            return objects.name
        viewer.layers.remove(objects)
    return None


def _current_colormap():
    """Cyan for the prompted object; other colours for the objects of extra boxes (2, 3, ...)."""
    from napari.utils.colormaps import DirectLabelColormap

    extra = ["magenta", "yellow", "orange", "lime", "deepskyblue", "pink", "gold", "violet"]
    colors = {None: "transparent", 0: "transparent", 1: "cyan"}
    colors.update({value: extra[(value - 2) % len(extra)] for value in range(2, 256)})
    return DirectLabelColormap(color_dict=colors)


def point_label_mode(points: Points) -> str:
    """The label (positive/negative) that newly clicked points get."""
    return str(points.feature_defaults["label"].iloc[0])


def set_point_label_mode(points: Points, label: str) -> None:
    points.feature_defaults = {"label": label}


def to_image_coords(layer, coords: np.ndarray, image_layer) -> np.ndarray:
    """(N, D) data coordinates of `layer` -> (N, D) data coordinates of `image_layer`, via world."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    return np.array([image_layer.world_to_data(layer.data_to_world(c)) for c in coords], dtype=float).reshape(
        -1, image_layer.ndim
    )


def read_points(points: Points, image_layer, info: ImageInfo) -> tuple[np.ndarray, np.ndarray]:
    """All prompt points in image data coordinates (N, D) ((z,) y, x order) and labels (N,) 1/0."""
    coords = (
        to_image_coords(points, points.data, image_layer)
        if len(points.data)
        else np.zeros((0, image_layer.ndim))
    )
    coords = coords[:, list(info.spatial_axes)]
    labels = np.array([1 if str(v) == POSITIVE else 0 for v in points.features["label"]], dtype=np.int64)
    return coords, labels


def read_boxes(shapes: Shapes, image_layer, info: ImageInfo) -> list[np.ndarray]:
    """Each shape's corners as (K, D) image data coordinates (any shape counts as its bounding box)."""
    return [
        to_image_coords(shapes, vertices, image_layer)[:, list(info.spatial_axes)] for vertices in shapes.data
    ]


def current_slice(viewer, image_layer) -> int:
    """Index along the image's first axis of the slice shown in the viewer."""
    world = np.asarray(viewer.dims.point)[-image_layer.ndim :]
    return int(np.round(image_layer.world_to_data(world)[0]))
