"""Save objects… / Open objects…: keep the work of a session and resume it later.

Saving writes the image's committed labels with the image layer's voxel size and origin (its
scale / translate) through the core's `mobilesam.volume.segmentation_io.save_segmentation`
(TIFF / OME-TIFF / NIfTI / OME-Zarr by suffix, atomic), with a sidecar holding every object's
prompts, the model identity and the settings used. Opening restores the labels into
'<image> objects' and the prompts into the image's session, so *All objects* and re-propagation
work as before saving; a label image without a sidecar gives committed objects without prompts.
A Labels layer opened by a reader with the sidecar in `layer.metadata["mobilesam"]` is resumed
the same way. Failures are shown in the dock's status line; nothing on screen changes then.
"""

from pathlib import Path

import numpy as np

from mobilesam.errors import MobileSamError
from mobilesam.prompt import Prompt

from ._layers import LayerError
from ._objects import existing_layer
from ._writer import length_unit

SIDECAR_SCHEMA = 1  # of the "objects" entries below; the core adds its own format and label_image
METADATA_KEY = "mobilesam"  # where readers put the sidecar in a Labels layer's metadata
SAVE_FILTER = (
    "TIFF with voxel size (*.tif *.tiff);;OME-TIFF (*.ome.tif *.ome.tiff);;NIfTI (*.nii *.nii.gz);;"
    "OME-Zarr (*.ome.zarr)"
)
ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup")


class SidecarError(MobileSamError):
    """A sidecar that does not fit its label image or the image it is opened on."""


def prompts_to_json(object_prompts: dict, present: set[int]) -> list[dict]:
    """[{"id", "prompts": [{"slice", "points" [[x, y]], "labels", "box" [x0, y0, x1, y1] | None}]}]
    for every id in `present` (ids without prompts get an empty list)."""
    out = []
    for obj in sorted(present):
        by_slice = object_prompts.get(obj, {})
        prompts = [
            {
                "slice": int(z),
                "points": [[float(x), float(y)] for x, y in prompt.points],
                "labels": [int(v) for v in prompt.labels],
                "box": None if prompt.box is None else [float(v) for v in prompt.box],
            }
            for z, prompt in sorted(by_slice.items())
        ]
        out.append({"id": int(obj), "prompts": prompts})
    return out


def prompts_from_json(
    objects: list, present: set[int], source: str, absent: list | None = None
) -> dict[int, dict[int, Prompt]]:
    """The session's committed-object prompts from the sidecar's "objects"; checks the values.
    Prompts of ids that are not in the labels (an object erased by hand after its commit) are
    left out and their ids appended to `absent`."""
    out: dict[int, dict[int, Prompt]] = {}
    try:
        for entry in objects:
            obj = int(entry["id"])
            if obj not in present:
                if absent is not None:
                    absent.append(obj)
                continue
            by_slice = {}
            for prompt in entry.get("prompts", []):
                points = tuple((float(x), float(y)) for x, y in prompt.get("points", []))
                labels = tuple(int(v) for v in prompt.get("labels", []))
                if len(points) != len(labels):
                    raise SidecarError(
                        f"{source}: object {obj} has {len(points)} points but {len(labels)} labels"
                    )
                box = prompt.get("box")
                by_slice[int(prompt["slice"])] = Prompt(
                    points, labels, None if box is None else tuple(float(v) for v in box)
                )
            if by_slice:
                out[obj] = by_slice
    except (KeyError, TypeError, ValueError) as exc:
        raise SidecarError(
            f"{source}: the sidecar's objects are malformed ({type(exc).__name__}: {exc})"
        ) from None
    return out


def _naming(exc: BaseException, path, doing: str) -> str:
    """The error's text, led by what was done and the file unless the text names the file already."""
    text = str(exc)
    return text if str(path) in text else f"{doing} {path}: {text}"


