"""Automatic instance segmentation (AIS) with micro-sam's decoder: one encoder pass, one decoder
pass, then a seeded watershed, instead of a 1,024-prompt segment-everything.

    segmenter = InstanceSegmenter.from_checkpoints("vit_t_lm")   # or (sam, decoder)
    labels = segmenter.segment(image)                            # (H, W) uint32, 0 = background

Post-processing follows micro-sam's `InstanceSegmentationWithDecoder.generate` (defaults included):
Gaussian-smooth the foreground (sigma 1.0) and both distance maps (sigma 1.6); seeds are the
connected components where both distances are below their thresholds inside the foreground; a
watershed of the boundary-distance map grows them over the foreground. micro-sam runs these steps
with bioimage_cpp; here they are scipy/scikit-image with the same kernels (mirror borders, radius
3 sigma) and connectivities. Its watershed quantizes heights to 65,536 levels and leaves the order
within a level unspecified, so the two can disagree on a few pixels where two regions meet at the
same quantized height; everything else is identical.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CheckpointError

DECODER_CHECKPOINT_ENV = (
    "MOBILESAM_DECODER_CHECKPOINT"  # AIS decoders' own variable (models: MOBILESAM_CHECKPOINT)
)

# Gaussian kernels reach 3 sigma, as vigra's / bioimage_cpp's do (scipy's default is 4).
GAUSSIAN_TRUNCATE = 3.0


@dataclass(frozen=True)
class AISParameters:
    """Thresholds and smoothing of the watershed step (micro-sam's defaults)."""

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with mirrored borders, float32 in and out."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return image
    return gaussian_filter(image.astype(np.float64), sigma, mode="mirror", truncate=GAUSSIAN_TRUNCATE).astype(
        np.float32
    )


def watershed_from_maps(
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    params: AISParameters = AISParameters(),
) -> np.ndarray:
    """Instance labels (H, W) uint32 from the decoder's three (H, W) maps (unsmoothed)."""
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    foreground = smooth(foreground, params.foreground_smoothing)
    center = smooth(center_distances, params.distance_smoothing)
    boundary = smooth(boundary_distances, params.distance_smoothing)
    fg_mask = foreground > params.foreground_threshold
    seeds = (
        (center < params.center_distance_threshold)
        & (boundary < params.boundary_distance_threshold)
        & fg_mask
    )
    markers = label(seeds)  # full (8-) connectivity, as micro-sam
    labels = watershed(boundary, markers=markers, mask=fg_mask)  # 4-connected flooding, as micro-sam
    if params.min_size > 0:
        ids, sizes = np.unique(labels, return_counts=True)
        labels[np.isin(labels, ids[sizes < params.min_size])] = 0
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.uint32)


class InstanceSegmenter:
    """A SAM model plus micro-sam's AIS decoder on its image embedding."""

    def __init__(self, sam, decoder, predictor=None) -> None:
        """predictor: an existing `SamPredictor` of `sam` to share (its current embedding can then be
        segmented without encoding again, see `predict_maps`); None = a new one."""
        from .predictor import SamPredictor

        self.predictor = predictor if predictor is not None else SamPredictor(sam)
        self.decoder = decoder.eval()

    @classmethod
    def from_checkpoints(
        cls,
        model_type: str,
        checkpoint=None,
        decoder_checkpoint=None,
        allow_download: bool = True,
        device: str | None = None,
        precision: str = "fp32",
    ) -> "InstanceSegmenter":
        """Load a micro-sam model (e.g. vit_t_lm) and its decoder, resolved like `mobilesam.load_model`
        (precision: its encoder's arithmetic, `Sam.set_precision`)."""
        from .build_sam import load_model

        decoder_type = decoder_weights_name(model_type)  # fails before any loading for a model without one
        sam = load_model(
            model_type, checkpoint, device=device, allow_download=allow_download, precision=precision
        )
        path = resolve_decoder_checkpoint(decoder_type, decoder_checkpoint, allow_download)
        decoder = load_decoder(path, image_size=sam.image_encoder.img_size)
        return cls(sam, decoder.to(sam.device))

    @torch.inference_mode()
    def predict_maps(self, image: np.ndarray | None = None) -> np.ndarray:
        """(3, H, W) float32 foreground, centre-distance and boundary-distance maps of an RGB image;
        image None: of the image whose embedding the predictor holds (set_image / set_embedding)."""
        if image is not None:
            self.predictor.set_image(image)
        maps = self.decoder(self.predictor.features, self.predictor.input_size, self.predictor.original_size)
        return maps[0].float().cpu().numpy()

    def segment(self, image: np.ndarray | None, params: AISParameters = AISParameters()) -> np.ndarray:
        """(H, W) uint32 instance labels of an (H, W, 3) uint8 RGB image (None: the predictor's
        current one, see `predict_maps`); 0 is background."""
        foreground, center, boundary = self.predict_maps(image)
        return watershed_from_maps(foreground, center, boundary, params)


