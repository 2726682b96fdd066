"""Refine an existing object of any Labels layer (Cellpose, StarDist, a previous session), or use
it as the seed of a volume propagation; Commit then replaces that id in place (undoable).

Refining: the object's mask is shown as the current object and becomes the prompt (its box and
its mask as `mask_input`, on every slice it covers); the points the user clicks are added to it
and each change asks the core again (`mobilesam.mask_prompt.refine_object`, in a worker).
Seeding: boxes around the object on its first, largest and last slices go into the boxes layer
and the volume is segmented from them as usual (`segment_volume`). No model logic here.
"""

from dataclasses import dataclass

import numpy as np

from ._layers import LayerError
from ._objects import existing_layer
from ._sections import KEYS


@dataclass
class RefineTarget:
    layer: object  # the Labels layer holding the object
    obj: int
    mask: np.ndarray  # (Z, Y, X) or (Y, X) bool: the object when refining started
    image_layer: object
    mode: str  # "refine" (clicks refine the mask) or "seed" (the volume is segmented from boxes)


class Refiner:
    """Refinement and seeding in `widget` (a `MobileSamWidget`); `tools` is its `ObjectTools`."""

    def __init__(self, widget, tools) -> None:
        self.widget = widget
        self.tools = tools
        self.target: RefineTarget | None = None

    @property
    def refining(self) -> bool:
        return self.target is not None and self.target.mode == "refine"

    def _begin(self, mode: str, cursor_first: bool) -> RefineTarget | None:
        widget = self.widget
        current = widget._current_image()
        if current is None or widget._refuse_if_busy():
            return None
        image_layer, info = current
        try:
            layer = self.tools.target_layer()
            obj = self.tools.target_id(layer, cursor_first)
            if widget._tiling(info) is not None:
                raise LayerError(
                    f"{image_layer.name!r} is segmented in tiles; untick 'Tile large images' to refine objects"
                )
            if tuple(layer.data.shape) != tuple(info.spatial_shape):
                raise LayerError(
                    f"{layer.name!r} has shape {tuple(layer.data.shape)} but the image {image_layer.name!r} "
                    f"is {tuple(info.spatial_shape)}: choose the Labels layer of this image"
                )
            if mode == "seed" and not info.is_volume:
                raise LayerError(f"{image_layer.name!r} is a 2D image; seeding a propagation needs a volume")
        except LayerError as exc:
            widget._notify("error", f"MobileSAM: {exc}")
            return None
        mask = np.asarray(layer.data) == obj
        if not mask.any():
            widget._notify("warning", f"MobileSAM: {layer.name!r} has no object {obj}")
            return None
        widget.clear()  # the prompts of another object would mix in (undoable)
        self.target = RefineTarget(layer, obj, mask, image_layer, mode)
        return self.target

    def start(self, cursor_first: bool = False) -> None:
        """Show the chosen object as the current one; clicks refine it, Commit replaces it."""
        target = self._begin("refine", cursor_first)
        if target is None:
            return
        self._show(target.mask)
        self.widget._activate_points()
        self.widget._notify(
            "info",
            f"MobileSAM: refining object {target.obj} of {target.layer.name!r}: click points "
            f"(+/- with {KEYS['toggle']}), then Commit [{KEYS['commit']}] replaces it; Clear stops",
        )

    def seed_volume(self) -> None:
        """Boxes around the object on its first, largest and last slices, then segment the volume."""
        target = self._begin("seed", cursor_first=False)
        if target is None:
            return
        widget = self.widget
        layers = widget._prompt_layers()
        areas = target.mask.reshape(target.mask.shape[0], -1).sum(axis=1)
        covered = np.flatnonzero(areas)
        slices = sorted({int(covered[0]), int(np.argmax(areas)), int(covered[-1])})
        image_layer = target.image_layer
        rectangles = []
        for z in slices:
            rows = np.flatnonzero(target.mask[z].any(axis=1))
            cols = np.flatnonzero(target.mask[z].any(axis=0))
            (y0, y1), (x0, x1) = (rows[0], rows[-1]), (cols[0], cols[-1])
            corners = np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)
            world = [image_layer.data_to_world(c) for c in corners]
            rectangles.append(np.array([layers.boxes.world_to_data(w) for w in world]))
        with self.tools.quiet():
            layers.boxes.add(rectangles, shape_type="rectangle")
        widget.segment_volume()
        widget._notify(
            "info",
            f"MobileSAM: propagating object {target.obj} from slices {', '.join(map(str, slices))}; "
            f"Commit [{KEYS['commit']}] replaces it in {target.layer.name!r}",
        )

    def stop(self, quietly: bool = False) -> None:
        if self.target is not None and not quietly:
            self.widget._notify("info", f"MobileSAM: stopped refining object {self.target.obj}")
        self.target = None

    def _show(self, mask: np.ndarray) -> None:
        current = self.widget._prompt_layers().current
        current.data[...] = np.asarray(mask, dtype=current.data.dtype)
        current.refresh()

    # ---- called by the widget instead of its own segment / commit while a target is set
    def segment(self) -> None:
        """Refine the object with the points now in the prompt layer (worker thread)."""
        from mobilesam.mask_prompt import refine_object

        widget, target = self.widget, self.target
        try:
            layers = widget._prompt_layers()
            grouped = widget._grouped_prompts(layers, target.image_layer)
        except LayerError as exc:
            widget._notify("error", f"MobileSAM: {exc}")
            return
        points = {z: prompt.point_arrays() for z, prompt in grouped.by_slice.items() if prompt.points}
        if not points:
            self._show(target.mask)
            return
        volume = target.mask.ndim == 3
        mask = target.mask if volume else target.mask[None]

        def refine(segmenter, progress, cancel):
            return refine_object(segmenter.embeddings, mask, points, progress=progress, cancel=cancel)

        def show(refined):
            if self.target is target:
                self._show(refined if volume else refined[0])

        widget._prepare(f"MobileSAM: refining object {target.obj}", [], then=show, extra=refine)

    def commit(self) -> None:
        """Replace the object's id in its layer by the current object (other objects stay)."""
        from ._history import union_box
        from ._session import nonzero_box

        widget, target = self.widget, self.target
        layers = widget._prompt_layers()
        new = np.asarray(layers.current.data) > 0
        if target.layer not in widget.viewer.layers:
            widget._notify(
                "error", f"MobileSAM: the layer {target.layer.name!r} was removed; nothing changed"
            )
            self.target = None
            return
        old_box, new_box = nonzero_box(target.mask), nonzero_box(new)
        box = union_box(old_box, new_box)
        session = widget._session() if target.layer is existing_layer(layers, "objects") else None
        scope = self.tools.scope(labels=[(target.layer, box), (layers.current, new_box)], prompts=True)
        scope.session = session
        description = f"{target.mode} object {target.obj}"
        with self.tools.record(description, scope):
            data = target.layer.data
            region = np.asarray(data[box])
            old = region == target.obj
            wanted = new[box]
            region[old & ~wanted] = 0
            region[wanted & ((region == 0) | old)] = target.obj
            data[box] = region
            target.layer.refresh()
            widget._clear_prompts(layers)
        self.target = None
        widget._notify(
            "info",
            f"MobileSAM: object {target.obj} of {target.layer.name!r} replaced ({KEYS['undo']} undoes)",
        )
