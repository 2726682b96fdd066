"""3-D segmentation by propagating SAM prompts slice by slice through a volume.

The prompted slices are segmented from the user's prompts; then each object is extended slice by
slice in both directions, each new slice prompted from the object's mask on the previous one
(the "projection"). Propagation of an object stops when its new mask is empty, when its IoU with
the previous slice's mask falls below `iou_threshold` (SAM has jumped to another structure or the
object has ended), or at the end of the volume. Between two prompted slices the gap is filled
from both ends: upwards from the lower one as far as the middle, then downwards from the upper
one until it meets what the upward run reached (so if one side stops early the other can still
fill the gap).

Projections (how the previous mask prompts the next slice):
- "box" (default): the previous mask's bounding box, widened by 10% of its side (at most 20
  pixels), the box jitter SAM was trained with. A box is SAM's least ambiguous single prompt
  (one object per box, no multimask guessing), it tolerates the drift and change of shape
  between neighbouring slices because it constrains only the extent, and it does not depend on
  where in a thin, curved or hollow object a point lands. When the object ends, SAM's answer for
  the box is some other structure, which the IoU test catches.
- "mask": the previous slice's low-resolution mask logits as `mask_input`. SAM was trained to use
  mask input only to refine its own earlier answer, so alone it is the weakest prompt.
- "box_and_mask": both of the above; a shape prior inside the box.
- "points": up to three well-separated positive points deep inside the previous mask.
- "single_point": the single most interior point (maximum of the distance transform, which,
  unlike the centroid, is always inside the mask); three candidates are asked for and the one
  that best matches the previous slice is kept.

Several objects (`segment_objects`) are propagated together, slice-major: each slice's embedding
is fetched once per sweep and used for every object active on it. Masks never overlap: prompted
slices are segmented first and are not overwritten by propagation, and where several objects'
masks claim a pixel on the same slice it goes to the object with the highest mask logit.

Everything goes through the public `SamPredictor` API (`set_embedding`, `predict`), so any model,
or a stand-in predictor in tests, works.
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..progress import ProgressCallback, raise_if_cancelled
from ..prompt import Prompt
from .embeddings import VolumeEmbeddings

PROJECTIONS = ("box", "mask", "box_and_mask", "points", "single_point")
DEFAULT_PROJECTION = "box"
# Consecutive cross-sections of a smooth object overlap well (IoU > 0.5 except right at its tips);
# a lower IoU means SAM segmented something else.
DEFAULT_IOU_THRESHOLD = 0.5
BOX_MARGIN_FRACTION = 0.1
BOX_MARGIN_MAX = 20.0
NUM_PROJECTED_POINTS = 3


@dataclass
class SlicePrompt:
    """Prompts for one object on one slice: a `mobilesam.Prompt` (validated by it) and its slice.

    z: index of the slice along the volume's slicing axis.
    points: (N, 2) pixel coordinates (x, y) within the slice: x is the column, y the row.
    labels: (N,) 1 = object, 0 = background (default: all 1).
    box: (x0, y0, x1, y1) pixels within the slice.
    """

    z: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.z, (bool, np.bool_)) or not isinstance(self.z, (int, np.integer)):
            raise TypeError(f"SlicePrompt.z must be an integer slice index, got {self.z!r}")
        self.z = int(self.z)
        if (
            self.labels is not None
            and np.size(self.labels)
            and (self.points is None or not np.size(self.points))
        ):
            raise ValueError(f"slice {self.z}: labels given without points")
        try:
            plane = Prompt(self.points, self.labels, self.box)
        except ValueError as exc:
            raise ValueError(f"slice {self.z}: {_volume_box_problem(self.box) or exc}") from None
        problem = _volume_box_problem(plane.box)
        if problem:
            raise ValueError(f"slice {self.z}: {problem}")
        self.points, self.labels = plane.point_arrays()
        self.box = plane.box_array()
        if self.points is None and self.box is None:
            raise ValueError(f"slice {self.z}: a prompt needs points or a box")
        if self.points is not None and self.box is None and not (self.labels == 1).any():
            raise ValueError(f"slice {self.z}: only background points; add a point on the object or a box")

    @classmethod
    def from_prompt(cls, z: int, prompt: Prompt) -> "SlicePrompt":
        """The `Prompt` of one object on slice z (its mask, a 2D refinement input, is not used)."""
        coords, labels = prompt.point_arrays()
        return cls(z, coords, labels, prompt.box_array())

    @property
    def prompt(self) -> Prompt:
        """This slice's prompts as a `mobilesam.Prompt`."""
        return Prompt(self.points, self.labels, self.box)

    def check_inside(self, num_slices: int, slice_shape: tuple[int, int]) -> None:
        """Raise ValueError naming the problem if the prompt is not within the volume."""
        height, width = slice_shape
        if not 0 <= self.z < num_slices:
            raise ValueError(f"prompt on slice z={self.z} is outside the volume (slices 0..{num_slices - 1})")
        if self.points is not None:
            for x, y in self.points:
                if not (0 <= x < width and 0 <= y < height):
                    raise ValueError(
                        f"point ({x:g}, {y:g}) on slice z={self.z} is outside the "
                        f"{width}x{height} (width x height) slice"
                    )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise ValueError(
                    f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) on slice z={self.z} does not overlap "
                    f"the {width}x{height} (width x height) slice"
                )


