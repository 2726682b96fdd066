"""Per-image annotation state, without Qt or napari: what the plugin knows about one image.

An `ImageSession` belongs to one image (one napari Image layer). It holds the image's segmenter
(its embeddings, keyed by model + data + channel reading + cache folder), the prompts whose masks
are on screen, the candidate masks, the committed objects with the prompts that made them, and the
positive/negative mode for new points. `Sessions` maps images to their sessions, so switching to
another image and back restores everything, and a mask is always decoded from the embedding of
the image it is shown on (each session owns its segmenter; nothing is shared but the predictor).

The widget reads prompts out of napari layers, hands them to the session and paints what it gets
back; everything here is unit-testable with plain arrays and a stand-in predictor.
"""

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilesam.prompt import Prompt

from ._prompts import GroupedPrompts

POSITIVE, NEGATIVE = "positive", "negative"
CANDIDATES = ("best", "1", "2", "3")
Candidates = tuple[np.ndarray, np.ndarray]  # (C, H, W) bool masks, (C,) predicted IoU


def pick_candidate(candidates: Candidates, choice: str) -> int:
    """Index of the candidate to show: the highest predicted IoU for "best", else choice 1..3."""
    masks, scores = candidates
    return int(np.argmax(scores)) if choice == "best" else min(int(choice) - 1, len(masks) - 1)


def next_candidate(choice: str) -> str:
    """best -> 1 -> 2 -> 3 -> best: cycling always comes back to the automatic choice."""
    return CANDIDATES[(CANDIDATES.index(choice) + 1) % len(CANDIDATES)]


@dataclass(frozen=True)
class SegmenterKey:
    """What a segmenter's embeddings depend on: the model, how the image is read, the cache folder.

    model: the widget's model setting (type, checkpoint, backend); info: the image's `ImageInfo`.
    The image data itself is checked by identity (`ImageSession.segmenter_for`).
    """

    model: Hashable
    info: Hashable
    cache_dir: str | None


