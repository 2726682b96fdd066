"""Model loading and embedding settings for the plugin: which predictor, which segmenter, which
cache folder and budgets, and the model identity of cached embeddings. No Qt here.

The model logic itself is the core's (`mobilesam.load_model`, `SamPredictor`, `VolumeEmbeddings`);
these helpers only turn the widget's settings into calls to it.
"""

import logging
import os
from pathlib import Path

from mobilesam import serving
from mobilesam.errors import MobileSamError
from mobilesam.prompt import Prompt
from mobilesam.serving.factory import BackendUnavailable  # noqa: F401 - the widget catches it

from ._segmenter import ImageSegmenter, VolumeSegmenter

logger = logging.getLogger(__name__)

EMBEDDING_MEMORY_ENV = "MOBILESAM_EMBEDDING_MEMORY_MB"
DEFAULT_EMBEDDING_MEMORY_MB = 2048  # 512 slice embeddings of 4 MB: work done is not thrown away
EMBEDDING_CACHE_ENV = "MOBILESAM_EMBEDDING_CACHE_MB"
DEFAULT_EMBEDDING_CACHE_MB = 4096  # budget of the default cache folder; a chosen folder has none


def build_predictor(model_key: tuple[str, str, str], model=None):
    """A `SamPredictor` for the widget's (model type, checkpoint, backend), loading the weights
    unless `model` is given (the core's `mobilesam.serving.build_predictor`). Slow (loading, ONNX
    export on first use): call it in a worker thread. Raises `BackendUnavailable` when the model
    loaded but the backend could not start (the widget then returns to the previous backend)."""
    model_type, checkpoint, backend = model_key
    # With a checkpoint the architecture is read from its weights, whatever the Model box says.
    return serving.build_predictor(
        model, model_type=None if checkpoint else model_type, checkpoint=checkpoint or None, backend=backend
    )


def make_segmenter(predictor, data, info, cache_dir: str | None, model_key: tuple[str, str, str]):
    """The image's segmenter. Its embeddings land in `cache_dir` (None: memory only); the default
    folder has a size budget, and a chosen folder first reuses what the default one already holds."""
    default = default_cache_dir()
    if cache_dir is not None and not _can_persist():
        if Path(cache_dir) != default:
            raise MobileSamError(
                "an embedding cache folder needs zarr: pip install 'napari-mobilesam[volume]'"
            )
        cache_dir = None  # the default persistence is a bonus, not a requirement
    in_default = cache_dir is not None and Path(cache_dir) == default
    options = dict(
        cache_dir=cache_dir,
        model_id=_model_id(predictor, model_key) if cache_dir else None,
        cache_max_bytes=_megabytes(EMBEDDING_CACHE_ENV, DEFAULT_EMBEDDING_CACHE_MB) * 2**20
        if in_default
        else None,
        read_also=(default,) if cache_dir is not None and not in_default else (),
    )
    if info.is_volume:
        return VolumeSegmenter(predictor, data, info, max_in_memory=_slices_in_memory(), **options)
    return ImageSegmenter(predictor, data, info, **options)


def _can_persist() -> bool:
    import importlib.util

    return importlib.util.find_spec("zarr") is not None


def _slices_in_memory() -> int:
    """How many slice embeddings (4 MB each) fit the memory budget ($MOBILESAM_EMBEDDING_MEMORY_MB)."""
    return max(1, _megabytes(EMBEDDING_MEMORY_ENV, DEFAULT_EMBEDDING_MEMORY_MB) // 4)


def _megabytes(env: str, default: int) -> int:
    try:
        return max(1, int(float(os.environ.get(env, default))))
    except ValueError:
        logger.warning("%s must be a number of megabytes; using %d", env, default)
        return default


def default_cache_dir() -> Path:
    from mobilesam.weights import cache_dir

    return cache_dir() / "embeddings.zarr"


def slice_prompts(by_slice: dict[int, Prompt]) -> list:
    from mobilesam.volume import SlicePrompt

    return [SlicePrompt.from_prompt(z, prompt) for z, prompt in sorted(by_slice.items())]


def _model_id(predictor, model_key: tuple[str, str, str]) -> str | None:
    """Identity of the weights for the embedding cache (`mobilesam.serving.model_identity`): from the
    checkpoint file when one is chosen, else from the loaded weights. A predictor without a `model`
    (a custom or stand-in one) is identified by the widget's model setting."""
    from mobilesam.serving import model_identity

    model_type, checkpoint = model_key[:2]
    model = getattr(predictor, "model", None)
    if checkpoint:
        size = getattr(getattr(model, "image_encoder", None), "img_size", None)
        precision = getattr(model, "precision", None)  # a bf16 encoder's embeddings are its own
        return model_identity(
            model_type=model_type, checkpoint=checkpoint, input_size=size, precision=precision
        )
    if model is not None:
        return model_identity(model, model_type=model_type)
    return f"standin-{model_type}"
