"""An existing mask as a SAM prompt: refine a segmentation made elsewhere (Cellpose, StarDist, a
previous session) with a few points.

SAM takes a mask as `mask_input`: low-resolution logits (1, 256, 256) in the frame of the
resized, bottom/right-padded model input. `mask_prompt` turns a binary (H, W) mask into that and
into its bounding box; `refine_mask` asks the predictor for the mask given box + mask input +
the user's points; `refine_object` does it on every slice a 3-D object covers (and on slices
where only points were added). Everything goes through the public `SamPredictor` API
(`predict`, `set_embedding` via `VolumeEmbeddings`), so any backend or a stand-in predictor works.
"""

import threading
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled
from .transforms import ResizeLongestSide

# Inside/outside logit of a given mask: sigmoid(±7) = 0.999 / 0.001, a confident mask in the
# range of SAM's own low-res logits. The padding (outside the image) stays 0: SAM's mask input
# was trained on its own predictions, which carry no information there.
MASK_INPUT_LOGIT = 7.0
DEFAULT_INPUT_SIZE = 1024


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) XYXY box around the True pixels of (H, W) `mask`, edges exclusive (x1 = last column + 1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the mask is empty: nothing to refine")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def mask_input_logits(mask: np.ndarray, input_size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """(H, W) bool mask -> (1, S, S) float32 logits for `predict(mask_input=...)`, S = input_size // 4.

    The mask is resized as the image is (longest side to S, antialiased) and padded bottom/right.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    size = input_size // 4
    height, width = ResizeLongestSide.get_preprocess_shape(mask.shape[0], mask.shape[1], size)
    fraction = F.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0, 0].numpy()
    logits = np.zeros((1, size, size), np.float32)
    logits[0, :height, :width] = (2.0 * np.clip(fraction, 0.0, 1.0) - 1.0) * MASK_INPUT_LOGIT
    return logits


def _input_size(predictor) -> int:
    transform = getattr(predictor, "transform", None)
    return int(getattr(transform, "target_length", DEFAULT_INPUT_SIZE))


def refine_mask(
    predictor,
    mask: np.ndarray,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """The predictor's mask for prompts box + mask input of `mask` (+ points) on its current image.

    mask: (H, W) bool, the object as it is now. point_coords (N, 2) (x, y) pixels, point_labels
    (N,) 1/0. Returns the refined (H, W) bool mask and its predicted IoU. One mask is asked for
    (multimask_output=False): box and mask together leave no ambiguity to choose from.
    """
    masks, scores, _ = predictor.predict(
        point_coords=point_coords,
        point_labels=point_labels,
        box=mask_box(mask),
        mask_input=mask_input_logits(mask, _input_size(predictor)),
        multimask_output=False,
    )
    return np.asarray(masks[0], dtype=bool), float(scores[0])


def refine_object(
    embeddings,
    mask: np.ndarray,
    points: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Refine an object of a volume on every slice it covers.

    embeddings: a `mobilesam.volume.VolumeEmbeddings` sliced along axis 0 (slices encoded on demand).
    mask: (Z, Y, X) bool, the object now. points: slice -> ((N, 2) (x, y) coordinates, (N,) labels
    1/0), the user's corrections. A slice the object covers is prompted with its box + mask input
    (+ its points); a slice it does not cover but with a positive point gets the best-scored mask
    of its points alone. Returns the refined (Z, Y, X) bool mask.
    """
    mask = np.asarray(mask, dtype=bool)
    points = dict(points or {})
    covered = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist()
    pointed = [z for z, (_, labels) in points.items() if np.any(np.asarray(labels) == 1)]
    slices = sorted(set(covered) | set(pointed))
    out = np.zeros_like(mask)
    for done, z in enumerate(slices):
        if cancel is not None and cancel.is_set():
            raise Cancelled("refinement cancelled")
        if progress is not None:
            progress(done, len(slices))
        embeddings.set_slice(z)
        coords, labels = points.get(z, (None, None))
        if mask[z].any():
            out[z], _ = refine_mask(embeddings.predictor, mask[z], coords, labels)
        else:
            candidates, scores, _ = embeddings.predictor.predict(
                point_coords=coords, point_labels=labels, multimask_output=True
            )
            out[z] = np.asarray(candidates[int(np.argmax(scores))], dtype=bool)
    if progress is not None:
        progress(len(slices), len(slices))
    return out