def _volume_box_problem(box) -> str | None:
    """What is wrong with a box of four finite numbers for propagation, which needs an area to
    follow (stricter than `Prompt`, which takes a box of zero width); None if nothing (or if it is
    not four finite numbers: `Prompt` says what is wrong then)."""
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if box is None or values.size != 4 or not np.isfinite(values).all():
        return None
    if values[2] > values[0] and values[3] > values[1]:
        return None
    return f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}"


def propagate_object(
    embeddings: VolumeEmbeddings,
    prompts: Sequence[SlicePrompt],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    projection: str = DEFAULT_PROJECTION,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Segment one object through the volume from prompts on one or more slices.

    Returns a bool mask of `embeddings.spatial_shape`: (Z, Y, X) for a (Z, Y, X) volume sliced
    along axis 0 (generally the volume's spatial axes in their order).
    """
    return segment_objects(embeddings, [prompts], iou_threshold, projection, progress, cancel) == 1


def segment_objects(
    embeddings: VolumeEmbeddings,
    objects: Sequence[Sequence[SlicePrompt]],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    projection: str = DEFAULT_PROJECTION,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Segment several objects at once into one label volume without overlaps.

    objects: one list of `SlicePrompt`s per object; object i gets label i + 1.
    Returns int32 labels of `embeddings.spatial_shape` (0 = background).
    progress(done, total) counts slice visits; setting `cancel` raises `Cancelled`.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, not {projection!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be between 0 and 1, got {iou_threshold}")
    num_slices, slice_shape = embeddings.num_slices, embeddings.slice_shape
    plans = []
    for index, prompts in enumerate(objects):
        if len(prompts) == 0:
            raise ValueError(f"object {index + 1} has no prompts")
        for prompt in prompts:
            prompt.check_inside(num_slices, slice_shape)
        plans.append(_ObjectPlan(index + 1, _group_by_slice(prompts)))

    labels = np.zeros((num_slices, *slice_shape), np.int32)
    run = _Propagation(embeddings, labels, plans, iou_threshold, projection, progress, cancel)
    run.segment_prompted_slices()
    run.sweep(upward=True)
    run.sweep(upward=False)
    run.finish()
    return np.ascontiguousarray(np.moveaxis(labels, 0, embeddings.slicing_axis_in_result))


# ---- internals ------------------------------------------------------------------------------


@dataclass
class _Run:
    """Propagation of one object from a segmented slice in one direction, up to `limit`."""

    start: int
    limit: int
    reached: int  # last slice written by this run
    mask: np.ndarray | None = None  # (H, W) bool on `reached`
    low_res: np.ndarray | None = None  # (256, 256) logits on `reached`
    stopped: bool = False


@dataclass
class _ObjectPlan:
    label: int
    prompts: dict  # z -> merged SlicePrompt
    seeds: dict = field(default_factory=dict)  # z -> (mask, low_res) on prompted slices
    up_runs: list = field(default_factory=list)


class _Propagation:
    def __init__(self, embeddings, labels, plans, iou_threshold, projection, progress, cancel):
        self.embeddings = embeddings
        self.predictor = embeddings.predictor
        self.labels = labels
        self.plans = plans
        self.iou_threshold = iou_threshold
        self.projection = projection
        self.progress = progress
        self.cancel = cancel
        self.threshold = float(getattr(getattr(self.predictor, "model", None), "mask_threshold", 0.0))
        num_slices = labels.shape[0]
        prompted = sorted({z for plan in plans for z in plan.prompts})
        self.total = len(prompted) + (num_slices - 1 - prompted[0]) + prompted[-1]
        self.done = 0

    # A slice visit: check cancellation, report progress.
    def _tick(self) -> None:
        raise_if_cancelled(self.cancel, f"propagation stopped after {self.done} of {self.total} slice visits")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        if self.progress is not None and self.done < self.total:
            self.progress(self.total, self.total)

    def segment_prompted_slices(self) -> None:
        for z in sorted({z for plan in self.plans for z in plan.prompts}):
            raise_if_cancelled(self.cancel, "propagation cancelled")
            self.embeddings.set_slice(z)
            answers = []
            for plan in self.plans:
                prompt = plan.prompts.get(z)
                if prompt is None:
                    continue
                single_point = prompt.box is None and len(prompt.points) == 1
                logits, low_res = _predict(
                    self.predictor, prompt.points, prompt.labels, prompt.box, None, multimask=single_point
                )
                answers.append((plan, logits, low_res))
            masks = self._claim(z, [(plan.label, logits) for plan, logits, _ in answers])
            for (plan, _, low_res), mask in zip(answers, masks):
                plan.seeds[z] = (mask, low_res)
            self._tick()

    def sweep(self, upward: bool) -> None:
        num_slices = self.labels.shape[0]
        runs = [(plan, r) for plan in self.plans for r in self._make_runs(plan, upward)]
        step = 1 if upward else -1
        prompted = sorted({z for plan in self.plans for z in plan.prompts})
        zs = range(prompted[0] + 1, num_slices) if upward else range(prompted[-1] - 1, -1, -1)
        for z in zs:
            active = [
                (plan, r)
                for plan, r in runs
                if not r.stopped and r.reached == z - step and (z <= r.limit if upward else z >= r.limit)
            ]
            if active:
                raise_if_cancelled(self.cancel, "propagation cancelled")
                self.embeddings.set_slice(z)
                answers = [(plan, r, *self._project_and_predict(r)) for plan, r in active]
                masks = self._claim(z, [(plan.label, logits) for plan, _, logits, _ in answers])
                for (plan, r, _, low_res), mask in zip(answers, masks):
                    if not mask.any() or _iou(mask, r.mask) < self.iou_threshold:
                        r.stopped = True
                        self.labels[z][(self.labels[z] == plan.label) & mask] = 0  # undo this slice's claim
                        continue
                    r.reached, r.mask, r.low_res = z, mask, low_res
            self._tick()

    def _make_runs(self, plan: _ObjectPlan, upward: bool) -> list:
        num_slices = self.labels.shape[0]
        zs = sorted(plan.seeds)
        runs = []
        for i, z in enumerate(zs):
            mask, low_res = plan.seeds[z]
            if not mask.any():
                continue  # nothing to propagate from
            if upward:
                limit = (z + zs[i + 1]) // 2 if i + 1 < len(zs) else num_slices - 1
            else:
                # Meet the upward run from the prompted slice below wherever it stopped.
                limit = plan.up_runs[i - 1].reached + 1 if i > 0 else 0
            runs.append(_Run(start=z, limit=limit, reached=z, mask=mask, low_res=low_res))
        if upward:
            # One entry per prompted slice (also those with empty seeds) so indices match `zs`.
            by_start = {r.start: r for r in runs}
            plan.up_runs = [by_start.get(z, _Run(start=z, limit=z, reached=z, stopped=True)) for z in zs]
        return runs

    def _project_and_predict(self, run: _Run):
        mask, low_res, projection = run.mask, run.low_res, self.projection
        points = labels = box = mask_input = None
        multimask = False
        if projection in ("box", "box_and_mask"):
            box = _padded_box(mask)
        if projection in ("mask", "box_and_mask"):
            mask_input = low_res[None]
        if projection == "points":
            points = _interior_points(mask, NUM_PROJECTED_POINTS)
        elif projection == "single_point":
            points, multimask = _interior_points(mask, 1), True
        if points is not None:
            labels = np.ones(len(points), np.int64)
        return _predict(
            self.predictor,
            points,
            labels,
            box,
            mask_input,
            multimask,
            reference=mask,
            threshold=self.threshold,
        )

    def _claim(self, z: int, answers: list) -> list:
        """Masks of `answers` [(label, (H, W) logits)] on slice z without overlaps; writes them."""
        if not answers:
            return []
        free = self.labels[z] == 0
        logits = np.stack([logit for _, logit in answers])
        positive = logits > self.threshold
        if len(answers) > 1:
            # A pixel wanted by several objects goes to the most confident one.
            winner = np.argmax(np.where(positive, logits, -np.inf), axis=0)
            positive &= winner[None] == np.arange(len(answers))[:, None, None]
        masks = []
        for (label, _), mask in zip(answers, positive):
            mask &= free
            self.labels[z][mask] = label
            masks.append(mask)
        return masks


def _group_by_slice(prompts: Sequence[SlicePrompt]) -> dict:
    """Merge an object's prompts on the same slice (points concatenated; at most one box)."""
    merged: dict = {}
    for prompt in prompts:
        other = merged.get(prompt.z)
        if other is None:
            merged[prompt.z] = prompt
            continue
        if other.box is not None and prompt.box is not None:
            raise ValueError(f"an object has two boxes on slice z={prompt.z}; give one box per slice")
        point_sets = [p for p in (other, prompt) if p.points is not None]
        points = np.concatenate([p.points for p in point_sets]) if point_sets else None
        labels = np.concatenate([p.labels for p in point_sets]) if point_sets else None
        merged[prompt.z] = SlicePrompt(
            prompt.z, points, labels, other.box if other.box is not None else prompt.box
        )
    return merged


def _predict(
    predictor, points, labels, box, mask_input, multimask: bool, reference=None, threshold: float = 0.0
):
    """One (H, W) logits map and its (256, 256) low-res logits for prompts on the current slice.

    With several candidates, keep the one closest to `reference` (the previous slice's mask),
    else SAM's own best-scored one.
    """
    logits, scores, low_res = predictor.predict(
        point_coords=points,
        point_labels=labels,
        box=box,
        mask_input=mask_input,
        multimask_output=multimask,
        return_logits=True,
    )
    best = int(np.argmax(scores))
    if multimask and reference is not None:
        best = max(range(len(logits)), key=lambda i: (_iou(logits[i] > threshold, reference), scores[i]))
    return np.asarray(logits[best], dtype=np.float32), np.asarray(low_res[best], dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _padded_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around `mask`, widened by 10% of each side (at most 20 px), within the slice."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad_x = min(BOX_MARGIN_FRACTION * (x1 - x0), BOX_MARGIN_MAX)
    pad_y = min(BOX_MARGIN_FRACTION * (y1 - y0), BOX_MARGIN_MAX)
    height, width = mask.shape
    return np.array(
        [max(x0 - pad_x, 0), max(y0 - pad_y, 0), min(x1 + pad_x, width), min(y1 + pad_y, height)],
        dtype=np.float64,
    )


def _interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` (x, y) points deep inside `mask`: the most interior one, then the farthest
    apart among the pixels at least half as deep (farthest-point sampling)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    # Distance transform on the padded bounding box only: cheap even for large slices.
    crop = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    depth = ndimage.distance_transform_edt(crop)
    deep_y, deep_x = np.nonzero(depth >= 0.5 * depth.max())
    candidates = np.stack([deep_x, deep_y], axis=1).astype(np.float64)
    chosen = [int(np.argmax(depth[deep_y, deep_x]))]
    distance = np.linalg.norm(candidates - candidates[chosen[0]], axis=1)
    while len(chosen) < min(count, len(candidates)):
        nxt = int(np.argmax(distance))
        if distance[nxt] == 0:
            break
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(candidates - candidates[nxt], axis=1))
    points = candidates[chosen] - 1 + np.array([cols[0], rows[0]])  # undo padding and crop
    return points + 0.5  # pixel centres
