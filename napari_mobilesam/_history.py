"""Undo / redo of the plugin's edits (commit, clear, delete object, refine, open), without Qt.

The plugin writes labels in place (napari's own Labels history does not see it), so each edit is
recorded here as two `Snapshot`s of what it changes, taken before and after: the touched box of
each Labels layer, the prompt layers' points and boxes, and the session's committed-object
prompts. Undo writes the "before" snapshot back, redo the "after" one. Only the edited box of a
Labels layer is copied, so a commit on a 6000 x 6000 image stays cheap. Strokes painted by hand
on a Labels layer the plugin edits are recorded as `LayerStep`s and undone by napari's own
history of that layer, in their place among the plugin's edits.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HISTORY_LIMIT = 50  # edits kept for undo; the oldest are forgotten


@dataclass
class PromptState:
    """The points (data, positive/negative labels) and boxes (data, shape types) of prompt layers."""

    points: Any
    point_data: np.ndarray
    point_labels: list[str]
    boxes: Any
    box_data: list[np.ndarray]
    box_types: list[str]

    @classmethod
    def of(cls, points, boxes) -> "PromptState":
        return cls(
            points,
            np.array(points.data, copy=True),
            [str(v) for v in points.features["label"]],
            boxes,
            [np.array(d, copy=True) for d in boxes.data],
            list(boxes.shape_type),
        )

    def restore(self) -> None:
        import pandas as pd

        categories = list(self.points.features["label"].cat.categories)
        self.points.data = self.point_data.copy()
        self.points.features = pd.DataFrame(
            {"label": pd.Categorical(self.point_labels, categories=categories)}
        )
        self.points.refresh_colors(update_color_mapping=False)
        self.boxes.data = []
        if self.box_data:
            self.boxes.add([d.copy() for d in self.box_data], shape_type=self.box_types)


@dataclass
class Snapshot:
    """Part of the plugin's state: boxes of Labels layers, prompts, committed-object prompts."""

    labels: list[tuple[Any, tuple[slice, ...], np.ndarray]] = field(default_factory=list)
    prompts: PromptState | None = None
    session: Any = None
    object_prompts: dict | None = None

    def restore(self) -> None:
        for layer, box, values in self.labels:
            layer.data[box] = values
            layer.refresh()
        if self.prompts is not None:
            self.prompts.restore()
        if self.session is not None:
            self.session.object_prompts = _copy_prompts(self.object_prompts)
            self.session.forget_masks()  # masks are decoded again for the restored prompts

    def layers(self) -> list:
        out = [layer for layer, _, _ in self.labels]
        if self.prompts is not None:
            out += [self.prompts.points, self.prompts.boxes]
        return out


@dataclass
class Scope:
    """What an edit may change: (Labels layer, box) pairs, the prompt layers, the session."""

    labels: list[tuple[Any, tuple[slice, ...] | None]] = field(default_factory=list)
    prompt_layers: tuple | None = None  # (points, boxes)
    session: Any = None

    def snapshot(self) -> Snapshot:
        return Snapshot(
            labels=[
                (layer, box, np.array(layer.data[box], copy=True))
                for layer, box in self.labels
                if box is not None
            ],
            prompts=PromptState.of(*self.prompt_layers) if self.prompt_layers is not None else None,
            session=self.session,
            object_prompts=_copy_prompts(self.session.object_prompts) if self.session is not None else None,
        )


@dataclass
class LayerStep:
    """One step of a Labels layer's own (napari) history: its paint and fill strokes are recorded
    by napari, and undone / redone through it, in their place among the plugin's edits."""

    layer: Any
    which: str  # "undo" or "redo"

    def restore(self) -> None:
        getattr(self.layer, self.which)()

    def layers(self) -> list:
        return [self.layer]


@dataclass
class Edit:
    description: str
    before: Snapshot
    after: Snapshot

    def layers(self) -> list:
        return self.before.layers()


class History:
    """Undo and redo stacks of `Edit`s. `quiet` wraps restoring (e.g. muting prompt events)."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self.undo_stack: list[Edit] = []
        self.redo_stack: list[Edit] = []

    @contextmanager
    def record(self, description: str, scope: Scope) -> Iterator[None]:
        """Record the edit made inside the `with` block (nothing is recorded if it raises)."""
        before = scope.snapshot()
        yield
        self.push(Edit(description, before, scope.snapshot()))

    def push(self, edit: Edit) -> None:
        """Record an edit made elsewhere (a paint stroke, undone by its layer's own history)."""
        self.undo_stack.append(edit)
        del self.undo_stack[: -self.limit]
        self.redo_stack.clear()

    def undo(self, alive: Callable[[Any], bool] = lambda layer: True, quiet=None) -> Edit | None:
        """Undo the last edit; an edit whose layers are gone is dropped (returns None)."""
        return self._move(self.undo_stack, self.redo_stack, "before", alive, quiet)

    def redo(self, alive: Callable[[Any], bool] = lambda layer: True, quiet=None) -> Edit | None:
        return self._move(self.redo_stack, self.undo_stack, "after", alive, quiet)

    @staticmethod
    def _move(source: list, target: list, which: str, alive, quiet) -> Edit | None:
        while source:
            edit = source.pop()
            if all(alive(layer) for layer in edit.layers()):
                if quiet is None:
                    getattr(edit, which).restore()
                else:
                    with quiet():
                        getattr(edit, which).restore()
                target.append(edit)
                return edit
        return None


def _copy_prompts(object_prompts: dict | None) -> dict:
    return {obj: dict(by_slice) for obj, by_slice in (object_prompts or {}).items()}


def union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """The smallest box holding every given box (None entries are skipped); None if all are None."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
        for axis in range(len(boxes[0]))
    )
