"""The dock's sections: thin groups of magicgui widgets, each collapsible, no behaviour of their own.

`MobileSamWidget` (in `_widget.py`) builds one of each and wires their buttons to its actions;
the state behind them lives in `_session.py`. Each section's widgets are attributes of the
section object, so the widget reads e.g. `self.model.checkpoint.value`.
"""

import os

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from mobilesam.model_zoo import MODEL_TYPES
from mobilesam.serving.backend import BACKEND_ENV  # the Backend choice's initial value, as for Label Studio

from ._layers import CHANNEL_CHOICES, POSITIVE
from ._session import CANDIDATES

# micro-sam's annotator keys where it has them (its users switch to us), bound on the viewer and
# on every layer so the active layer's own bindings never swallow them.
KEYS = {
    "segment": "S",
    "volume": "Shift-S",
    "commit": "C",
    "clear": "Shift-C",
    "toggle": "T",
    "candidate": "M",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
    "delete": "Shift-D",
    "refine": "Shift-R",
}
KEY_TABLE = (
    ("segment", "segment the prompts now"),
    ("volume", "segment the volume (propagate the current object through z)"),
    ("commit", "commit the current object(s) with new label ids"),
    ("clear", "clear prompts and the current object"),
    ("toggle", "new points positive / negative"),
    ("candidate", "next mask candidate: best → 1 → 2 → 3 → best"),
    ("undo", "undo the last commit, clear, delete, refine or open"),
    ("redo", "redo what was undone"),
    ("delete", "delete the object under the cursor (or the 'Object id')"),
    ("refine", "refine the object under the cursor (or the 'Object id') with points"),
)
KEY_HELP = "\n".join(f"{KEYS[name]}: {text}" for name, text in KEY_TABLE)


class Section(Container):
    """A heading button that folds its body away (the dock fits small screens), then the body."""

    def __init__(self, title: str, widgets, collapsed: bool = False) -> None:
        self.title = title
        self.body = Container(widgets=widgets, labels=True)
        self.header = PushButton(text=title)
        super().__init__(widgets=[self.header, self.body], labels=False)
        self.header.changed.connect(lambda: self.set_collapsed(self.body.visible))
        self.set_collapsed(collapsed)
        self.margins = (0, 0, 0, 0)

    def set_collapsed(self, collapsed: bool) -> None:
        self.body.visible = not collapsed
        self.header.text = ("▸ " if collapsed else "▾ ") + self.title

    @property
    def collapsed(self) -> bool:
        return not self.body.visible


class ModelSection(Section):
    def __init__(self, backends) -> None:
        self.model_type = ComboBox(
            label="Model",
            choices=MODEL_TYPES,
            value="vit_t",
            tooltip="vit_t is MobileSAM (fast); vit_b/l/h are the original SAM models. "
            "Ignored when a checkpoint file is chosen (its architecture is read "
            "from the file)",
        )
        self.checkpoint = FileEdit(
            label="Checkpoint",
            mode="r",
            filter="*.pt *.pth",
            value="",
            tooltip="Optional weights file; empty = $MOBILESAM_CHECKPOINT if set, else "
            "the official weights of the chosen model from the cache folder",
        )
        self.backend = ComboBox(
            label="Backend",
            choices=backends,
            value="torch",
            tooltip="torch runs the model itself; onnx runs it with ONNX Runtime (needs "
            "napari-mobilesam[onnx]; the first use exports the model to the cache "
            f"folder). Default from ${BACKEND_ENV}",
        )
        self.weights = _wrapping(Label(label="Weights", value="-"))
        self.arithmetic = _wrapping(Label(label="Encoder", value="-"))
        super().__init__(
            "Model", [self.model_type, self.checkpoint, self.backend, self.weights, self.arithmetic]
        )


class ImageSection(Section):
    def __init__(self, image_choices) -> None:
        self.image = ComboBox(
            label="Image",
            choices=image_choices,
            nullable=True,
            tooltip="Follows napari: a newly opened or selected image becomes the target",
        )
        self.channels = ComboBox(
            label="Channels",
            choices=CHANNEL_CHOICES,
            value="auto",
            tooltip="auto: RGB layers have channels last, other 3-D layers are volumes (Z, Y, X)",
        )
        self.reading = _wrapping(Label(label="Read as", value="-"))
        self.embed_button = PushButton(
            text="Compute embeddings",
            tooltip="Encode the image (every slice of a volume) now; saved in the "
            "embedding cache, so reopening the same data costs nothing",
        )
        self.cache_dir = FileEdit(
            label="Embedding cache",
            mode="d",
            value="",
            tooltip="Folder for saved embeddings; empty = the default cache folder "
            "(content-addressed, oldest entries evicted beyond the size budget)",
        )
        # Large 2-D images (see _tiled.py): tiles instead of one shrunk embedding, overridable here.
        self.tile_large = CheckBox(
            text="Tile large images",
            value=True,
            tooltip="2-D images longer than 2048 px: tiles encoded where you click, "
            "instead of shrinking the whole image to 1024 px",
        )
        self.tile_size = SpinBox(
            label="Tile size",
            value=768,
            min=256,
            max=4096,
            step=64,
            tooltip="Tile interior in pixels; each tile is encoded with 128 px of context per side",
        )
        self.tiling = _wrapping(Label(label="Tiling", value="-"))
        super().__init__(
            "Image and embeddings",
            [
                self.image,
                self.channels,
                self.reading,
                self.embed_button,
                self.cache_dir,
                self.tile_large,
                self.tile_size,
                self.tiling,
            ],
        )


