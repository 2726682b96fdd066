"""`build_predictor`: the one way a front-end gets a predictor for (model, backend, ONNX folder).

The napari plugin, the Label Studio backend and the CLI all ask here, so a model loads, exports to
ONNX and finds its exported files the same way everywhere.
"""

import logging
import os

from ..errors import MobileSamError
from .backend import PRECISION_ENV, parse_backend, parse_onnx_precision, parse_precision

logger = logging.getLogger(__name__)


class BackendUnavailable(MobileSamError):
    """The chosen backend could not be started for a model that loaded fine (e.g. no onnxruntime)."""


def build_predictor(
    model=None,
    *,
    model_type: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    allow_download: bool = True,
    backend: str = "torch",
    onnx_dir: str | os.PathLike | None = None,
    onnx_precision: str = "fp32",
    num_threads: int | None = None,
    precision: str | None = None,
):
    """A `SamPredictor` on `model`, or on the model loaded from (model_type, checkpoint, device)
    with `mobilesam.load_model` when `model` is None.

    backend: "torch" or "onnx" (`parse_backend`). For ONNX, onnx_dir is where the exported models
    are kept (None: `mobilesam.onnx.default_onnx_dir` of the model type), onnx_precision "fp32" or
    "int8". precision: the torch encoder's arithmetic, "fp32", "bf16" or "auto" (bf16 on CPUs with native
    bf16), set on the model (`Sam.set_precision`); None: a given `model` keeps its own, a loaded one
    gets $MOBILESAM_PRECISION, else "auto".
    Slow (loading, ONNX export on first use): front-ends call it off their GUI/request thread.
    Raises `BackendUnavailable` when the model loaded but the backend could not start.
    """
    from .. import load_model  # the public name, so callers and tests can substitute it
    from ..predictor import SamPredictor

    backend = parse_backend(backend, "backend")
    onnx_precision = parse_onnx_precision(onnx_precision, "onnx_precision")
    if model is None:
        model = load_model(model_type, checkpoint, device=device, allow_download=allow_download)
        precision = precision or parse_precision(os.environ.get(PRECISION_ENV))
    if backend == "torch":
        if precision is not None and hasattr(model, "set_precision"):  # stand-ins have no such setting
            model.set_precision(parse_precision(precision, "precision"))
        return SamPredictor(model)
    from ..onnx.predictor import default_onnx_dir

    try:
        if onnx_dir is None:
            onnx_dir = default_onnx_dir(model_type or model)
        logger.info(
            "ONNX Runtime backend (%s): models in %s (exported if missing or stale)", onnx_precision, onnx_dir
        )
        return SamPredictor(
            model, backend="onnx", onnx_dir=onnx_dir, precision=onnx_precision, num_threads=num_threads
        )
    except Exception as exc:  # noqa: BLE001 - any failure to start the backend is reported as one
        raise BackendUnavailable(f"the {backend} backend could not be started: {exc}") from exc
