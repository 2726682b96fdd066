"""MobileSAM core: models, predictor, automatic masks, volumes, weights.

Drop-in for segment_anything: `build_sam`, `sam_model_registry`, `SamPredictor`,
`SamAutomaticMaskGenerator`.
"""

from .build_sam import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    sam_model_registry,
)
from .automatic_mask_generator import SamAutomaticMaskGenerator
from .errors import Cancelled, CheckpointError, MissingWeightsError, MobileSamError
from .predictor import EmbeddingState, SamPredictor

__version__ = "0.1.0"

__all__ = [
    "build_sam", "build_sam_vit_t", "build_sam_vit_b", "build_sam_vit_l", "build_sam_vit_h",
    "sam_model_registry", "SamPredictor", "EmbeddingState", "SamAutomaticMaskGenerator",
    "CheckpointError", "MissingWeightsError", "MobileSamError", "Cancelled", "load_model",
]


def load_model(model_type=None, checkpoint=None, device=None, allow_download=True, exact=False):
    """Build a model with weights resolved by `mobilesam.weights.resolve_checkpoint`.

    model_type None means: the architecture of the given checkpoint, else "vit_t".
    exact=True: bit-identical to the official code instead of the fast path (`Sam.set_exact`).
    """
    import torch

    from .build_sam import detect_model_type, read_state_dict
    from .weights import resolve_checkpoint

    path = resolve_checkpoint(model_type or "vit_t", checkpoint, allow_download=allow_download)
    if model_type is None:
        model_type = detect_model_type(read_state_dict(path)) or "vit_t"
    model = build_sam(model_type, path, exact=exact)
    return model.to(torch.device(device)) if device else model