def _ais_variants():
    from .model_zoo import MODEL_VARIANTS

    return [v for v in MODEL_VARIANTS.values() if v.ais_decoder is not None]


def ais_model_types() -> tuple:
    """Names of the models that have an AIS decoder (vit_t_lm, vit_t_em_organelles)."""
    return tuple(v.name for v in _ais_variants())


def decoder_weights_name(model_type: str) -> str:
    """The weights name of `model_type`'s AIS decoder (e.g. vit_t_lm_decoder); ValueError if it has none."""
    from .model_zoo import get_variant

    variant = get_variant(model_type)
    if variant.ais_decoder is None:
        raise ValueError(
            f"{model_type} has no automatic instance segmentation decoder; choose one of "
            f"{', '.join(ais_model_types())}"
        )
    return variant.ais_decoder.model_type


def resolve_decoder_checkpoint(decoder_type: str, decoder_checkpoint=None, allow_download: bool = True):
    """The decoder file: `decoder_checkpoint`, else $MOBILESAM_DECODER_CHECKPOINT, else the cached
    file, else a download (`mobilesam.weights.resolve_checkpoint`)."""
    from .weights import resolve_checkpoint

    return resolve_checkpoint(
        decoder_type, decoder_checkpoint, allow_download=allow_download, env_var=DECODER_CHECKPOINT_ENV
    )


def read_decoder_state(path: str | os.PathLike) -> dict:
    """micro-sam's decoder state from a `*_decoder.pt` file (a bare state dict) or from a combined
    checkpoint {"model_state": ..., "decoder_state": ...}; read with weights_only=True."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"decoder checkpoint {path} could not be read ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("decoder_state"), dict):
        obj = obj["decoder_state"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"decoder checkpoint {path} holds no state dict of tensors")
    if "out_conv.weight" not in obj or not any(k.startswith("decoder.samplers") for k in obj):
        found = "a SAM model checkpoint" if any(k.startswith("image_encoder.") for k in obj) else "not one"
        raise CheckpointError(
            f"{path} is {found}; an instance segmentation decoder (micro-sam "
            "*_decoder.pt, keys out_conv.*, decoder.samplers.*) was asked for"
        )
    return obj


def load_decoder(path: str | os.PathLike, image_size: int = 1024):
    """micro-sam's AIS decoder with the weights of `path`, strictly loaded, in eval mode."""
    from .modeling.instance_decoder import InstanceSegmentationDecoder

    state = read_decoder_state(path)
    decoder = InstanceSegmentationDecoder.from_state_dict(state, image_size=image_size)
    own = decoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"decoder checkpoint {path} does not match micro-sam's decoder: {len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(wrong)} of another shape "
            f"(e.g. {example})"
        )
    decoder.load_state_dict(state, strict=True)
    return decoder.eval()
