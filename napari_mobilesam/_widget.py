"""The MobileSAM dock widget: prompts in napari layers -> masks from the core.

Layout: model (type / checkpoint / backend), image layer, interactive prompting (candidates, commit,
clear), volume tools (propagation, embedding cache), "segment everything", and a task row with
a cancel button. Slow work (loading the model, encoding slices, propagation, automatic masks)
runs in a napari thread worker (`BackgroundTask`); decoding prompts is fast and runs here.

The widget holds no model logic: `ImageSegmenter`/`VolumeSegmenter` wrap the core's predictor
and volume embeddings, `mobilesam.volume` propagates, `mobilesam.SamAutomaticMaskGenerator`
segments everything.
"""

import logging
import os
from typing import Callable, Optional

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton,
                              SpinBox)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

import mobilesam
from mobilesam.errors import Cancelled, MissingWeightsError, MobileSamError
from mobilesam.model_zoo import MODEL_TYPES
from mobilesam.onnx import BACKENDS
from mobilesam.volume import DEFAULT_IOU_THRESHOLD, DEFAULT_PROJECTION, PROJECTIONS

from ._layers import (CHANNEL_CHOICES, NEGATIVE, POSITIVE, LayerError, PromptLayers, current_slice, describe_image,
                      ensure_prompt_layers, point_label_mode, read_boxes, read_points, set_point_label_mode)
from ._prompts import GroupedPrompts, PlanePrompt, group_prompts
from ._segmenter import ImageSegmenter, VolumeSegmenter
from ._tasks import BackgroundTask

logger = logging.getLogger(__name__)

CANDIDATES = ("best", "1", "2", "3")
BACKEND_ENV = "MOBILESAM_BACKEND"  # the Backend choice's initial value, as for the Label Studio backend

# Keys free in napari's own bindings for Points and Shapes layers (where prompting happens) and
# the viewer; they are bound on the viewer and on the prompt layers.
KEYS = {
    "segment": "Shift-S",
    "commit": "C",
    "clear": "Shift-C",
    "toggle": "T",
    "candidate": "M",
}
KEY_HELP = "\n".join([
    f"{KEYS['toggle']}: new points positive/negative",
    f"{KEYS['segment']}: segment now",
    f"{KEYS['candidate']}: next mask candidate",
    f"{KEYS['commit']}: commit object (new label id)",
    f"{KEYS['clear']}: clear prompts",
])


