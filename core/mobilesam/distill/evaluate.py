"""`evaluate`: the MobileSAM paper's measure of a distilled model against its reference.

For each object, prompt both models with a random point inside it (or its box) and report the
mean IoU of the model's masks against the reference's, plus encoder speed and size. Objects are
the image's SA-1B annotations (COCO RLE masks, from a tar shard or an `<image>.json` next to the
image) where it has them, as in the paper; otherwise the reference model's own masks for a grid
of points (duplicates dropped).
"""

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._types import PathLike
from ..build_sam import build_sam, detect_model_type, read_state_dict
from ..errors import CheckpointError
from ..image import to_rgb_uint8
from ..predictor import SamPredictor
from ..progress import ProgressCallback, raise_if_cancelled
from .sources import annotation_masks, open_source

PROMPTS = ("point", "box")
DUPLICATE_IOU = 0.9  # reference masks this similar to an earlier one are the same object


@dataclass
class ModelReport:
    checkpoint: str
    model_type: str
    encoder_params: int
    total_params: int
    encode_ms: float = math.nan  # mean image-encoder time per image (first image excluded as warm-up)


@dataclass
class EvaluationResult:
    prompt: str
    images: int
    objects: int
    objects_from: str  # "annotations" (SA-1B masks), "reference" (reference model's masks) or "both"
    miou: float
    model: ModelReport
    reference: ModelReport
    ious: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return asdict(self)


def load_for_evaluation(path: PathLike, image_size: int, device: str) -> tuple[SamPredictor, ModelReport]:
    model_type = detect_model_type(read_state_dict(path))
    if model_type is None:
        raise CheckpointError(f"checkpoint {path} is not a SAM/MobileSAM checkpoint")
    model = build_sam(model_type, path, image_size=image_size).to(device)
    report = ModelReport(
        str(path),
        model_type,
        sum(p.numel() for p in model.image_encoder.parameters()),
        sum(p.numel() for p in model.parameters()),
    )
    return SamPredictor(model), report


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def best_mask(predictor: SamPredictor, **prompt) -> np.ndarray:
    """The mask with the highest predicted IoU (point prompts are ambiguous: ask for 3)."""
    masks, scores, _ = predictor.predict(multimask_output="point_coords" in prompt, **prompt)
    return masks[int(np.argmax(scores))]


def reference_objects(
    reference: SamPredictor, height: int, width: int, n: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Up to `n` distinct non-empty reference masks from a shuffled grid of single-point prompts."""
    side = max(2, math.ceil(math.sqrt(4 * n)))
    ys, xs = np.meshgrid(
        (np.arange(side) + 0.5) * height / side, (np.arange(side) + 0.5) * width / side, indexing="ij"
    )
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)[rng.permutation(side * side)]
    objects: list[np.ndarray] = []
    for point in grid:
        mask = best_mask(reference, point_coords=point[None], point_labels=np.array([1]))
        if mask.any() and not mask.all() and all(mask_iou(mask, o) < DUPLICATE_IOU for o in objects):
            objects.append(mask)
            if len(objects) == n:
                break
    return objects


def object_prompt(mask: np.ndarray, prompt: str, rng: np.random.Generator) -> dict:
    ys, xs = np.nonzero(mask)
    if prompt == "box":
        return {"box": np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)}
    i = rng.integers(len(xs))
    return {"point_coords": np.array([[xs[i] + 0.5, ys[i] + 0.5]]), "point_labels": np.array([1])}


def timed_set_image(predictor: SamPredictor, image: np.ndarray) -> float:
    start = time.perf_counter()
    predictor.set_image(image)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def annotated_objects(
    annotations: list[dict], height: int, width: int, n: int, rng: np.random.Generator, name: str
) -> list[np.ndarray]:
    """Up to `n` non-empty annotation masks, drawn at random."""
    chosen = [annotations[i] for i in rng.permutation(len(annotations))]
    masks = [mask for mask in annotation_masks(chosen[: 2 * n], height, width, name) if mask.any()]
    return masks[:n]


def evaluate(
    model: PathLike,
    reference: PathLike,
    images: PathLike | Sequence[PathLike],
    prompt: str = "point",
    n: int = 16,
    image_size: int = 1024,
    seed: int = 0,
    device: str | None = None,
    max_images: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> EvaluationResult:
    """mIoU of `model`'s masks against `reference`'s on up to `n` objects per image.

    images: a folder, or (held-out) SA-1B tar shards; the first `max_images` names (sorted) if given.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, not {prompt!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = open_source(images)
    names = source.names[:max_images] if max_images else source.names
    student, student_report = load_for_evaluation(model, image_size, device)
    teacher, teacher_report = load_for_evaluation(reference, image_size, device)
    rng = np.random.default_rng(seed)
    ious: list[float] = []
    times: dict[str, list[float]] = {"model": [], "reference": []}
    origins = set()
    for done, name in enumerate(names):
        raise_if_cancelled(cancel, "evaluation cancelled")
        image = to_rgb_uint8(source.read(name))
        annotations = source.annotations(name)
        times["reference"].append(timed_set_image(teacher, image))
        times["model"].append(timed_set_image(student, image))
        if annotations is not None:
            origins.add("annotations")
            objects = annotated_objects(annotations, *image.shape[:2], n, rng, name)
        else:
            origins.add("reference")
            objects = reference_objects(teacher, *image.shape[:2], n, rng)
        for mask in objects:
            prompt_args = object_prompt(mask, prompt, rng)
            ious.append(mask_iou(best_mask(student, **prompt_args), best_mask(teacher, **prompt_args)))
        if progress:
            progress(done + 1, len(names))
    for report, key in ((student_report, "model"), (teacher_report, "reference")):
        measured = times[key][1:] or times[key]
        report.encode_ms = float(np.mean(measured))
    return EvaluationResult(
        prompt,
        len(names),
        len(ious),
        "both" if len(origins) > 1 else origins.pop(),
        float(np.mean(ious)) if ious else math.nan,
        student_report,
        teacher_report,
        ious,
    )
