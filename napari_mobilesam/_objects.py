"""The dock's 'Objects' section: undo / redo, delete object, refine an existing label, seed a
volume from it, save and resume (see `_history.py`, `_refine.py`, `_persist.py`).

The section's behaviour for undo/redo/delete is `ObjectTools`; refinement and persistence have
their own modules. Every edit of labels made here (and the widget's commit and clear) is
recorded in one `History` of the dock, so Ctrl-Z undoes the plugin's last edit whichever of its
layers is active.
"""

from contextlib import contextmanager

import numpy as np
from magicgui.widgets import ComboBox, PushButton, SpinBox
from napari.layers import Image, Labels

from ._history import Edit, History, LayerStep, Scope
from ._layers import LayerError, layer_names
from ._sections import KEYS, Section, _row

MAX_ID = 2**31 - 1


def _unwrapped(layer):
    """The layer itself: napari hands plugin widgets a proxy of the viewer, whose layers are proxies
    too (another object each time), so layers are compared by the object behind the proxy."""
    return getattr(layer, "__wrapped__", layer)


def existing_layer(layers, role: str):
    """The image's result layer `role` ("current" / "objects") if it exists, without making it:
    prompt layers that make their full-size Labels lazily have `existing(role)`."""
    existing = getattr(layers, "existing", None)
    return existing(role) if existing is not None else getattr(layers, role)


class ObjectsSection(Section):
    def __init__(self, labels_choices) -> None:
        self.object_id = SpinBox(
            label="Object id",
            value=0,
            min=0,
            max=MAX_ID,
            tooltip="The object to delete, refine or seed from; 0 = the object under the mouse "
            f"cursor (keys {KEYS['delete']}, {KEYS['refine']}: the cursor's object first)",
        )
        self.edit_layer = ComboBox(
            label="In layer",
            choices=labels_choices,
            nullable=True,
            tooltip="Any Labels layer (Cellpose, StarDist, a previous session); empty = the "
            "image's '<image> objects'",
        )
        self.delete_button = PushButton(text=f"Delete object [{KEYS['delete']}]")
        self.undo_button = PushButton(text=f"Undo [{KEYS['undo']}]")
        self.redo_button = PushButton(text=f"Redo [{KEYS['redo']}]")
        self.refine_button = PushButton(
            text=f"Refine object [{KEYS['refine']}]",
            tooltip="The object's mask becomes the prompt (box + mask); add points, then Commit "
            "replaces it in place (Clear stops)",
        )
        self.seed_button = PushButton(
            text="Seed volume from object",
            tooltip="Propagate the object through z from boxes on its first, largest and last "
            "slices; Commit replaces it in place",
        )
        self.save_button = PushButton(
            text="Save objects…",
            tooltip="Committed labels with voxel size, plus their prompts (sidecar JSON)",
        )
        self.open_button = PushButton(
            text="Open objects…", tooltip="Resume: labels and prompts of a saved session (or any label image)"
        )
        super().__init__(
            "Objects: undo, delete, refine, save",
            [
                self.object_id,
                self.edit_layer,
                _row(self.undo_button, self.redo_button),
                _row(self.delete_button, self.refine_button),
                self.seed_button,
                _row(self.save_button, self.open_button),
            ],
        )