class MobileSamWidget(Container):
    """Interactive MobileSAM segmentation of the selected Image layer (2D, RGB or 3D)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.messages: list[tuple[str, str]] = []  # (level, text) of every notification, newest last
        self._predictor = None
        self._model_key = None
        self._segmenter = None
        self._segmenter_key = None
        self._layers: Optional[PromptLayers] = None
        self._task: Optional[BackgroundTask] = None
        self._pending_segment = False
        self._muted = False  # while the widget itself edits prompt layers
        self._shown: dict[int, PlanePrompt] = {}  # slice -> prompt whose mask is displayed
        self._candidates: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slice -> (masks, scores)
        self._object_prompts: dict[int, dict[int, PlanePrompt]] = {}  # committed id -> slice prompts

        self._build()
        self._apply_backend_default()
        self._bind_keys()
        _configure_runtime()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        self.image.reset_choices()
        self._on_image_changed()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.model_type = ComboBox(label="Model", choices=MODEL_TYPES, value="vit_t",
                                   tooltip="vit_t is MobileSAM (fast); vit_b/l/h are the original SAM models")
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth", value="",
                                   tooltip="Optional weights file (its architecture is read from the file); "
                                           "empty = the official weights of the chosen model from the cache "
                                           "folder (downloaded on first use)")
        self.backend = ComboBox(label="Backend", choices=BACKENDS, value="torch",
                                tooltip="torch runs the model itself; onnx runs it with ONNX Runtime (needs "
                                        "napari-mobilesam[onnx]; the first use exports the model to the cache "
                                        f"folder). Default from ${BACKEND_ENV}")
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.channels = ComboBox(label="Channels", choices=CHANNEL_CHOICES, value="auto",
                                 tooltip="auto: RGB layers have channels last, other 3-D layers are volumes (Z, Y, X)")
        self.auto_segment = CheckBox(text="Segment on every prompt change", value=True)
        self.candidate = ComboBox(label="Mask candidate", choices=CANDIDATES, value="best",
                                  tooltip="SAM proposes 3 masks; 'best' takes the highest predicted IoU")
        self.scores = Label(label="Predicted IoU", value="-")
        self.point_mode = Label(label="New points", value=POSITIVE)
        self.segment_button = PushButton(text=f"Segment [{KEYS['segment']}]")
        self.toggle_button = PushButton(text=f"+/- [{KEYS['toggle']}]")
        self.commit_button = PushButton(text=f"Commit [{KEYS['commit']}]")
        self.clear_button = PushButton(text=f"Clear [{KEYS['clear']}]")
        self.key_help = Label(label="Keys", value=KEY_HELP)

        self.iou_threshold = FloatSpinBox(
            label="Stop below IoU", value=DEFAULT_IOU_THRESHOLD, min=0.0, max=1.0, step=0.05,
            tooltip="Propagation of an object stops where its mask overlaps the previous slice's less than this")
        self.projection = ComboBox(label="Projection", choices=PROJECTIONS, value=DEFAULT_PROJECTION,
                                   tooltip="How each slice's mask prompts the next slice (see mobilesam.volume)")
        self.volume_button = PushButton(text="Segment volume",
                                        tooltip="Propagate the current object from its prompted slices through z")
        self.all_objects_button = PushButton(text="All objects",
                                             tooltip="Propagate every committed object through z at once")
        self.cache_dir = FileEdit(label="Embedding cache", mode="d", value="",
                                  tooltip="Folder where slice embeddings are saved and loaded from")
        self.precompute_button = PushButton(text="Precompute volume embeddings")

        self.points_per_side = SpinBox(label="Points per side", value=32, min=1, max=128,
                                       tooltip="Grid of point prompts for 'Segment everything'")
        self.everything_iou = FloatSpinBox(label="Min predicted IoU", value=0.88, min=0.0, max=1.0, step=0.01,
                                           tooltip="Masks whose predicted IoU is lower are dropped")
        self.everything_stability = FloatSpinBox(label="Min stability", value=0.95, min=0.0, max=1.0, step=0.01,
                                                 tooltip="Masks that change under small threshold shifts are dropped")
        self.everything_button = PushButton(text="Segment everything (image / current slice)")

        self.status = Label(label="Status", value="ready")
        self.cancel_button = PushButton(text="Cancel", enabled=False)

        self.extend([
            _heading("Model and image"), self.model_type, self.checkpoint, self.backend, self.image, self.channels,
            _heading("Prompts (click points, draw boxes)"), self.auto_segment, self.candidate, self.scores,
            self.point_mode,
            _row(self.segment_button, self.toggle_button), _row(self.commit_button, self.clear_button),
            self.key_help,
            _heading("Volumes (Z, Y, X)"), self.iou_threshold, self.projection,
            _row(self.volume_button, self.all_objects_button), self.cache_dir, self.precompute_button,
            _heading("Segment everything"), self.points_per_side, self.everything_iou,
            self.everything_stability, self.everything_button,
            self.status, self.cancel_button,
        ])
        self.image.changed.connect(self._on_image_changed)
        self.channels.changed.connect(self._on_image_changed)
        self.model_type.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.backend.changed.connect(self._on_model_changed)
        self.candidate.changed.connect(self._repaint_candidates)
        self.segment_button.changed.connect(lambda: self.segment_prompts())
        self.toggle_button.changed.connect(lambda: self.toggle_point_label())
        self.commit_button.changed.connect(lambda: self.commit())
        self.clear_button.changed.connect(lambda: self.clear())
        self.volume_button.changed.connect(lambda: self.segment_volume())
        self.all_objects_button.changed.connect(lambda: self.segment_all_objects())
        self.precompute_button.changed.connect(lambda: self.precompute_embeddings())
        self.everything_button.changed.connect(lambda: self.segment_everything())
        self.cancel_button.changed.connect(lambda: self.cancel())

    def _apply_backend_default(self) -> None:
        value = os.environ.get(BACKEND_ENV, "").strip().lower()
        if value in BACKENDS:
            self.backend.value = value
        elif value:
            self._notify("warning", f"MobileSAM: {BACKEND_ENV} must be one of {', '.join(BACKENDS)}, "
                                    f"not {value!r}; using {self.backend.value}")

    def _bind_keys(self) -> None:
        actions = {
            "segment": self.segment_prompts, "commit": self.commit, "clear": self.clear,
            "toggle": self.toggle_point_label, "candidate": self.next_candidate,
        }
        self._key_actions = {KEYS[name]: action for name, action in actions.items()}
        for key, action in self._key_actions.items():
            self.viewer.bind_key(key, _key_handler(action), overwrite=True)

    def _bind_layer_keys(self, layers: PromptLayers) -> None:
        # The active layer's bindings win over the viewer's, so the prompt layers carry them too.
        for layer in (layers.points, layers.boxes):
            for key, action in self._key_actions.items():
                if key == KEYS["toggle"] and layer is layers.boxes:
                    continue  # T draws paths in Shapes layers; keep napari's meaning there
                layer.bind_key(key, _key_handler(action), overwrite=True)

    # ---------------------------------------------------------------- messages
    def _notify(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        {"info": show_info, "warning": show_warning, "error": show_error}[level](text)

    def _report_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._notify("info", f"MobileSAM: cancelled ({exc})")
        elif isinstance(exc, MissingWeightsError):
            self._notify("error", f"MobileSAM: no model weights. {exc} "
                                  "Or choose a checkpoint file in the widget's 'Checkpoint' field.")
        elif isinstance(exc, (MobileSamError, ValueError, LayerError)):
            self._notify("error", f"MobileSAM: {exc}")
        else:
            logger.error("MobileSAM task failed", exc_info=(type(exc), exc, exc.__traceback__))
            self._notify("error", f"MobileSAM failed: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- image and layers
    def _image_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_layers_changed(self, event=None) -> None:
        if self._layers is not None and any(layer not in self.viewer.layers for layer in self._layers.all()):
            self._layers = None  # the user removed one: recreated (empty) when next needed
        self.image.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]  # the newest image, e.g. one just opened

    def _on_image_changed(self, _value=None) -> None:
        self._reset_prompt_state()
        self._layers = None
        if self.image.value is not None:
            try:
                self._prompt_layers()
            except LayerError as exc:
                self._notify("warning", f"MobileSAM: {exc}")

    def _reset_prompt_state(self) -> None:
        self._shown.clear()
        self._candidates.clear()
        self._object_prompts.clear()
        self.scores.value = "-"

    def _image_layer(self):
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            active = self.viewer.layers.selection.active
            if active is not None and not isinstance(active, Image):
                raise LayerError(f"MobileSAM segments Image layers, and the selected layer {active.name!r} "
                                 f"is a {active.__class__.__name__} layer; add or open an image first")
            raise LayerError("no image layer: open or add an image, then choose it in the MobileSAM widget")
        return layer

    def _on_model_changed(self, _value=None) -> None:
        # Masks on screen came from the previous model: segment the prompts again with the new one.
        self._shown.clear()
        self._candidates.clear()
        if self.auto_segment.value and self._layers is not None:
            self.segment_prompts()

    def _describe(self, image_layer):
        return describe_image(image_layer, self.channels.value)

    def _prompt_layers(self) -> PromptLayers:
        image_layer = self._image_layer()
        if self._layers is None:
            info = self._describe(image_layer)
            self._muted = True
            try:
                self._layers = ensure_prompt_layers(self.viewer, image_layer, info)
            finally:
                self._muted = False
            self._layers.points.events.data.connect(self._on_prompts_changed)
            self._layers.points.events.features.connect(self._on_prompts_changed)
            self._layers.boxes.events.data.connect(self._on_prompts_changed)
            self._bind_layer_keys(self._layers)
            # Clicking should add points right away; deferred because napari selects a newly
            # inserted layer after its insertion events have run.
            QTimer.singleShot(0, self._activate_points)
        return self._layers

    def _activate_points(self) -> None:
        if self._layers is not None and self._layers.points in self.viewer.layers:
            self.viewer.layers.selection.active = self._layers.points

    # ---------------------------------------------------------------- model and embeddings
    def _wanted_model_key(self) -> tuple[str, str, str]:
        """(model type, checkpoint path or "", backend)."""
        path = str(self.checkpoint.value) if self.checkpoint.value else ""
        if path in ("", "."):
            path = ""
        return self.model_type.value, path, self.backend.value

    def use_predictor(self, predictor) -> None:
        """Use this predictor (e.g. one already built, or a stand-in) for the current model setting."""
        self._predictor = predictor
        self._model_key = self._wanted_model_key()
        self._segmenter = None

    def _current_image(self):
        """(image layer, its description), or None after telling the user why there is none."""
        try:
            image_layer = self._image_layer()
            return image_layer, self._describe(image_layer)
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return None

    def _prepare(self, description: str, slices: list[int], then: Callable, extra: Optional[Callable] = None,
                 ) -> None:
        """In a worker: load the model, build the segmenter, encode `slices`, run `extra(segmenter, progress,
        cancel)`; then call `then(result_of_extra)` in the GUI thread."""
        current = self._current_image()
        if current is None:
            return
        image_layer, info = current
        model_key = self._wanted_model_key()
        cache_dir = str(self.cache_dir.value) if self.cache_dir.value and str(self.cache_dir.value) != "." else None
        segmenter_key = (id(image_layer), info, model_key, cache_dir)
        predictor = self._predictor if self._model_key == model_key else None
        segmenter = self._segmenter if (predictor is not None and self._segmenter_key == segmenter_key) else None
        # Only the backend changed: the loaded weights serve the new predictor too.
        same_weights = self._model_key is not None and self._model_key[:2] == model_key[:2]
        model = getattr(self._predictor, "model", None) if same_weights else None
        if predictor is None and model_key[2] == "onnx":
            description += " (ONNX Runtime; the first use exports the model)"
        data = image_layer.data

        def work(progress, cancel):
            nonlocal predictor, segmenter
            if predictor is None:
                predictor = build_predictor(model_key, model)
            if segmenter is None:
                segmenter = make_segmenter(predictor, data, info, cache_dir, _model_id(predictor, model_key))
            segmenter.compute_embeddings(slices, progress=progress, cancel=cancel)
            result = extra(segmenter, progress, cancel) if extra is not None else None
            return predictor, segmenter, result

        def done(outcome):
            self._predictor, self._segmenter, result = outcome
            self._model_key, self._segmenter_key = model_key, segmenter_key
            self._end_task()
            try:
                then(result)
            except Exception as exc:  # noqa: BLE001 - shown to the user, layers untouched
                self._report_error(exc)
            self._run_pending()

        def failed(exc):
            self._end_task()
            # Prompts added meanwhile stay in their layer; they are segmented on the next change or
            # Segment press (retrying at once would repeat e.g. a missing-weights error forever).
            self._pending_segment = False
            self._report_error(exc)
            if isinstance(exc, BackendUnavailable):
                self._restore_backend()

        self._start_task(BackgroundTask(work, description, on_done=done, on_error=failed))

    def _restore_backend(self) -> None:
        """Go back to the backend of the last working predictor (torch if none worked yet); its
        prompts are segmented again by the model-change handler."""
        previous = self._model_key[2] if self._model_key is not None else "torch"
        if self.backend.value != previous:
            self._notify("info", f"MobileSAM: backend set back to {previous}")
            self.backend.value = previous

    def _start_task(self, task: BackgroundTask) -> None:
        self._task = task
        self.status.value = f"{task.description}…"
        self.cancel_button.enabled = True
        task.start()

    def _end_task(self) -> None:
        self._task = None
        self.status.value = "ready"
        self.cancel_button.enabled = False

    def _run_pending(self) -> None:
        if self._pending_segment:
            self._pending_segment = False
            self.segment_prompts()

    def _refuse_if_busy(self) -> bool:
        if self._task is None:
            return False
        self._notify("warning", f"MobileSAM is busy ({self._task.description}); wait or press Cancel")
        return True

    @property
    def busy(self) -> bool:
        return self._task is not None

    def cancel(self) -> None:
        """Stop the running background task (the core raises Cancelled at its next check)."""
        if self._task is not None:
            self.status.value = "cancelling…"
            self._task.cancel()

    # ---------------------------------------------------------------- prompting
    def _grouped_prompts(self, layers: PromptLayers, image_layer) -> GroupedPrompts:
        info = self._describe(image_layer)
        coords, labels = read_points(layers.points, image_layer, info)
        grouped = group_prompts(coords, labels, read_boxes(layers.boxes, image_layer, info), info.spatial_shape)
        if grouped.outside:
            self._notify("warning", f"MobileSAM: {grouped.outside} prompt(s) outside the image "
                                    f"{image_layer.name!r} were ignored (they are kept in the layer)")
        return grouped

    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "") or "")
        if self._muted or action.endswith("ing"):  # adding/changing/removing: wait for the final event
            return
        if self.auto_segment.value:
            self.segment_prompts()

    def segment_prompts(self) -> None:
        """Segment every slice whose prompts changed since it was last segmented."""
        if self._task is not None:
            self._pending_segment = True  # after the running task; the predictor is in use
            return
        try:
            layers = self._prompt_layers()
            image_layer = self._image_layer()
            grouped = self._grouped_prompts(layers, image_layer)
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        changed = [z for z in sorted(set(grouped.by_slice) | set(self._shown))
                   if grouped.by_slice.get(z) != self._shown.get(z)]
        if not changed:
            return
        ready = (self._segmenter is not None and self._model_key == self._wanted_model_key())
        missing = [z for z in changed if z in grouped.by_slice and not (ready and self._segmenter.has_embedding(z))]
        if missing:
            self._prepare("MobileSAM: computing image embedding", missing, then=lambda _: self.segment_prompts())
            return
        for z in changed:
            prompt = grouped.by_slice.get(z)
            if prompt is None:
                self._candidates.pop(z, None)
                self._paint(layers, z, None)
            else:
                try:
                    masks, scores = self._segmenter.predict(z, prompt)
                except (MobileSamError, ValueError, RuntimeError) as exc:
                    self._report_error(exc)
                    return
                self._candidates[z] = (masks, scores)
                self._paint(layers, z, self._pick(masks, scores))
            self._shown[z] = prompt
        layers.current.refresh()

    def _pick(self, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
        choice = self.candidate.value
        index = int(np.argmax(scores)) if choice == "best" else min(int(choice) - 1, len(masks) - 1)
        self.scores.value = " / ".join(("[%.2f]" if i == index else "%.2f") % s for i, s in enumerate(scores))
        return masks[index]

    def _paint(self, layers: PromptLayers, z: int, mask: Optional[np.ndarray]) -> None:
        target = layers.current.data if layers.current.ndim == 2 else layers.current.data[z]
        target[...] = 0 if mask is None else mask.astype(target.dtype)

    def _repaint_candidates(self, _value=None) -> None:
        if self._layers is None or not self._candidates:
            return
        for z, (masks, scores) in self._candidates.items():
            self._paint(self._layers, z, self._pick(masks, scores))
        self._layers.current.refresh()

    def next_candidate(self) -> None:
        index = CANDIDATES.index(self.candidate.value)
        self.candidate.value = CANDIDATES[1 + index % (len(CANDIDATES) - 1)]

    def toggle_point_label(self) -> None:
        """Switch whether new points are positive or negative."""
        try:
            points = self._prompt_layers().points
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        label = NEGATIVE if point_label_mode(points) == POSITIVE else POSITIVE
        set_point_label_mode(points, label)
        self.point_mode.value = label

    def commit(self) -> None:
        """Add the current object to the committed Labels with a new id, then clear the prompts."""
        try:
            layers = self._prompt_layers()
            image_layer = self._image_layer()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        mask = np.asarray(layers.current.data) > 0
        if not mask.any():
            self._notify("info", "MobileSAM: nothing to commit (the current object is empty)")
            return
        objects = layers.objects.data
        new_id = int(objects.max()) + 1
        objects[mask & (objects == 0)] = new_id  # existing objects are never overwritten
        layers.objects.refresh()
        self._object_prompts[new_id] = dict(self._grouped_prompts(layers, image_layer).by_slice)
        self.clear()
        self.status.value = f"committed object {new_id}"

    def clear(self) -> None:
        """Remove all prompts and the current object."""
        try:
            layers = self._prompt_layers()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        self._muted = True
        try:
            layers.points.data = np.empty((0, layers.points.ndim))
            layers.boxes.data = []
            layers.current.data[...] = 0
            layers.current.refresh()
        finally:
            self._muted = False
        self._shown.clear()
        self._candidates.clear()
        self.scores.value = "-"

    # ---------------------------------------------------------------- volumes
    def _volume_prompts(self):
        layers = self._prompt_layers()
        image_layer = self._image_layer()
        if not self._describe(image_layer).is_volume:
            raise LayerError(f"{image_layer.name!r} is a 2D image; volume segmentation needs a (Z, Y, X) layer")
        return layers, image_layer, self._grouped_prompts(layers, image_layer)

    def segment_volume(self) -> None:
        """Propagate the current object from its prompted slices through the volume."""
        try:
            layers, _, grouped = self._volume_prompts()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        if not grouped.by_slice:
            self._notify("warning", "MobileSAM: add points or a box on at least one slice first")
            return
        from mobilesam.volume import propagate_object

        prompts = _slice_prompts(grouped.by_slice)
        iou, projection = self.iou_threshold.value, self.projection.value

        def propagate(segmenter, progress, cancel):
            return propagate_object(segmenter.embeddings, prompts, iou_threshold=iou, projection=projection,
                                    progress=progress, cancel=cancel)

        def show(mask):
            layers.current.data[...] = np.asarray(mask, dtype=layers.current.data.dtype)
            layers.current.refresh()
            self._candidates.clear()

        if not self._refuse_if_busy():
            self._prepare("MobileSAM: segmenting volume", [], then=show, extra=propagate)

    def segment_all_objects(self) -> None:
        """Propagate every committed object through the volume at once; only empty voxels are filled."""
        try:
            layers, _, _ = self._volume_prompts()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        ids = [obj for obj, by_slice in sorted(self._object_prompts.items()) if by_slice]
        if not ids:
            self._notify("warning", "MobileSAM: commit at least one object (with its prompts) first")
            return
        from mobilesam.volume import segment_objects

        objects = [_slice_prompts(self._object_prompts[obj]) for obj in ids]
        label_of = np.array([0, *ids], dtype=np.int32)  # the core numbers objects 1..N in list order
        iou, projection = self.iou_threshold.value, self.projection.value

        def propagate(segmenter, progress, cancel):
            labels = segment_objects(segmenter.embeddings, objects, iou_threshold=iou, projection=projection,
                                     progress=progress, cancel=cancel)
            return label_of[labels]

        def show(labels):
            target = layers.objects.data
            labels = np.asarray(labels)
            free = (target == 0) & (labels > 0)
            target[free] = labels[free]
            layers.objects.refresh()

        if not self._refuse_if_busy():
            self._prepare("MobileSAM: segmenting objects through the volume", [], then=show, extra=propagate)

    def precompute_embeddings(self) -> None:
        """Encode every slice of the volume (saved to the cache folder when one is set)."""
        try:
            self._volume_prompts()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        if not self._refuse_if_busy():
            self._prepare("MobileSAM: computing volume embeddings", [],
                          then=lambda _: self._notify("info", "MobileSAM: volume embeddings ready"),
                          extra=lambda segmenter, progress, cancel: segmenter.embed_all(progress, cancel))

    # ---------------------------------------------------------------- everything
    def segment_everything(self) -> None:
        """Automatic masks for the current 2D image or slice, into '<image> everything' Labels."""
        current = self._current_image()
        if current is None:
            return
        image_layer, info = current
        z = current_slice(self.viewer, image_layer) if info.is_volume else 0
        settings = {"points_per_side": self.points_per_side.value, "pred_iou_thresh": self.everything_iou.value,
                    "stability_score_thresh": self.everything_stability.value}

        def generate(segmenter, progress, cancel):
            from mobilesam import SamAutomaticMaskGenerator
            from mobilesam.mask_outputs import records_to_label_image

            generator = SamAutomaticMaskGenerator(segmenter.predictor.model, **settings)
            records = generator.generate(segmenter.slice_rgb(z), progress=progress, cancel=cancel)
            return records_to_label_image(records, shape=info.spatial_shape[-2:])

        def show(labels):
            name = f"{image_layer.name} everything"
            layer = self.viewer.layers[name] if name in self.viewer.layers else None
            if layer is None or layer.data.shape != info.spatial_shape:
                from ._layers import _layer_transform

                layer = self.viewer.add_labels(np.zeros(info.spatial_shape, np.int32), name=name, opacity=0.5,
                                               **_layer_transform(image_layer, info.spatial_axes))
            target = layer.data[z] if info.is_volume else layer.data
            target[...] = labels
            layer.refresh()
            self._notify("info", f"MobileSAM: {len(np.unique(labels[labels > 0]))} objects found")

        if not self._refuse_if_busy():
            self._prepare("MobileSAM: segmenting everything", [], then=show, extra=generate)


def _heading(text: str) -> Label:
    return Label(value=f"<b>{text}</b>")


def _row(*widgets) -> Container:
    return Container(widgets=widgets, layout="horizontal", labels=False)


class BackendUnavailable(MobileSamError):
    """The chosen backend could not be started for a model that loaded fine (e.g. no onnxruntime)."""


def build_predictor(model_key: tuple[str, str, str], model=None):
    """A `SamPredictor` for (model type, checkpoint, backend), loading the weights unless `model` is
    given. Slow (loading, ONNX export on first use): call it in a worker thread."""
    model_type, checkpoint, backend = model_key
    if model is None:
        model = mobilesam.load_model(None if checkpoint else model_type, checkpoint or None)
    if backend == "torch":
        return mobilesam.SamPredictor(model)
    from mobilesam.onnx import default_onnx_dir

    try:
        return mobilesam.SamPredictor(model, backend=backend, onnx_dir=default_onnx_dir(model))
    except Exception as exc:  # noqa: BLE001 - any failure leaves the previous backend in use
        raise BackendUnavailable(f"the {backend} backend could not be started: {exc}") from exc


def make_segmenter(predictor, data, info, cache_dir: Optional[str], model_id: Optional[str]):
    if info.is_volume:
        return VolumeSegmenter(predictor, data, info, cache_dir=cache_dir, model_id=model_id)
    return ImageSegmenter(predictor, data, info)


def _slice_prompts(by_slice: dict[int, PlanePrompt]) -> list:
    from mobilesam.volume import SlicePrompt

    out = []
    for z, prompt in sorted(by_slice.items()):
        coords, labels = prompt.point_arrays()
        out.append(SlicePrompt(z, coords, labels, prompt.box_array()))
    return out


def _model_id(predictor, model_key: tuple[str, str]) -> Optional[str]:
    """Identity of the weights for the embedding cache. None lets the core fingerprint the model's
    weights (so a cache is never shared by different weights); a predictor without a `model`
    (a custom or stand-in one) is identified by the widget's model setting."""
    if getattr(predictor, "model", None) is not None:
        return None
    model_type, checkpoint = model_key[:2]
    return f"{model_type}-{checkpoint}" if checkpoint else model_type


def _key_handler(action: Callable[[], None]) -> Callable:
    def handler(_viewer_or_layer):
        action()
    return handler


def _configure_runtime() -> None:
    """Apply the core's performance settings (allocator) when this version of the core has them."""
    try:
        from mobilesam.runtime import configure_allocator
    except ImportError:
        return
    configure_allocator()