class PromptSection(Section):
    def __init__(self) -> None:
        self.auto_segment = CheckBox(text="Segment on every prompt change", value=True)
        self.candidate = ComboBox(
            label="Mask candidate",
            choices=CANDIDATES,
            value="best",
            tooltip="SAM proposes 3 masks; 'best' takes the highest predicted IoU",
        )
        self.scores = Label(label="Predicted IoU", value="-")
        self.point_mode = Label(label="New points", value=POSITIVE)
        self.segment_button = PushButton(text=f"Segment [{KEYS['segment']}]")
        self.toggle_button = PushButton(text=f"+/- [{KEYS['toggle']}]")
        self.commit_button = PushButton(text=f"Commit [{KEYS['commit']}]")
        self.clear_button = PushButton(text=f"Clear [{KEYS['clear']}]")
        self.key_help = _wrapping(Label(label="Keys", value=KEY_HELP))
        super().__init__(
            "Prompts (click points, draw boxes)",
            [
                self.auto_segment,
                self.candidate,
                self.scores,
                self.point_mode,
                _row(self.segment_button, self.toggle_button),
                _row(self.commit_button, self.clear_button),
                self.key_help,
            ],
        )


class VolumeSection(Section):
    def __init__(self, default_iou: float, projections, default_projection: str) -> None:
        self.iou_threshold = FloatSpinBox(
            label="Stop below IoU",
            value=default_iou,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="Propagation of an object stops where its mask overlaps the previous slice's less than this",
        )
        self.projection = ComboBox(
            label="Projection",
            choices=projections,
            value=default_projection,
            tooltip="How each slice's mask prompts the next slice (see mobilesam.volume)",
        )
        self.volume_button = PushButton(
            text=f"Segment volume [{KEYS['volume']}]",
            tooltip="Propagate the current object from its prompted slices through z",
        )
        self.all_objects_button = PushButton(
            text="All objects", tooltip="Propagate every committed object through z at once"
        )
        super().__init__(
            "Volume (Z, Y, X)",
            [self.iou_threshold, self.projection, _row(self.volume_button, self.all_objects_button)],
        )


class EverythingSection(Section):
    def __init__(self, default_points_per_side: int) -> None:
        self.points_per_side = SpinBox(
            label="Points per side",
            value=default_points_per_side,
            min=1,
            max=128,
            tooltip="Grid of point prompts; the time grows with its square "
            "(the estimate below is updated as you change it)",
        )
        self.everything_iou = FloatSpinBox(
            label="Min predicted IoU",
            value=0.88,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Masks whose predicted IoU is lower are dropped",
        )
        self.everything_stability = FloatSpinBox(
            label="Min stability",
            value=0.95,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Masks that change under small threshold shifts are dropped",
        )
        self.estimate = _wrapping(Label(label="Estimate", value="-"))
        self.everything_button = PushButton(text="Segment everything (image / current slice)")
        super().__init__(
            "Segment everything",
            [
                self.points_per_side,
                self.everything_iou,
                self.everything_stability,
                self.estimate,
                self.everything_button,
            ],
            collapsed=True,
        )


class StatusSection(Container):
    """Always visible: the last message in full (errors lead with what to do), progress and Cancel."""

    def __init__(self) -> None:
        self.status = Label(value="Open an image, then click on it (or press Compute embeddings first).")
        self.progress = ProgressBar(value=0, min=0, max=100, visible=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        super().__init__(widgets=[self.status, self.progress, self.cancel_button], labels=False)
        _wrapping(self.status)
        self.status.native.setTextInteractionFlags(_selectable())  # errors can be copied


def _wrapping(label: Label) -> Label:
    """Long text wraps instead of widening the dock (its width must not jump with the text)."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    return label


def _selectable():
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse


def _row(*widgets) -> Container:
    return Container(widgets=widgets, layout="horizontal", labels=False)


def backend_default() -> tuple[str, str]:
    """(backend, warning or "") from $MOBILESAM_BACKEND, read by the core's one parser: a value it
    refuses becomes a warning in the dock and the plugin starts on torch."""
    from mobilesam.serving.backend import DEFAULT_BACKEND, backend_from_env

    try:
        return backend_from_env(), ""
    except ValueError as exc:
        return DEFAULT_BACKEND, f"{exc}; using {DEFAULT_BACKEND}"


def encoder_arithmetic(model_type: str, checkpoint: str, backend: str) -> str:
    """What the Model section's "Encoder" line says: the arithmetic the image encoder will run
    (the core's `encoder_precision` of $MOBILESAM_PRECISION for this model) and why."""
    from mobilesam.runtime import bf16_supported
    from mobilesam.serving.backend import PRECISION_ENV, encoder_precision, parse_precision

    if backend == "onnx":
        return "fp32 (ONNX Runtime)"
    try:
        setting = parse_precision(os.environ.get(PRECISION_ENV))
        # A checkpoint's architecture is read from the file; only vit_t models have a bf16 path.
        arithmetic = encoder_precision(setting, None if checkpoint else model_type)
    except ValueError as exc:
        return f"{exc}: loading the model will fail"
    if arithmetic == "bf16":
        which = " for a vit_t checkpoint" if checkpoint else ""
        return f"bf16{which} (this CPU has AVX512-BF16/AMX; ${PRECISION_ENV}={setting})"
    if setting == "fp32":
        return f"fp32 (${PRECISION_ENV}=fp32)"
    if not bf16_supported():
        return "fp32 (this CPU has no AVX512-BF16/AMX)"
    return f"fp32 ({model_type} has no bf16 path)"