class ObjectTools:
    """Undo / redo / delete in `widget` (a `MobileSamWidget`), and the id and layer to act on."""

    def __init__(self, widget, section: ObjectsSection) -> None:
        self.widget = widget
        self.section = section
        self.history = History()
        self._watched: dict[int, Labels] = {}  # Labels layers whose paint strokes join the history
        widget.viewer.layers.events.inserted.connect(self._on_inserted)

    # ---- what to act on
    def plugin_layer(self, layer) -> bool:
        """Whether `layer` is one of the plugin's layers of some image."""
        for image in self.widget.viewer.layers:
            if isinstance(image, Image) and layer.name in layer_names(image.name).values():
                return True
        return False

    def target_layer(self) -> Labels:
        """The Labels layer chosen in the section, else the current image's objects layer."""
        chosen = self.section.edit_layer.value
        if chosen is not None and chosen in self.widget.viewer.layers:
            return chosen
        objects = existing_layer(self.widget._prompt_layers(), "objects")
        if objects is None:
            raise LayerError("no committed objects yet: commit one, or choose a Labels layer in 'In layer'")
        return objects

    def target_id(self, layer, cursor_first: bool) -> int:
        """The id in the section's field, or (field 0, or `cursor_first` over an object) the id
        under the mouse cursor. Raises LayerError naming what is missing."""
        under = self.id_under_cursor(layer) if cursor_first or not self.section.object_id.value else 0
        chosen = under or int(self.section.object_id.value)
        if not chosen:
            raise LayerError(
                f"no object chosen: put the mouse over an object of {layer.name!r} or type its id in 'Object id'"
            )
        return chosen

    def id_under_cursor(self, layer) -> int:
        position = np.asarray(self.widget.viewer.cursor.position)[-layer.ndim :]
        index = np.round(layer.world_to_data(position)).astype(int)
        if np.any(index < 0) or np.any(index >= layer.data.shape):
            return 0
        return int(layer.data[tuple(index)])

    # ---- recording
    def scope(self, labels=(), prompts: bool = False, session: bool = True) -> Scope:
        layers = self.widget._prompt_layers()
        return Scope(
            labels=list(labels),
            prompt_layers=(layers.points, layers.boxes) if prompts else None,
            session=self.widget._session() if session else None,
        )

    @contextmanager
    def record(self, description: str, scope: Scope):
        """Record the edit made in the `with` block; then the objects layer's sidecar is updated."""
        for layer, _ in scope.labels:
            self.watch(layer)
        with self.history.record(description, scope):
            yield
        self.widget.persistence.publish()

    def watch(self, layer) -> None:
        """From now on, strokes painted on `layer` are undone in order with the plugin's edits."""
        layer = _unwrapped(layer)
        if id(layer) not in self._watched and hasattr(layer.events, "paint"):
            self._watched[id(layer)] = layer
            layer.events.paint.connect(self._on_paint)

    def _on_inserted(self, event) -> None:
        layer = event.value
        if isinstance(layer, Labels) and self.plugin_layer(layer):
            self.watch(layer)

    def _on_paint(self, event) -> None:
        layer = event.source
        self.history.push(Edit(f"paint on {layer.name}", LayerStep(layer, "undo"), LayerStep(layer, "redo")))
        self.widget.persistence.publish()

    def _managed(self, layer) -> bool:
        return self.plugin_layer(layer) or self._watched.get(id(_unwrapped(layer))) is _unwrapped(layer)

    @contextmanager
    def quiet(self):
        """Prompt layers restored by undo do not trigger segmentation (their masks come back too)."""
        muted = self.widget._muted
        self.widget._muted = True
        try:
            yield
        finally:
            self.widget._muted = muted

    # ---- actions
    def undo(self) -> None:
        """The plugin's last edit (or hand-painted stroke on a layer it edits); on a Labels layer the
        plugin never edited, napari's own undo."""
        self._step("undo")

    def redo(self) -> None:
        self._step("redo")

    def _step(self, which: str) -> None:
        widget = self.widget
        if widget._refuse_if_busy():  # a running task would write its result over the restored state
            return
        active = widget.viewer.layers.selection.active
        if isinstance(active, Labels) and not self._managed(active):
            getattr(active, which)()  # a layer the plugin never edited: napari's own history
            return
        edit = getattr(self.history, which)(
            alive=lambda layer: layer in widget.viewer.layers, quiet=self.quiet
        )
        if edit is None:
            if isinstance(active, Labels):
                getattr(active, which)()  # nothing of the plugin's: napari's paint history
                return
            widget._notify("info", f"MobileSAM: nothing to {which}")
            return
        widget.refiner.stop(quietly=True)
        widget.persistence.publish()
        widget.scores.value = "-"
        widget._notify("info", f"MobileSAM: {which}: {edit.description}")

    def delete_object(self, cursor_first: bool = False) -> None:
        """Remove the chosen object (every voxel of its id) from the chosen Labels layer; undoable."""
        from ._session import nonzero_box

        widget = self.widget
        try:
            layer = self.target_layer()
            obj = self.target_id(layer, cursor_first)
        except LayerError as exc:
            widget._notify("error", f"MobileSAM: {exc}")
            return
        data = layer.data
        box = nonzero_box(np.asarray(data) == obj)
        if box is None:
            widget._notify("warning", f"MobileSAM: {layer.name!r} has no object {obj}")
            return
        session = widget._session() if layer is existing_layer(widget._prompt_layers(), "objects") else None
        with self.record(f"delete object {obj}", Scope(labels=[(layer, box)], session=session)):
            region = data[box]
            region[region == obj] = 0
            data[box] = region  # also for arrays whose slices are copies
            if session is not None:
                session.object_prompts.pop(obj, None)
            layer.refresh()
        widget._notify("info", f"MobileSAM: deleted object {obj} from {layer.name!r} ({KEYS['undo']} undoes)")


def attach(widget):
    """Add the section to the widget's sections and wire its buttons (called once from `_build`)."""
    from ._persist import Persistence
    from ._refine import Refiner

    section = ObjectsSection(
        lambda _=None: [
            (layer.name, layer)
            for layer in widget.viewer.layers
            if isinstance(layer, Labels) and not layer.name.endswith(" current object")
        ]
    )
    widget.objects_section = section
    for name in ("object_id", "edit_layer"):
        setattr(widget, name, getattr(section, name))
    widget.sections.append(section)
    tools = ObjectTools(widget, section)
    widget.refiner = Refiner(widget, tools)
    widget.persistence = Persistence(widget, tools)
    buttons = {
        section.undo_button: tools.undo,
        section.redo_button: tools.redo,
        section.delete_button: tools.delete_object,
        section.refine_button: widget.refiner.start,
        section.seed_button: widget.refiner.seed_volume,
        section.save_button: widget.persistence.save_dialog,
        section.open_button: widget.persistence.open_dialog,
    }
    for button, action in buttons.items():
        button.changed.connect(lambda _=None, action=action: action())
    events = widget.viewer.layers.events
    for event in (events.inserted, events.removed):
        event.connect(lambda _=None: section.edit_layer.reset_choices())
    section.edit_layer.reset_choices()
    section.edit_layer.value = None
    return tools
