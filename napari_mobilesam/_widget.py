"""The MobileSAM dock widget: prompts in napari layers -> masks from the core, one session per image.

Layout (`_sections.py`): model, image and embeddings, prompts, volume tools (shown for volumes
only), segment everything, and an always-visible status line with progress bar and Cancel, all in
a scroll area with collapsible sections. State per image lives in `_session.py` (Qt-free): switching
images swaps sessions, so every mask comes from the embedding of the image it is drawn on.

Slow work (loading the model, encoding, propagation, automatic masks, full-size masks of huge
images) runs in a napari thread worker (`BackgroundTask`); decoding prompts of ordinary images is
fast and runs here. The widget holds no model logic: `ImageSegmenter`/`VolumeSegmenter` wrap the
core's predictor and volume embeddings.
"""

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import Container
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from mobilesam.errors import Cancelled, MissingWeightsError, MobileSamError
from mobilesam.image import MAX_PIXELS
from mobilesam.serving.backend import BACKENDS
from mobilesam.volume import DEFAULT_IOU_THRESHOLD, DEFAULT_PROJECTION, PROJECTIONS

from ._actions import current_shortcut, register_actions
from ._ais import attach as attach_automatic_segmentation
from ._layers import (
    NEGATIVE,
    POSITIVE,
    LayerError,
    PromptLayers,
    current_slice,
    describe_image,
    ensure_prompt_layers,
    layer_names,
    read_boxes,
    read_points,
    remove_prompt_layers,
    set_point_label_mode,
    sync_transform,
)
from ._model import BackendUnavailable, build_predictor, default_cache_dir, make_segmenter, slice_prompts
from ._objects import attach as attach_object_tools
from ._objects import existing_layer
from ._prompts import GroupedPrompts, group_prompts
from ._sections import (
    EverythingSection,
    ImageSection,
    ModelSection,
    PromptSection,
    StatusSection,
    VolumeSection,
    backend_default,
    encoder_arithmetic,
)
from ._session import ImageSession, SegmenterKey, Sessions, next_candidate, nonzero_box, pick_candidate
from ._tasks import BackgroundTask, cancel_checks_inside
from ._tiled import (
    describe_tiling,
    embed_all_tiled,
    level0,
    segment_everything_in_tiles,
    segment_tiled,
    tiling_for,
)

logger = logging.getLogger(__name__)

BACKGROUND_DECODE_PIXELS = 1 << 22  # slices larger than 4 MP get their full-size masks in a worker
DEFAULT_POINTS_PER_SIDE = 16  # segment everything: 256 prompts, about a minute on 2 CPU cores for vit_t
SECONDS_PER_PROMPT_CPU = 0.15  # rough vit_t decoder cost per grid point on a 2-core CPU, for the estimate