@dataclass
class ImageSession:
    """Everything about one image. `name` is only for messages."""

    name: str
    segmenter: Any = None
    segmenter_key: SegmenterKey | None = None
    segmenter_data: Any = None  # the array the segmenter was built from (layer.data may be replaced)
    shown: dict[int, Prompt] = field(default_factory=dict)  # slice -> prompt whose mask is shown
    shown_boxes: dict[int, tuple] = field(default_factory=dict)  # slice -> extra boxes shown as objects
    candidates: dict[int, Candidates] = field(default_factory=dict)
    extra_objects: dict[int, list[np.ndarray]] = field(default_factory=dict)  # slice -> masks of extra boxes
    object_prompts: dict[int, dict[int, Prompt]] = field(default_factory=dict)  # committed id -> prompts
    point_label: str = POSITIVE

    # ---- embeddings
    def segmenter_for(self, key: SegmenterKey, data) -> Any:
        """The segmenter if it was built for exactly this model, reading and data; else None."""
        if self.segmenter is not None and self.segmenter_key == key and self.segmenter_data is data:
            return self.segmenter
        return None

    def use_segmenter(self, segmenter, key: SegmenterKey, data) -> None:
        if self.segmenter is not segmenter:
            self.forget_masks()  # masks on screen came from other embeddings
        self.segmenter, self.segmenter_key, self.segmenter_data = segmenter, key, data

    def drop_segmenter(self) -> None:
        self.segmenter = self.segmenter_key = self.segmenter_data = None
        self.forget_masks()

    # ---- prompts -> masks
    def forget_masks(self) -> None:
        self.shown.clear()
        self.shown_boxes.clear()
        self.candidates.clear()
        self.extra_objects.clear()

    def changed_slices(self, grouped: GroupedPrompts) -> list[int]:
        """Slices whose prompts differ from those whose masks are shown (incl. removed ones)."""
        return [
            z
            for z in sorted(set(grouped.by_slice) | set(self.shown))
            if (grouped.by_slice.get(z), grouped.extra_boxes.get(z, ()))
            != (self.shown.get(z), self.shown_boxes.get(z, ()))
        ]

    def missing_embeddings(self, grouped: GroupedPrompts, segmenter) -> list[int]:
        """Changed slices with prompts whose embedding is not computed yet (all, without a segmenter)."""
        return [
            z
            for z in self.changed_slices(grouped)
            if z in grouped.by_slice and (segmenter is None or not segmenter.has_embedding(z))
        ]

    def segment(self, grouped: GroupedPrompts, choice: str) -> dict[int, np.ndarray | None]:
        """Decode every changed slice with this session's own segmenter.

        Returns slice -> label mask to show (uint8: 1 = the prompted object, 2.. = one per extra box),
        or None where the prompts were removed. The segmenter must hold the embeddings.
        """
        if self.segmenter is None:
            raise RuntimeError(f"no embeddings for {self.name!r} yet")
        out: dict[int, np.ndarray | None] = {}
        for z in self.changed_slices(grouped):
            prompt = grouped.by_slice.get(z)
            if prompt is None:
                self.candidates.pop(z, None)
                self.extra_objects.pop(z, None)
                out[z] = None
            else:
                self.candidates[z] = self.segmenter.predict(z, prompt)
                self.extra_objects[z] = [
                    self._best(self.segmenter.predict(z, Prompt(box=box)))
                    for box in grouped.extra_boxes.get(z, ())
                ]
                out[z] = self.labels(z, choice)
            self.shown[z] = prompt
            self.shown_boxes[z] = grouped.extra_boxes.get(z, ())
        return out

    @staticmethod
    def _best(candidates: Candidates) -> np.ndarray:
        return candidates[0][pick_candidate(candidates, "best")]

    def labels(self, z: int, choice: str) -> np.ndarray:
        """Slice z's current objects as labels: the chosen candidate = 1, extra boxes = 2, 3, ..."""
        masks, _ = self.candidates[z]
        out = masks[pick_candidate(self.candidates[z], choice)].astype(np.uint8)
        for value, mask in enumerate(self.extra_objects.get(z, ()), start=2):
            out[(out == 0) & mask] = value
        return out

    # ---- committing
    def commit(self, current: np.ndarray, objects: np.ndarray, prompts: GroupedPrompts) -> list[int]:
        """Write each object of `current` (labels 1, 2, ...) into `objects` with a new id, never over
        an existing object; remember the prompts of object 1 (for propagation). Returns the new ids.
        Only the objects' bounding box is compared and written: on a 6000 x 6000 image the
        whole-image temporaries cost ~0.8 s on the GUI thread, the box ~15 ms."""
        new_ids = []
        next_id = int(objects.max()) + 1 if objects.size else 1
        self.point_label = POSITIVE  # each object starts with positive clicks
        box = nonzero_box(current)
        if box is None:
            return new_ids
        current, objects = current[box], objects[box]  # views: writing `objects` writes the layer
        for value in [v for v in np.unique(current) if v > 0]:
            free = (current == value) & (objects == 0)
            if not free.any():
                continue
            objects[free] = next_id
            self.object_prompts[next_id] = dict(prompts.by_slice) if value == 1 else {}
            new_ids.append(next_id)
            next_id += 1
        return new_ids

    def committed_with_prompts(self, objects: np.ndarray) -> list[int]:
        """Committed ids that still exist in `objects` and have prompts to propagate from."""
        present = set(np.unique(objects).tolist())
        return [i for i, by_slice in sorted(self.object_prompts.items()) if by_slice and i in present]


def nonzero_box(array: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box (one slice per axis) of the nonzero elements of `array`, or None if none."""
    box = []
    for axis in range(array.ndim):
        hits = np.flatnonzero(array.any(axis=tuple(a for a in range(array.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


class Sessions:
    """One `ImageSession` per image, keyed by the image object (a napari layer) itself."""

    def __init__(self) -> None:
        self._sessions: dict[int, tuple[Any, ImageSession]] = {}

    def get(self, image, name: Callable[[], str] = lambda: "image") -> ImageSession:
        entry = self._sessions.get(id(image))
        if entry is None or entry[0] is not image:  # an id can be reused by a new object
            entry = (image, ImageSession(name()))
            self._sessions[id(image)] = entry
        return entry[1]

    def drop(self, image) -> ImageSession | None:
        entry = self._sessions.pop(id(image), None)
        return entry[1] if entry is not None else None

    def __contains__(self, image) -> bool:
        entry = self._sessions.get(id(image))
        return entry is not None and entry[0] is image

    def __len__(self) -> int:
        return len(self._sessions)
