"""`SamAutomaticMaskGenerator`: "segment everything", a drop-in for segment_anything's.

A grid of single-point prompts is decoded over the image (and optionally over overlapping
crops); masks with a low predicted IoU or an unstable threshold are dropped, duplicates are
removed by box NMS, and one record per remaining mask is returned.

The records equal the official ones (same masks, same order, same scores), but the work is
ordered differently so that little is spent on masks that are thrown away:

* the predicted-IoU filter runs on the low-resolution (256x256) logits, before upsampling;
* only survivors are upsampled to full resolution (the official code upsamples every mask);
* masks are kept as packed bits and run-length encoded only after NMS, for the masks returned
  (the official code encodes every candidate and deep-copies the run lengths batch after batch);
* NMS, boxes and stability scores are vectorised.
"""

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .amg_utils import (
    box_nms,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    chunks,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_coco_rle,
    mask_to_uncompressed_rle,
    masks_to_boxes,
    remove_small_regions,
    stability_scores,
    uncrop_boxes_xyxy,
    uncrop_mask,
    uncrop_points,
)
from .modeling import Sam
from .predictor import SamPredictor
from .progress import Progress, ProgressCallback

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class _Candidates:
    """Masks that passed the filters so far, as parallel arrays in the order of the records.

    masks: per mask, (h, ceil(w / 8)) uint8 packed bits of the crop-frame mask, or an (H, W)
    bool image-frame mask once replaced by small-region cleanup. boxes: (N, 4) int64 XYXY,
    iou / stability: (N,) float32, points: (N, 2) float64, crop_boxes: (N, 4) int64.
    """

    masks: list = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))
    iou: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 2), dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.masks)

    def select(self, index: torch.Tensor) -> "_Candidates":
        """The candidates at `index` (int64 indices, in that order)."""
        return _Candidates(
            [self.masks[i] for i in index.tolist()],
            self.boxes[index],
            self.iou[index],
            self.stability[index],
            self.points[index],
            self.crop_boxes[index],
        )

    @staticmethod
    def concat(parts: list["_Candidates"]) -> "_Candidates":
        if not parts:
            return _Candidates()
        return _Candidates(
            [m for p in parts for m in p.masks],
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.crop_boxes for p in parts]),
        )