class MobileSamWidget(Container):
    """Interactive MobileSAM segmentation of the selected Image layer (2D, RGB or 3D)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.messages: list[tuple[str, str]] = []  # (level, text) of every notification, newest last
        self.sessions = Sessions()
        self._predictor = None
        self._model_key = None
        self._layers: PromptLayers | None = None
        self._layers_of = None  # the image layer `_layers` belong to
        self._task: BackgroundTask | None = None
        self._pending_segment = False
        self._muted = False  # while the widget itself edits prompt layers

        self._build()
        self._bind_keys()
        self.viewer.mouse_drag_callbacks.append(self._hint_on_image_click)
        _configure_runtime()
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_selection)
        self.image.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]
        self._on_image_changed()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.model_section = ModelSection(BACKENDS)
        self.image_section = ImageSection(self._image_choices)
        self.prompt_section = PromptSection()
        self.volume_section = VolumeSection(DEFAULT_IOU_THRESHOLD, PROJECTIONS, DEFAULT_PROJECTION)
        self.everything_section = EverythingSection(DEFAULT_POINTS_PER_SIDE)
        self.status_section = StatusSection()
        # Every section widget is also an attribute of the dock (widget.checkpoint, widget.image, ...).
        for section in (
            self.model_section,
            self.image_section,
            self.prompt_section,
            self.volume_section,
            self.everything_section,
            self.status_section,
        ):
            for name, value in vars(section).items():
                if (
                    not name.startswith("_")
                    and name not in ("body", "header", "title")
                    and hasattr(value, "native")
                ):
                    setattr(self, name, value)
        # The sections scroll; the status line, progress bar and Cancel stay in view below them.
        self.sections = Container(
            widgets=[
                self.model_section,
                self.image_section,
                self.prompt_section,
                self.volume_section,
                self.everything_section,
            ],
            labels=False,
        )
        self.automatic = attach_automatic_segmentation(self)  # 'Segment automatically' (micro-sam models)
        self.object_tools = attach_object_tools(self)  # undo/redo, delete, refine, save/open (_objects.py)
        self.extend([self.sections, self.status_section])
        _scroll_area_around(self.native.layout(), self.sections)
        self.native.setMinimumWidth(300)

        backend, warning = backend_default()
        self.backend.value = backend
        if warning:
            self._notify("warning", f"MobileSAM: {warning}")
        self.image.changed.connect(self._on_image_changed)
        self.channels.changed.connect(self._on_channels_changed)
        for widget in (self.model_type, self.checkpoint, self.backend):
            widget.changed.connect(self._on_model_changed)
        self.candidate.changed.connect(self._repaint_candidates)
        self.points_per_side.changed.connect(self._update_estimate)
        self.tile_large.changed.connect(self._on_tiling_changed)
        self.tile_size.changed.connect(self._on_tiling_changed)
        buttons = {
            self.segment_button: self.segment_prompts,
            self.toggle_button: self.toggle_point_label,
            self.commit_button: self.commit,
            self.clear_button: self.clear,
            self.volume_button: self.segment_volume,
            self.all_objects_button: self.segment_all_objects,
            self.embed_button: self.compute_embeddings,
            self.everything_button: self.segment_everything,
            self.cancel_button: self.cancel,
        }
        for button, action in buttons.items():
            button.changed.connect(lambda _=None, action=action: action())
        self._show_weights()
        self._update_estimate()

    def key_actions(self) -> dict[str, Callable[[], None]]:
        return {
            "segment": self.segment_prompts,
            "volume": self.segment_volume,
            "commit": self.commit,
            "clear": self.clear,
            "toggle": self.toggle_point_label,
            "candidate": self.next_candidate,
            "undo": self.object_tools.undo,
            "redo": self.object_tools.redo,
            "delete": lambda: self.object_tools.delete_object(cursor_first=True),
            "refine": lambda: self.refiner.start(cursor_first=True),
        }

    def _bind_keys(self) -> None:
        # Listed in napari's Preferences ▸ Shortcuts as actions; the keys bound here are theirs.
        register_actions(self.viewer, self)
        self._key_actions = {current_shortcut(name): action for name, action in self.key_actions().items()}
        for key, action in self._key_actions.items():
            self.viewer.bind_key(key, _key_handler(action), overwrite=True)
        for layer in self.viewer.layers:
            self._bind_layer_keys(layer)

    def rebind_keys(self) -> None:
        """After a shortcut changed in Preferences: drop the old keys, bind the current ones."""
        if not hasattr(self, "_key_actions"):
            return  # still binding for the first time (registering the actions changes shortcuts)
        for key in self._key_actions:
            self.viewer.bind_key(key, None)
            for layer in self.viewer.layers:
                layer.bind_key(key, None)
        self._bind_keys()

    def _bind_layer_keys(self, layer) -> None:
        # The active layer's keymap is searched before the viewer's (e.g. C = auto-contrast on
        # images, M = new label on Labels), so every layer carries the plugin's keys.
        for key, action in self._key_actions.items():
            layer.bind_key(key, _key_handler(action), overwrite=True)

    # ---------------------------------------------------------------- messages
    def _notify(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        if level != "info" or not self.busy:  # a running task's line is not overwritten by info
            self.status.value = text
        {"info": show_info, "warning": show_warning, "error": show_error}[level](text)

    def _report_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._notify("info", f"MobileSAM: cancelled ({exc})")
        elif isinstance(exc, MissingWeightsError):
            self._notify(
                "error",
                "MobileSAM: no model weights. Choose a checkpoint file in 'Checkpoint' "
                f"(Model section), or: {exc}",
            )
        elif isinstance(exc, (MobileSamError, ValueError, LayerError)):
            self._notify("error", f"MobileSAM: {_without_unsafe_advice(str(exc))}")
        else:
            logger.error("MobileSAM task failed", exc_info=(type(exc), exc, exc.__traceback__))
            self._notify(
                "error", f"MobileSAM failed: {type(exc).__name__}: {_without_unsafe_advice(str(exc))}"
            )

    # ---------------------------------------------------------------- image and layers
    def _image_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self._bind_layer_keys(layer)
        self.image.reset_choices()
        if isinstance(layer, Image):
            self.image.value = layer  # a newly opened image is the one the user wants to work on

    def _hint_on_image_click(self, viewer, event) -> None:
        """A click with an image layer active adds nothing: say where prompts go (no pop-up)."""
        layer = viewer.layers.selection.active
        if isinstance(layer, Image) and event.type == "mouse_press":
            self.status.value = (
                f"Clicks on the image layer {layer.name!r} add no prompts: select "
                f"'{layer.name} prompts' (points) or '{layer.name} boxes' in the layer list"
            )

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if isinstance(layer, Image):
            session = self.sessions.drop(layer)
            if session is not None:
                self._remove_plugin_layers_of(layer)
            if self._layers_of is layer:
                self._layers = self._layers_of = None
        elif self._layers is not None and layer in self._layers.points_and_boxes():
            self._layers = None  # recreated (empty) when next needed; result layers are looked up anew
        self.image.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    def _remove_plugin_layers_of(self, image_layer) -> None:
        """The image is gone: its prompt layers go too; committed objects are kept (and said so)."""
        kept = remove_prompt_layers(self.viewer, image_layer.name)
        if kept:
            self._notify(
                "info",
                f"MobileSAM: image {image_layer.name!r} removed; its committed objects stay in {kept!r}",
            )

    def _on_selection(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and active is not self.image.value and not self._muted:
            self.image.value = active

    def _on_image_changed(self, _value=None) -> None:
        self._layers = self._layers_of = None
        self.refiner.stop(quietly=True)
        layer = self.image.value
        self._show_reading()
        if layer is None:
            return
        session = self._session()
        self._show_session(session)
        try:
            self._prompt_layers()
        except LayerError as exc:
            self._notify("warning", f"MobileSAM: {exc}")

    def _on_channels_changed(self, _value=None) -> None:
        session = self._session()
        if session is not None:
            session.drop_segmenter()  # the image is read differently: other embeddings
        self._on_image_changed()

    def _session(self) -> ImageSession | None:
        layer = self.image.value
        if layer is None:
            return None
        return self.sessions.get(layer, lambda: layer.name)

    def _show_session(self, session: ImageSession) -> None:
        self.point_mode.value = session.point_label
        self.scores.value = "-"

    def _show_reading(self) -> None:
        """Say how the image is read (and hide the volume tools for 2D images)."""
        layer = self.image.value
        if layer is None:
            self.reading.value = "-"
            self.volume_section.visible = False
            return
        try:
            info = self._describe(layer)
        except LayerError as exc:
            self.reading.value = str(exc)
            self.volume_section.visible = False
            return
        shape = " × ".join(str(s) for s in info.spatial_shape)
        if info.is_volume:
            text = f"volume of {info.spatial_shape[0]} slices ({shape})"
            if info.spatial_shape[0] <= 5:
                text += "; if these are channels, choose 'first axis is channels'"
        elif info.channel_axis is not None:
            text = f"2D image {shape}, {level0(layer).shape[info.channel_axis]} channels"
        else:
            text = f"2D image {shape}"
        self.reading.value = text
        self.volume_section.visible = info.is_volume
        self.tiling.value = describe_tiling(info, self._tiling(info), self.tile_large.value)

    def _tiling(self, info):
        """The tiling for this image (large 2-D images, unless switched off in the dock), or None."""
        return tiling_for(info, self.tile_large.value, self.tile_size.value)

    def _on_tiling_changed(self, _value=None) -> None:
        self.tile_size.enabled = self.tile_large.value
        self._show_reading()
        self._on_model_changed()  # masks on screen came from the other tiling: segment again

    def _image_layer(self):
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            active = self.viewer.layers.selection.active
            if active is not None and not isinstance(active, Image):
                raise LayerError(
                    f"MobileSAM segments Image layers, and the selected layer {active.name!r} "
                    f"is a {active.__class__.__name__} layer; add or open an image first"
                )
            raise LayerError("no image layer: open or add an image, then choose it in the MobileSAM widget")
        return layer

    def _describe(self, image_layer):
        info = describe_image(image_layer, self.channels.value)
        height, width = info.spatial_shape[-2:]
        if height * width > MAX_PIXELS:  # refused before any layer is allocated
            raise LayerError(
                f"image {image_layer.name!r} has slices of {height} × {width} pixels, more than the "
                f"{MAX_PIXELS:,} pixel limit; crop or downsample it (napari: Layers > Transform)"
            )
        return info

    def _prompt_layers(self) -> PromptLayers:
        image_layer = self._image_layer()
        if self._layers is None or self._layers_of is not image_layer:
            info = self._describe(image_layer)
            self._muted = True
            try:
                self._layers = ensure_prompt_layers(self.viewer, image_layer, info, self._reselect_later)
            finally:
                self._muted = False
            self._layers_of = image_layer
            layers = self._layers
            for event in (layers.points.events.data, layers.points.events.features, layers.boxes.events.data):
                _connect_once(event, self._on_prompts_changed)
            _connect_once(image_layer.events.scale, self._on_image_transform)
            _connect_once(image_layer.events.translate, self._on_image_transform)
            set_point_label_mode(layers.points, self._session().point_label)
            # Clicking should add points right away; deferred because napari selects a newly
            # inserted layer after its insertion events have run.
            QTimer.singleShot(0, self._activate_points)
        return self._layers

    def _reselect_later(self, layer) -> None:
        """Give `layer` the selection back once napari's layer list has selected a new result layer."""

        def reselect() -> None:
            if layer in self.viewer.layers:
                self._muted = True
                try:
                    self.viewer.layers.selection.active = layer
                finally:
                    self._muted = False

        QTimer.singleShot(0, reselect)

    def _on_image_transform(self, event=None) -> None:
        image_layer = getattr(event, "source", None) or self.image.value
        try:
            info = self._describe(image_layer)
        except LayerError:
            return
        sync_transform(self.viewer, image_layer, info)

    def _activate_points(self) -> None:
        if self._layers is not None and self._layers.points in self.viewer.layers:
            self._muted = True
            try:
                self.viewer.layers.selection.active = self._layers.points
            finally:
                self._muted = False

    # ---------------------------------------------------------------- model and embeddings
    def _wanted_model_key(self) -> tuple[str, str, str]:
        """(model type, checkpoint path or "", backend)."""
        path = str(self.checkpoint.value) if self.checkpoint.value else ""
        if path in ("", ".") or Path(path).is_dir():  # an emptied file field reads as the current folder
            path = ""
        return self.model_type.value, path, self.backend.value

    def _show_weights(self) -> None:
        """Which weights file will be used, whether the Model choice matters, and the encoder's
        arithmetic."""
        self.arithmetic.value = encoder_arithmetic(*self._wanted_model_key())
        model_type, path, _ = self._wanted_model_key()
        self.model_type.enabled = not path
        if path:
            self.weights.value = f"{Path(path).name} (architecture read from the file)"
            return
        env = os.environ.get("MOBILESAM_CHECKPOINT")
        if env:
            self.weights.value = f"{Path(env).name} from $MOBILESAM_CHECKPOINT"
            return
        from mobilesam.weights import cached_path

        try:
            cached = cached_path(model_type)
        except (KeyError, ValueError):
            self.weights.value = f"official {model_type} weights"
            return
        self.weights.value = f"{cached}" + ("" if cached.is_file() else " (downloaded on first use)")

    def use_predictor(self, predictor) -> None:
        """Use this predictor (e.g. one already built, or a stand-in) for the current model setting."""
        self._predictor = predictor
        self._model_key = self._wanted_model_key()
        for session in self._all_sessions():
            session.drop_segmenter()

    def _all_sessions(self):
        return [
            self.sessions.get(layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer in self.sessions
        ]

    @property
    def _segmenter(self):
        """The current image's segmenter (its embeddings), or None."""
        session = self._session()
        return session.segmenter if session is not None else None

    def _on_model_changed(self, _value=None) -> None:
        self._show_weights()
        # Masks on screen came from the previous model: segment the prompts again with the new one.
        session = self._session()
        if session is not None:
            session.forget_masks()
        if self.auto_segment.value and self._layers is not None:
            self.segment_prompts()

    def _cache_dir(self, info) -> str | None:
        chosen = (
            str(self.cache_dir.value) if self.cache_dir.value and str(self.cache_dir.value) != "." else ""
        )
        # Without a chosen folder, embeddings (2D and volumes) are persisted in the default one.
        return chosen or str(default_cache_dir())

    def _current_image(self):
        """(image layer, its description), or None after telling the user why there is none."""
        try:
            image_layer = self._image_layer()
            return image_layer, self._describe(image_layer)
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return None

    def _prepare(
        self,
        description: str,
        slices: list[int],
        then: Callable,
        extra: Callable | None = None,
    ) -> None:
        """In a worker: load the model, build the image's segmenter, encode `slices`, run
        `extra(segmenter, progress, cancel)`; then call `then(result_of_extra)` in the GUI thread."""
        current = self._current_image()
        if current is None:
            return
        image_layer, info = current
        session = self._session()
        model_key = self._wanted_model_key()
        key = SegmenterKey(model_key, info, self._cache_dir(info))
        data = level0(image_layer)
        predictor = self._predictor if self._model_key == model_key else None
        segmenter = session.segmenter_for(key, data) if predictor is not None else None
        # Only the backend changed: the loaded weights serve the new predictor too.
        same_weights = self._model_key is not None and self._model_key[:2] == model_key[:2]
        model = getattr(self._predictor, "model", None) if same_weights else None
        if predictor is None and model_key[2] == "onnx":
            description += " (ONNX Runtime; the first use exports the model)"

        def work(progress, cancel):
            nonlocal predictor, segmenter
            if predictor is None:
                predictor = build_predictor(model_key, model)
            if segmenter is None:
                segmenter = make_segmenter(predictor, data, info, key.cache_dir, model_key)
            segmenter.compute_embeddings(slices, progress=progress, cancel=cancel)
            result = extra(segmenter, progress, cancel) if extra is not None else None
            return predictor, segmenter, result

        def done(outcome):
            predictor_, segmenter_, result = outcome
            if self._predictor is not predictor_:
                for other in self._all_sessions():  # their embeddings belong to the old predictor's model
                    if other is not session:
                        other.drop_segmenter()
            self._predictor, self._model_key = predictor_, model_key
            session.use_segmenter(segmenter_, key, data)
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

        self._start_task(
            BackgroundTask(work, description, on_done=done, on_error=failed, on_progress=self._show_progress)
        )

    def _restore_backend(self) -> None:
        """Go back to the backend of the last working predictor (torch if none worked yet); its
        prompts are segmented again by the model-change handler."""
        previous = self._model_key[2] if self._model_key is not None else "torch"
        if self.backend.value != previous:
            self._notify("info", f"MobileSAM: backend set back to {previous}")
            self.backend.value = previous

    # ---------------------------------------------------------------- tasks
    def _start_task(self, task: BackgroundTask) -> None:
        self._task = task
        self.status.value = f"{task.description}…"
        self.progress.value, self.progress.max = 0, 0  # busy indicator until the first report
        self.progress.visible = True
        self.cancel_button.enabled = True
        task.start()

    def _show_progress(self, done: int, total: int) -> None:
        if self._task is None:
            return
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)
        percent = 100 * done // max(total, 1)
        self.status.value = f"{self._task.description}… {done}/{total} ({percent}%)"

    def _end_task(self) -> None:
        description = self._task.description if self._task is not None else ""
        self._task = None
        self.progress.visible = False
        self.cancel_button.enabled = False
        self.status.value = f"done: {description[len('MobileSAM: ') :]}" if description else "ready"

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

    def compute_embeddings(self) -> None:
        """Encode the selected image now (every slice of a volume), with progress and Cancel."""
        current = self._current_image()
        if current is None or self._refuse_if_busy():
            return
        image_layer, info = current
        tiling = self._tiling(info)
        if tiling is not None:
            embed_all_tiled(self, image_layer, info, self._session(), tiling)
            return
        slices = list(range(info.spatial_shape[0])) if info.is_volume else [0]
        self._prepare(
            "MobileSAM: computing embeddings",
            slices,
            then=lambda _: self._notify("info", "MobileSAM: embeddings ready; click to segment"),
        )

    precompute_embeddings = compute_embeddings  # the name used before the explicit embeddings step

    # ---------------------------------------------------------------- prompting
    def _grouped_prompts(self, layers: PromptLayers, image_layer) -> GroupedPrompts:
        info = self._describe(image_layer)
        coords, labels = read_points(layers.points, image_layer, info)
        grouped = group_prompts(
            coords, labels, read_boxes(layers.boxes, image_layer, info), info.spatial_shape
        )
        if grouped.outside:
            self._notify(
                "warning",
                f"MobileSAM: {grouped.outside} prompt(s) outside the image "
                f"{image_layer.name!r} were ignored (they are kept in the layer)",
            )
        return grouped

    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "") or "")
        if self._muted or action.endswith("ing"):  # adding/changing/removing: wait for the final event
            return
        source = getattr(event, "source", None)
        if self._layers is not None and source is not None and source not in self._layers.all():
            return  # prompts of another image: segmented when the user works on it again
        if getattr(source, "_is_creating", False):
            # A box being drawn: napari announces it at the press and again, complete, at the
            # release (while still flagged as drawing), so look again once the event is over.
            QTimer.singleShot(0, lambda: self._segment_when_drawn(source))
            return
        if self.auto_segment.value:
            self.segment_prompts()

    def _segment_when_drawn(self, shapes) -> None:
        if not getattr(shapes, "_is_creating", False) and self.auto_segment.value:
            self.segment_prompts()

    def segment_prompts(self) -> None:
        """Segment every slice whose prompts changed since it was last segmented."""
        if self._task is not None:
            self._pending_segment = True  # after the running task; the predictor is in use
            return
        if self.refiner.refining:  # clicks refine an existing object (_refine.py)
            self.refiner.segment()
            return
        try:
            layers = self._prompt_layers()
            image_layer = self._image_layer()
            info = self._describe(image_layer)
            grouped = self._grouped_prompts(layers, image_layer)
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        session = self._session()
        tiling = self._tiling(info)
        if tiling is not None:
            segment_tiled(self, layers, image_layer, info, grouped, session, tiling)
            return
        ready = self._predictor is not None and self._model_key == self._wanted_model_key()
        key = SegmenterKey(self._wanted_model_key(), info, self._cache_dir(info))
        segmenter = session.segmenter_for(key, level0(image_layer)) if ready else None
        if segmenter is None:
            session.forget_masks()  # nothing shown came from this image's current embeddings
        if not session.changed_slices(grouped):
            return
        if segmenter is None or session.missing_embeddings(grouped, segmenter):
            missing = session.missing_embeddings(grouped, segmenter)
            self._prepare(
                "MobileSAM: computing image embedding", missing, then=lambda _: self.segment_prompts()
            )
            return
        choice = self.candidate.value
        height, width = info.spatial_shape[-2:]
        if height * width > BACKGROUND_DECODE_PIXELS:  # full-size masks of huge slices: off the GUI thread
            self._start_task(
                BackgroundTask(
                    lambda progress, cancel: session.segment(grouped, choice),
                    "MobileSAM: segmenting",
                    on_done=lambda shown: self._finish_segment(layers, session, shown),
                    on_error=self._on_segment_error,
                )
            )
            return
        try:
            shown = session.segment(grouped, choice)
        except (MobileSamError, ValueError, RuntimeError) as exc:
            self._report_error(exc)
            return
        self._show_masks(layers, session, shown)

    def _finish_segment(self, layers, session, shown) -> None:
        self._end_task()
        if layers is self._layers:
            self._show_masks(layers, session, shown)
        self._run_pending()

    def _on_segment_error(self, exc) -> None:
        self._end_task()
        self._report_error(exc)

    def _show_masks(self, layers: PromptLayers, session: ImageSession, shown: dict) -> None:
        for z, labels in shown.items():
            self._paint(layers, z, labels)
        self._show_scores(session)
        current = layers.existing("current")
        if current is not None:
            current.refresh()

    def _show_scores(self, session: ImageSession) -> None:
        if not session.candidates:
            self.scores.value = "-"
            return
        masks, scores = session.candidates[max(session.candidates)]
        index = pick_candidate((masks, scores), self.candidate.value)
        self.scores.value = " / ".join(("[%.2f]" if i == index else "%.2f") % s for i, s in enumerate(scores))

    def _paint(self, layers: PromptLayers, z: int, labels: np.ndarray | None) -> None:
        """Show slice z's labels; the current-object layer is made by the first mask, not by erasing."""
        current = layers.current if labels is not None else layers.existing("current")
        if current is None:
            return
        target = current.data if current.ndim == 2 else current.data[z]
        target[...] = 0 if labels is None else labels.astype(target.dtype)

    def _repaint_candidates(self, _value=None) -> None:
        session = self._session()
        if self._layers is None or session is None or not session.candidates:
            return
        for z in session.candidates:
            self._paint(self._layers, z, session.labels(z, self.candidate.value))
        self._show_scores(session)
        self._layers.current.refresh()

    def next_candidate(self) -> None:
        """best -> 1 -> 2 -> 3 -> best."""
        self.candidate.value = next_candidate(self.candidate.value)

    def toggle_point_label(self) -> None:
        """Switch whether new points are positive or negative."""
        try:
            points = self._prompt_layers().points
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        session = self._session()
        session.point_label = NEGATIVE if session.point_label == POSITIVE else POSITIVE
        set_point_label_mode(points, session.point_label)
        self.point_mode.value = session.point_label

    def commit(self) -> None:
        """Add the current object(s) to the committed Labels with new ids, then clear the prompts."""
        if self.refiner.target is not None:  # replace the refined / seeded object in place instead
            self.refiner.commit()
            return
        try:
            layers = self._prompt_layers()
            image_layer = self._image_layer()
            grouped = self._grouped_prompts(layers, image_layer)
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        current_layer = layers.existing("current")
        current = np.asarray(current_layer.data) if current_layer is not None else np.zeros(0)
        if not current.any():
            self._notify("info", "MobileSAM: nothing to commit (the current object is empty)")
            return
        session = self._session()
        box = nonzero_box(current)
        scope = self.object_tools.scope(labels=[(layers.objects, box), (layers.current, box)], prompts=True)
        with self.object_tools.record("commit", scope):
            new_ids = session.commit(current, layers.objects.data, grouped)
            layers.objects.refresh()
            self._clear_prompts(layers)
        set_point_label_mode(layers.points, session.point_label)
        self.point_mode.value = session.point_label
        ids = ", ".join(str(i) for i in new_ids) or "none (already covered by committed objects)"
        self._notify("info", f"MobileSAM: committed object {ids}; click the next object")

    def clear(self) -> None:
        """Remove all prompts and the current object (and stop refining an object)."""
        try:
            layers = self._prompt_layers()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        self.refiner.stop()
        current = existing_layer(layers, "current")
        box = nonzero_box(np.asarray(current.data)) if current is not None else None
        if box is None and not len(layers.points.data) and not len(layers.boxes.data):
            self._session().forget_masks()
            return  # nothing to clear (and nothing to undo)
        edited = [(current, box)] if current is not None else []
        with self.object_tools.record("clear", self.object_tools.scope(edited, prompts=True)):
            self._clear_prompts(layers)

    def _clear_prompts(self, layers: PromptLayers) -> None:
        self._muted = True
        try:
            layers.points.data = np.empty((0, layers.points.ndim))
            layers.boxes.data = []
            current = layers.existing("current")
            if current is not None:
                current.data[...] = 0
                current.refresh()
        finally:
            self._muted = False
        self._session().forget_masks()
        self.scores.value = "-"

    # ---------------------------------------------------------------- volumes
    def _volume_prompts(self):
        layers = self._prompt_layers()
        image_layer = self._image_layer()
        if not self._describe(image_layer).is_volume:
            raise LayerError(
                f"{image_layer.name!r} is a 2D image; volume segmentation needs a (Z, Y, X) layer"
            )
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

        prompts = slice_prompts(grouped.by_slice)
        iou, projection = self.iou_threshold.value, self.projection.value
        session = self._session()

        def propagate(segmenter, progress, cancel):
            return propagate_object(
                segmenter.embeddings,
                prompts,
                iou_threshold=iou,
                projection=projection,
                progress=progress,
                cancel=cancel,
            )

        held = [layers.existing("current")]

        def show(mask):
            current = self._live_layers(layers, held=held).current
            current.data[...] = np.asarray(mask, dtype=current.data.dtype)
            current.refresh()
            session.candidates.clear()

        if not self._refuse_if_busy():
            self._prepare("MobileSAM: segmenting volume", [], then=show, extra=propagate)

    def segment_all_objects(self) -> None:
        """Propagate every committed object through the volume at once; only empty voxels are filled."""
        try:
            layers, image_layer, _ = self._volume_prompts()
        except LayerError as exc:
            self._notify("error", f"MobileSAM: {exc}")
            return
        session = self._session()
        objects_layer = layers.existing("objects")
        ids = session.committed_with_prompts(np.asarray(objects_layer.data)) if objects_layer else []
        if not ids:
            self._notify("warning", "MobileSAM: commit at least one object (with its prompts) first")
            return
        from mobilesam.volume import segment_objects

        objects = [slice_prompts(session.object_prompts[obj]) for obj in ids]
        label_of = np.array([0, *ids], dtype=np.int32)  # the core numbers objects 1..N in list order
        iou, projection = self.iou_threshold.value, self.projection.value

        def propagate(segmenter, progress, cancel):
            labels = segment_objects(
                segmenter.embeddings,
                objects,
                iou_threshold=iou,
                projection=projection,
                progress=progress,
                cancel=cancel,
            )
            return label_of[labels]

        def show(labels):
            target_layer = self._live_layers(layers, image_layer, held=[objects_layer]).objects
            target = target_layer.data
            labels = np.asarray(labels)
            free = (target == 0) & (labels > 0)
            scope = self.object_tools.scope(labels=[(target_layer, nonzero_box(free))])
            with self.object_tools.record("all objects", scope):  # undoable like a commit
                target[free] = labels[free]
                target_layer.refresh()

        if not self._refuse_if_busy():
            self._prepare("MobileSAM: segmenting objects through the volume", [], then=show, extra=propagate)

    def _live_layers(self, layers: PromptLayers, image_layer=None, held=()) -> PromptLayers:
        """`layers` if they and the result layers `held` when the task started are all still in the
        viewer; else the image's layers found or made again (and said so), so a result is never
        written into a layer the user removed meanwhile."""
        missing = [
            layer.name
            for layer in (*layers.points_and_boxes(), *held)
            if layer is not None and layer not in self.viewer.layers
        ]
        if not missing:
            return layers
        image_layer = image_layer or self._image_layer()
        names = layer_names(image_layer.name)
        self._notify(
            "warning",
            f"MobileSAM: layer(s) {', '.join(missing)} were removed while working; "
            f"the result is in new layers named {names['objects']!r} etc.",
        )
        self._layers = None
        return ensure_prompt_layers(
            self.viewer, image_layer, self._describe(image_layer), self._reselect_later
        )

    # ---------------------------------------------------------------- everything
    def _update_estimate(self, _value=None) -> None:
        prompts = self.points_per_side.value**2
        seconds = prompts * SECONDS_PER_PROMPT_CPU
        self.estimate.value = (
            f"{prompts} prompts, roughly {seconds / 60:.1f} min on a 2-core CPU (Cancel stops it)"
        )

    def segment_everything(self) -> None:
        """Automatic masks for the current 2D image or slice, into '<image> everything' Labels."""
        current = self._current_image()
        if current is None or self._refuse_if_busy():
            return
        image_layer, info = current
        z = current_slice(self.viewer, image_layer) if info.is_volume else 0
        # The core checks Cancel between decoder batches; a batch of 8 still took 2-4 s on a loaded
        # 2-core machine, so the model also checks it before each layer (`cancel_checks_inside`).
        settings = {
            "points_per_side": self.points_per_side.value,
            "points_per_batch": 8,
            "pred_iou_thresh": self.everything_iou.value,
            "stability_score_thresh": self.everything_stability.value,
        }

        def generate(segmenter, progress, cancel):
            from mobilesam import SamAutomaticMaskGenerator
            from mobilesam.mask_outputs import records_to_label_image

            generator = SamAutomaticMaskGenerator(segmenter.predictor.model, **settings)
            # The embedding computed (or cached) for the plugin: nothing is encoded twice, and
            # Cancel is honoured from the first batch on.
            with cancel_checks_inside(generator.predictor.model, cancel, "segment everything"):
                records = generator.generate(
                    segmenter.slice_rgb(z),
                    progress=progress,
                    cancel=cancel,
                    embedding=segmenter.embeddings.get(z),
                )
            return records_to_label_image(records, shape=info.spatial_shape[-2:])

        def show(labels):
            self._show_slice_labels(image_layer, info, z, labels, "everything")

        tiling = self._tiling(info)
        if tiling is not None:  # a large image: per tile, from the tile embeddings prompts use too
            segment_everything_in_tiles(self, image_layer, info, self._session(), tiling, settings, show)
            return
        self._prepare(
            "MobileSAM: segmenting everything", [0] if not info.is_volume else [z], then=show, extra=generate
        )

    def _show_slice_labels(self, image_layer, info, z: int, labels: np.ndarray, suffix: str) -> None:
        """Write `labels` of slice z (or of the 2D image) into the '<image> <suffix>' Labels layer,
        made with the image's scale/translate if missing; other slices keep their labels."""
        name = f"{image_layer.name} {suffix}"
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or layer.data.shape != info.spatial_shape:
            from ._layers import _layer_transform

            self._muted = True  # the new layer must not take the clicks away from the prompts
            try:
                layer = self.viewer.add_labels(
                    np.zeros(info.spatial_shape, np.int32),
                    name=name,
                    opacity=0.5,
                    **_layer_transform(image_layer, info.spatial_axes),
                )
            finally:
                self._muted = False
        target = layer.data[z] if info.is_volume else layer.data
        target[...] = labels
        layer.refresh()
        QTimer.singleShot(0, self._activate_points)
        self._notify("info", f"MobileSAM: {len(np.unique(labels[labels > 0]))} objects found")


def _scroll_area_around(layout, container) -> None:
    """Put `container` (already in `layout`) inside a vertical scroll area that takes the height.
    Made here rather than with magicgui's `scrollable=True`, whose scroll area is lost when the
    container is nested in another one."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    inner = container.native
    index = layout.indexOf(inner)
    layout.removeWidget(inner)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    layout.insertWidget(index, scroll, 1)


def _connect_once(emitter, callback) -> None:
    emitter.disconnect(callback)
    emitter.connect(callback)


def _without_unsafe_advice(text: str) -> str:
    """Drop any clause about `weights_only` (torch suggests re-running with weights_only=False, and
    loading an untrusted pickle that way runs its code: never pass that advice on)."""
    text = re.sub(r"\s*\([^()]*weights_only[^()]*\)", " (torch's safe loader refused it)", text)
    return re.sub(r"[^.()]*weights_only.*?(trusted source\.|$)", "", text)


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