class Persistence:
    """Save and open in `widget` (a `MobileSamWidget`); `tools` is its `ObjectTools` (undo)."""

    def __init__(self, widget, tools) -> None:
        self.widget = widget
        self.tools = tools
        self._identity = None  # ((predictor id, model key), model identity)
        widget.viewer.layers.events.inserted.connect(self._on_inserted)

    # ---- dialogs (the dialog-free `save` / `open` are what tests and scripts call)
    def save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        image = self.widget.image.value
        suggested = f"{image.name} objects.tif" if image is not None else "objects.tif"
        path, _ = QFileDialog.getSaveFileName(self.widget.native, "Save objects", suggested, SAVE_FILTER)
        if path:
            self.save(path)

    def open_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.widget.native, "Open objects", "", SAVE_FILTER + ";;All files (*)"
        )
        if path:
            self.open(Path(path).parent if Path(path).name in ZARR_MARKERS else path)

    # ---- saving
    def sidecar(self, image_layer, info, labels: np.ndarray | None = None) -> dict:
        """The sidecar of the image's committed objects: every id of `labels`, or without labels
        (cheap, for the layer's metadata) the ids that have prompts."""
        widget = self.widget
        object_prompts = widget._session().object_prompts
        present = set(object_prompts) if labels is None else set(np.unique(labels).tolist()) - {0}
        model_type, checkpoint, backend = widget._wanted_model_key()
        return {
            "writer": {"name": "napari-mobilesam", "objects_schema": SIDECAR_SCHEMA},
            "image": {
                "name": image_layer.name,
                "shape": list(info.spatial_shape),
                "channels": widget.channels.value,
            },
            "objects": prompts_to_json(object_prompts, present),
            "model": {
                "identity": self._model_identity(),
                "model_type": model_type,
                "checkpoint": checkpoint or None,
                "backend": backend,
            },
            "settings": {
                "candidate": widget.candidate.value,
                "iou_threshold": float(widget.iou_threshold.value),
                "projection": widget.projection.value,
                "tile_large": bool(widget.tile_large.value),
                "tile_size": int(widget.tile_size.value),
            },
        }

    def _model_identity(self) -> str | None:
        """`mobilesam.serving.model_identity` of the model in use (None before a model was loaded);
        computed once per predictor (it hashes the weights)."""
        from ._model import _model_id

        widget = self.widget
        if widget._predictor is None or widget._model_key != widget._wanted_model_key():
            return None
        key = (id(widget._predictor), widget._model_key)
        if self._identity is None or self._identity[0] != key:
            self._identity = (key, _model_id(widget._predictor, widget._model_key))
        return self._identity[1]

    def publish(self) -> None:
        """Keep the sidecar in '<image> objects'.metadata["mobilesam"], so napari's File ▸ Save
        Selected Layers (our writer) saves the prompts too."""
        widget = self.widget
        layers, image_layer = widget._layers, widget._layers_of
        objects = existing_layer(layers, "objects") if layers is not None else None
        if objects is None or image_layer is None or objects not in widget.viewer.layers:
            return
        try:
            info = widget._describe(image_layer)
        except LayerError:
            return
        objects.metadata[METADATA_KEY] = self.sidecar(image_layer, info)

    def save(self, path) -> Path | None:
        """Write the current image's committed objects to `path`; the written path, or None (the
        error is in the status line; no layer changed, a previous file at `path` is kept)."""
        from mobilesam.volume.segmentation_io import save_segmentation

        widget = self.widget
        current = widget._current_image()
        if current is None:
            return None
        image_layer, info = current
        try:
            objects = existing_layer(widget._prompt_layers(), "objects")
        except LayerError as exc:
            widget._notify("error", f"MobileSAM: {exc}")
            return None
        if objects is None:
            widget._notify("warning", f"MobileSAM: {image_layer.name!r} has no committed objects to save yet")
            return None
        labels = np.asarray(objects.data)
        axes = list(info.spatial_axes)
        spacing = tuple(float(v) for v in np.asarray(image_layer.scale)[axes])
        origin = tuple(float(v) for v in np.asarray(image_layer.translate)[axes])
        unit = length_unit(image_layer.units)  # a CT opened in mm is saved in mm, not as µm
        try:
            written = save_segmentation(
                path,
                labels,
                spacing=spacing,
                origin=origin,
                unit=unit,
                sidecar=self.sidecar(image_layer, info, labels),
            )
        except (OSError, ValueError, MobileSamError) as exc:
            widget._notify(
                "error", f"MobileSAM: {_naming(exc, path, 'could not save objects to')}; nothing was changed"
            )
            return None
        count = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        widget._notify("info", f"MobileSAM: saved {count} objects to {written}")
        return Path(written)

    # ---- opening
    def open(self, path) -> bool:
        """Resume from a saved file: labels into '<image> objects', prompts into the session."""
        from mobilesam.volume.segmentation_io import load_segmentation

        try:
            segmentation = load_segmentation(path)
        except (OSError, ValueError, MobileSamError) as exc:
            self.widget._notify(
                "error", f"MobileSAM: {_naming(exc, path, 'could not open')}; nothing was changed"
            )
            return False
        return self.resume(segmentation.labels, segmentation.sidecar, str(path), segmentation.spacing)

    def resume(self, labels, sidecar: dict | None, source: str, spacing=None) -> bool:
        """Make `labels` (+ the prompts in `sidecar`) the current image's committed objects (undoable)."""
        widget = self.widget
        current = widget._current_image()
        if current is None:
            return False
        image_layer, info = current
        labels = np.asarray(labels)
        try:
            if tuple(labels.shape) != tuple(info.spatial_shape):
                raise SidecarError(
                    f"{source}: the labels are {tuple(labels.shape)} but the image {image_layer.name!r} "
                    f"is {tuple(info.spatial_shape)}; open them on the image they were made on"
                )
            if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
                raise SidecarError(f"{source}: labels must be integers, not {labels.dtype}")
            if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
                raise SidecarError(f"{source}: label ids must be within 0..{np.iinfo(np.int32).max}")
            present = set(np.unique(labels).tolist()) - {0}
            recorded = sidecar.get("image") if isinstance(sidecar, dict) else None
            shape = recorded.get("shape") if isinstance(recorded, dict) else None
            if shape is not None and shape != list(info.spatial_shape):
                raise SidecarError(
                    f"{source}: the sidecar was written for an image of shape {shape}, "
                    f"the labels and this image are {list(info.spatial_shape)}"
                )
            absent: list[int] = []
            prompts = (
                prompts_from_json(sidecar.get("objects", []), present, source, absent) if sidecar else {}
            )
            layers = widget._prompt_layers()
        except (SidecarError, LayerError) as exc:
            widget._notify("error", f"MobileSAM: {exc}; nothing was changed")
            return False
        objects = layers.objects
        whole = tuple(slice(0, n) for n in objects.data.shape)
        session = widget._session()
        with self.tools.record(f"open {Path(source).name}", self.tools.scope(labels=[(objects, whole)])):
            objects.data[...] = labels.astype(objects.data.dtype, copy=False)
            session.object_prompts = prompts
            objects.refresh()
        if absent:
            widget._notify(
                "warning",
                f"MobileSAM: {source}: prompts of object(s) {', '.join(map(str, absent[:5]))} left out: "
                "those ids are not in the labels",
            )
        self._restore_settings((sidecar or {}).get("settings", {}))
        self._check_spacing(image_layer, info, spacing, source)
        with_prompts = len(prompts)
        widget._notify(
            "info",
            f"MobileSAM: opened {len(present)} objects from {source} ({with_prompts} with prompts"
            + ("" if sidecar else "; no sidecar: committed objects without prompts")
            + ")",
        )
        return True

    def _restore_settings(self, settings: dict) -> None:
        """The propagation settings the objects were made with, so re-propagating gives the same."""
        widget = self.widget
        if isinstance(settings.get("iou_threshold"), (int, float)):
            widget.iou_threshold.value = float(settings["iou_threshold"])
        if settings.get("projection") in widget.projection.choices:
            widget.projection.value = settings["projection"]

    def _check_spacing(self, image_layer, info, spacing, source: str) -> None:
        if spacing is None:
            return
        scale = np.asarray(image_layer.scale)[list(info.spatial_axes)]
        if len(spacing) == len(scale) and not np.allclose(np.asarray(spacing, dtype=float), scale, rtol=1e-4):
            self.widget._notify(
                "warning",
                f"MobileSAM: {source} has voxel size {tuple(float(s) for s in spacing)}, the image "
                f"{image_layer.name!r} {tuple(float(s) for s in scale)}; the objects are shown at the image's",
            )

    def _on_inserted(self, event) -> None:
        """A Labels layer read with a MobileSAM sidecar: resume from it once the insertion is over."""
        from napari.layers import Labels
        from qtpy.QtCore import QTimer

        layer = event.value
        # Only layers read from a file: a duplicate of '<image> objects' carries the sidecar too.
        from_file = getattr(layer.source, "path", None) is not None
        if isinstance(layer, Labels) and from_file and isinstance(layer.metadata.get(METADATA_KEY), dict):
            QTimer.singleShot(0, lambda: self.resume_from_layer(layer))

    def resume_from_layer(self, layer) -> bool:
        """Resume from a Labels layer holding a sidecar; the layer is removed once its objects are in
        '<image> objects' (it would be a second copy)."""
        widget = self.widget
        if layer not in widget.viewer.layers:
            return False
        image = widget.image.value
        try:
            shape = widget._describe(image).spatial_shape if image is not None else None
        except LayerError:
            shape = None
        if shape is None or tuple(layer.data.shape) != tuple(shape):
            widget._notify(
                "info",
                f"MobileSAM: {layer.name!r} holds saved objects; open their image, then 'Open objects…' "
                "to resume with their prompts",
            )
            return False
        source = getattr(layer.source, "path", None) or layer.name
        if not self.resume(
            np.asarray(layer.data), layer.metadata[METADATA_KEY], str(source), spacing=layer.scale
        ):
            return False
        widget.viewer.layers.remove(layer)
        return True