class SamAutomaticMaskGenerator:
    # Masks upsampled to full resolution at once: bounds memory at ~4 MB per mask in flight.
    upsample_chunk = 32
    # Grid steps of the coarse-to-fine levels before the full grid (see `grid_levels`).
    coarse_to_fine_strides = (4, 2)

    def __init__(
        self,
        model: "Sam | SamPredictor",
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        coarse_to_fine: bool = False,
    ) -> None:
        """Masks for everything in an image, from a grid of point prompts.

        model: the SAM / MobileSAM model, or a predictor on one (any backend, e.g.
            `SamPredictor(model, backend="onnx")`; it is used for the images given to `generate`).
        points_per_side: grid points along each side (points_per_side**2 prompts); None when
            `point_grids` is given instead.
        points_per_batch: prompts decoded together (memory vs. speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit offset around the mask threshold for the stability score.
        box_nms_thresh: box IoU above which a lower-scoring mask of the same crop is a duplicate.
        crop_n_layers: extra layers of crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for removing duplicates between crops (smaller crops win).
        crop_overlap_ratio: overlap of first-layer crops as a fraction of the image's short side.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points a side.
        point_grids: explicit (N, 2) grids in [0, 1] (x, y), one per crop layer.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels.
        output_mode: "binary_mask" ((H, W) bool), "uncompressed_rle" or "coco_rle".
        coarse_to_fine: ask fewer questions: decode every 4th grid point of each row and column
            first, then every 2nd, then the rest, each time only the points that no mask kept so
            far covers (hierarchical sampling as in TinySAM). Same records format; the objects
            found are nearly those of the full grid at a fraction of the decoder calls
            (benchmarks/run.py measures both). The default (False) equals the official output.
        """
        check_generator_settings(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
        )
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, not {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be at least 1, got {points_per_side}")
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"{crop_n_layers} crop layers need {crop_n_layers + 1} point grids, "
                f"got {len(self.point_grids)}"
            )

        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.coarse_to_fine = coarse_to_fine
        self.coarse_to_fine_similarity = 0.99
        self.decoded_points = 0  # point prompts decoded by the last `generate` (all crops)

    def generate(
        self,
        image: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        embedding=None,
    ) -> list[dict[str, Any]]:
        """Records for the masks of everything in an (H, W, 3) uint8 RGB image.

        Each record has: segmentation ((H, W) bool, or an RLE dict per `output_mode`),
        area (int, pixels), bbox ([x, y, w, h] ints), predicted_iou (float),
        point_coords ([[x, y]], the prompt in image pixels), stability_score (float),
        crop_box ([x, y, w, h] of the crop the mask came from).
        progress(done, total) is called after each decoded batch; setting `cancel` stops the
        work with `mobilesam.errors.Cancelled`.
        embedding: the image's `EmbeddingState` from this model when it is already computed (an
        annotator's cache): used for the whole-image crop instead of encoding the image again,
        so the work starts at once and every step of it can be cancelled.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"generate needs an (H, W, 3) uint8 RGB image, got shape {image.shape} "
                f"dtype {image.dtype}; convert other images with mobilesam.image.to_rgb_uint8"
            )
        self.decoded_points = 0
        with torch.inference_mode():
            candidates = self._generate_masks(image, progress, cancel, embedding)
            if self.min_mask_region_area > 0:
                candidates = self._clean_small_regions(candidates, image.shape[:2])
            return [self._record(candidates, i, image.shape[:2]) for i in range(len(candidates))]

    # --- mask generation --------------------------------------------------------------------------

    def _generate_masks(
        self,
        image: np.ndarray,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        embedding=None,
    ) -> _Candidates:
        image_size = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        # One unit of progress per crop encoding and per decoded batch.
        total = sum(1 + -(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layers)
        ticker = Progress(total, progress, cancel, "automatic mask generation was cancelled")
        ticker.check()
        parts = [
            self._process_crop(image, box, layer, ticker, embedding if layer == 0 else None)
            for box, layer in zip(crop_boxes, layers)
        ]
        candidates = _Candidates.concat(parts)
        if len(crop_boxes) > 1 and len(candidates):
            # Prefer masks from smaller crops (official score: 1 / crop area, float32).
            x0, y0, x1, y1 = candidates.crop_boxes.unbind(1)
            keep = box_nms(candidates.boxes, 1 / ((x1 - x0) * (y1 - y0)), self.crop_nms_thresh)
            candidates = candidates.select(keep)
        return candidates

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer: int, ticker: Progress, embedding=None
    ) -> _Candidates:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        if embedding is not None and tuple(embedding.original_size) == tuple(
            crop_size
        ):  # layer 0: the whole image
            self.predictor.set_embedding(embedding)
        else:
            self.predictor.set_image(crop)
        ticker.tick()

        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        if self.coarse_to_fine:
            parts = self._decode_coarse_to_fine(
                self.point_grids[layer], points, crop_size, crop_box, image.shape[:2], ticker
            )
        else:
            parts = []
            for batch in chunks(len(points), self.points_per_batch):
                parts.append(self._process_batch(points[batch], crop_size, crop_box, image.shape[:2]))
                ticker.tick()
        self.predictor.reset_image()
        candidates = _Candidates.concat(parts)

        keep = box_nms(candidates.boxes, candidates.iou, self.box_nms_thresh)  # duplicates in this crop
        candidates = candidates.select(keep)
        candidates.boxes = uncrop_boxes_xyxy(candidates.boxes, crop_box)
        candidates.points = uncrop_points(candidates.points, crop_box)
        return candidates

    def _decode_coarse_to_fine(
        self,
        grid: np.ndarray,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        image_size: tuple[int, int],
        ticker: Progress,
    ) -> list[_Candidates]:
        """Decode the grid level by level (`grid_levels`); grid (N, 2) in [0, 1], points (N, 2)
        crop-frame pixels. A finer point is skipped when a kept mask (the smallest of each
        prompt's) covers it, or when its image embedding matches that of an already decoded
        point within one coarser step (cosine similarity >= `coarse_to_fine_similarity`): that
        point asked the same question. Refinement thus goes to object boundaries and to small
        or not yet segmented objects, not to uniform regions."""
        levels, ix, iy = grid_levels(grid, self.coarse_to_fine_strides)
        covered = np.zeros(crop_size, dtype=bool)
        pixels = np.minimum(points.astype(np.int64), [crop_size[1] - 1, crop_size[0] - 1])
        embedding = self._point_embeddings(points, crop_size)
        decoded = np.full((ix.max() + 1, iy.max() + 1), -1) if len(grid) else None
        parts, batches = [], 0
        for level in range(int(levels.max()) + 1 if len(levels) else 0):
            todo = np.flatnonzero(levels == level)
            if level > 0:
                todo = todo[~covered[pixels[todo, 1], pixels[todo, 0]]]
                similar = _nearest_similarity(
                    embedding, decoded, todo, ix[todo], iy[todo], self.coarse_to_fine_strides[level - 1]
                )
                todo = todo[similar < self.coarse_to_fine_similarity]
            for batch in chunks(len(todo), self.points_per_batch):
                part = self._process_batch(points[todo[batch]], crop_size, crop_box, image_size)
                for i in _smallest_mask_per_point(part):
                    covered |= np.unpackbits(part.masks[i], axis=-1, count=crop_size[1]).view(bool)
                decoded[ix[todo[batch]], iy[todo[batch]]] = todo[batch]
                parts.append(part)
                batches += 1
                ticker.tick()
        for _ in range(-(-len(points) // self.points_per_batch) - batches):
            ticker.tick()  # the batches skipped count as done for progress
        return parts

    def _point_embeddings(self, points: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
        """(N, C) unit-length image embedding vectors under crop-frame points (N, 2)."""
        features = self.predictor.features[0].float()  # (C, h, w) over the padded model input
        coords = self.predictor.transform.apply_coords(points, crop_size)
        stride = self.predictor.model.img_size / features.shape[-1]
        cols = np.clip((coords[:, 0] / stride).astype(np.int64), 0, features.shape[-1] - 1)
        rows = np.clip((coords[:, 1] / stride).astype(np.int64), 0, features.shape[-2] - 1)
        vectors = features[:, torch.as_tensor(rows), torch.as_tensor(cols)].T.cpu().numpy()
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _process_batch(
        self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int], image_size: tuple[int, int]
    ) -> _Candidates:
        """Decode (B, 2) crop-frame points; keep the masks that pass every per-mask filter."""
        model, predictor = self.predictor.model, self.predictor
        self.decoded_points += len(points)
        # float64 coordinates, as the official code passes them to the prompt encoder.
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        labels = torch.ones(len(coords), dtype=torch.int, device=predictor.device)
        # The predicted IoU does not depend on the masks: filter before upscaling and upsampling.
        min_iou = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        low_res, iou, flat = predictor.decode_confident(
            (coords[:, None, :], labels[:, None]), None, None, multimask_output=True, min_iou=min_iou
        )
        point_of_mask = torch.as_tensor(points)[flat.cpu() // model.mask_decoder.num_multimask_outputs]
        index = torch.arange(len(iou), device=iou.device)

        parts = []
        for part in chunks(len(index), self.upsample_chunk):
            chosen = index[part]
            logits = model.postprocess_masks(low_res[chosen][:, None], predictor.input_size, crop_size)[:, 0]
            stability = stability_scores(logits, model.mask_threshold, self.stability_score_offset)
            if self.stability_score_thresh > 0.0:
                stable = stability >= self.stability_score_thresh
                chosen, logits, stability = chosen[stable], logits[stable], stability[stable]
            masks = logits > model.mask_threshold
            del logits
            boxes = masks_to_boxes(masks)
            inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, image_size[1], image_size[0]])
            masks = masks[inside].cpu().numpy()
            chosen = chosen[inside]
            parts.append(
                _Candidates(
                    masks=list(np.packbits(masks, axis=-1)),
                    boxes=boxes[inside].cpu(),
                    iou=iou[chosen].float().cpu(),
                    stability=stability[inside].cpu(),
                    points=point_of_mask[chosen.cpu()],
                    crop_boxes=torch.tensor([crop_box], dtype=torch.int64).expand(len(masks), 4),
                )
            )
        return _Candidates.concat(parts)

    # --- small regions ----------------------------------------------------------------------------

    def _clean_small_regions(self, candidates: _Candidates, image_size: tuple[int, int]) -> _Candidates:
        """Fill small holes and drop small islands, then NMS again preferring untouched masks."""
        if not len(candidates):
            return candidates
        masks, unchanged = [], []
        for i in range(len(candidates)):
            mask = self._full_mask(candidates, i, image_size)
            mask, holes_changed = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, islands_changed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            masks.append(mask)
            unchanged.append(float(not (holes_changed or islands_changed)))
        boxes = masks_to_boxes(torch.from_numpy(np.stack(masks)))
        keep = box_nms(boxes, torch.tensor(unchanged), max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep.tolist():
            if not unchanged[i]:
                candidates.masks[i] = masks[i]
                candidates.boxes[i] = boxes[i]
        return candidates.select(keep)

    # --- records ----------------------------------------------------------------------------------

    @staticmethod
    def _full_mask(candidates: _Candidates, i: int, image_size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool mask of candidate i in the image frame."""
        mask = candidates.masks[i]
        if mask.dtype == np.bool_:
            return mask
        x0, y0, x1, y1 = candidates.crop_boxes[i].tolist()
        crop_mask = np.unpackbits(mask, axis=-1, count=x1 - x0).view(bool)
        return uncrop_mask(crop_mask, [x0, y0, x1, y1], image_size)

    def _record(self, candidates: _Candidates, i: int, image_size: tuple[int, int]) -> dict[str, Any]:
        mask = self._full_mask(candidates, i, image_size)
        if self.output_mode == "binary_mask":
            segmentation = mask
        elif self.output_mode == "uncompressed_rle":
            segmentation = mask_to_uncompressed_rle(mask)
        else:
            segmentation = mask_to_coco_rle(mask)
        return {
            "segmentation": segmentation,
            "area": int(np.count_nonzero(mask)),
            "bbox": box_xyxy_to_xywh(candidates.boxes[i]),
            "predicted_iou": candidates.iou[i].item(),
            "point_coords": [candidates.points[i].tolist()],
            "stability_score": candidates.stability[i].item(),
            "crop_box": box_xyxy_to_xywh(candidates.crop_boxes[i]),
        }


def _smallest_mask_per_point(candidates: _Candidates) -> list[int]:
    """Per prompt point, the index of its kept mask with the smallest box: the most local answer.
    Only these mark points as covered; a point's larger (whole-object, whole-image) masks would
    hide the smaller objects inside them."""
    if not len(candidates):
        return []
    x0, y0, x1, y1 = candidates.boxes.unbind(1)
    area = ((x1 - x0) * (y1 - y0)).tolist()
    best: dict[tuple, int] = {}
    for i, point in enumerate(map(tuple, candidates.points.tolist())):
        if point not in best or area[i] < area[best[point]]:
            best[point] = i
    return list(best.values())


def _nearest_similarity(
    embedding: np.ndarray, decoded: np.ndarray, points: np.ndarray, ix: np.ndarray, iy: np.ndarray, reach: int
) -> np.ndarray:
    """For grid points (indices `points`, cells (ix, iy)): the highest cosine similarity of their
    embedding (rows of `embedding`, unit length) with that of a decoded point within `reach`
    columns and rows, -1 where there is none. decoded: (columns, rows) grid of the decoded
    points' indices, -1 where not decoded."""
    padded = np.pad(decoded, reach, constant_values=-1)
    own = embedding[points]
    best = np.full(len(ix), -1.0)
    for dx in range(-reach, reach + 1):
        for dy in range(-reach, reach + 1):
            neighbour = padded[ix + reach + dx, iy + reach + dy]
            has = neighbour >= 0
            best[has] = np.maximum(best[has], (own[has] * embedding[neighbour[has]]).sum(1))
    return best


def grid_levels(
    grid: np.ndarray, strides: tuple[int, ...] = (4, 2)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse-to-fine level of each point of a grid (N, 2): 0 for every strides[0]-th column and
    row (centred), 1 for every strides[1]-th of the rest, ..., len(strides) for the others; and
    each point's column and row. Columns and rows are the ranks of the distinct x and y values,
    so any rectilinear grid works."""
    ix = np.unique(grid[:, 0], return_inverse=True)[1].reshape(-1)
    iy = np.unique(grid[:, 1], return_inverse=True)[1].reshape(-1)
    levels = np.full(len(grid), len(strides))
    for level in reversed(range(len(strides))):  # coarser levels overwrite finer ones
        step = strides[level]
        levels[(ix % step == step // 2) & (iy % step == step // 2)] = level
    return levels, ix, iy


# Limits of `check_generator_settings`: beyond them a run takes hours or cannot fit in memory
# (points_per_side=100000 asks for 74.5 GiB; crop layer i has 4**i crops, 30 layers ~1e18).
MAX_POINTS_PER_SIDE = 1024
MAX_CROP_LAYERS = 4


def check_generator_settings(
    points_per_side,
    points_per_batch,
    pred_iou_thresh,
    stability_score_thresh,
    stability_score_offset,
    box_nms_thresh,
    crop_n_layers,
    crop_nms_thresh,
    crop_overlap_ratio,
    crop_n_points_downscale_factor,
    min_mask_region_area,
) -> None:
    """Raise ValueError naming the setting if a `SamAutomaticMaskGenerator` setting is out of range
    (before anything is allocated)."""

    def integer(name, value, low, high=None):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004 - one error type for all settings
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{name} must be {bounds}, got {value}")

    def number(name, value, low, high):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            bounds = " ".join(
                filter(
                    None,
                    (
                        f"at least {low:g}" if math.isfinite(low) else "",
                        f"at most {high:g}" if math.isfinite(high) else "",
                    ),
                )
            )
            raise ValueError(f"{name} must be a finite number {bounds}".rstrip() + f", got {value}")

    if points_per_side is not None:
        integer("points_per_side", points_per_side, 1, MAX_POINTS_PER_SIDE)
    integer("points_per_batch", points_per_batch, 1)
    integer("crop_n_layers", crop_n_layers, 0, MAX_CROP_LAYERS)
    integer("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
    number("pred_iou_thresh", pred_iou_thresh, float("-inf"), float("inf"))
    number("stability_score_thresh", stability_score_thresh, float("-inf"), 1.0)
    number("stability_score_offset", stability_score_offset, 0.0, float("inf"))
    number("box_nms_thresh", box_nms_thresh, 0.0, 1.0)
    number("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0)
    number("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0)
    number("min_mask_region_area", min_mask_region_area, 0.0, float("inf"))
