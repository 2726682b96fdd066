"""`parse_backend`: the one reading of the `MOBILESAM_BACKEND` setting, shared by every front-end
(and `parse_precision`, the same for `MOBILESAM_PRECISION`).

An empty or unset value means "torch"; case and surrounding spaces do not matter; anything else
is an error naming the allowed values. A server stops at startup on it; the napari dock shows the
same message as a warning and starts on torch (a GUI cannot refuse to open). Torch-free: settings
are read before (and without) the model.
"""

import os
from collections.abc import Mapping

BACKENDS = ("torch", "onnx")
ONNX_PRECISIONS = ("fp32", "int8")
BACKEND_ENV = "MOBILESAM_BACKEND"
DEFAULT_BACKEND = "torch"
PRECISIONS = ("fp32", "bf16", "auto")  # as `mobilesam.runtime.PRECISIONS` (torch-free here)
PRECISION_ENV = "MOBILESAM_PRECISION"
# The front-ends' encoder arithmetic: bf16 where the CPU has it natively, since the bf16 encoder
# meets issue 18's agreement bounds (embedding within 1e-2 of fp32, masks IoU >= 0.98) and is
# ~20% faster; fp32 elsewhere. The Python API (`build_sam`, `load_model`) stays fp32.
DEFAULT_PRECISION = "auto"


def parse_backend(value: str | None, name: str = BACKEND_ENV) -> str:
    """ "torch" or "onnx" from a setting's text (None or blank: "torch").

    Raises ValueError "MOBILESAM_BACKEND must be one of torch, onnx, not 'tensorrt'" (`name` is the
    setting named in the message)."""
    backend = (value or "").strip().lower() or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def backend_from_env(env: Mapping[str, str] | None = None) -> str:
    """`parse_backend` of $MOBILESAM_BACKEND in `env` (default os.environ)."""
    env = os.environ if env is None else env
    return parse_backend(env.get(BACKEND_ENV))


def parse_onnx_precision(value: str | None, name: str = "MOBILESAM_ONNX_PRECISION") -> str:
    """ "fp32" or "int8" from a setting's text (None or blank: "fp32"); ValueError naming the allowed values."""
    precision = (value or "").strip().lower() or ONNX_PRECISIONS[0]
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(ONNX_PRECISIONS)}, not {precision!r}")
    return precision


def parse_precision(value: str | None, name: str = PRECISION_ENV) -> str:
    """ "fp32", "bf16" or "auto" from a setting's text (None or blank: DEFAULT_PRECISION);
    ValueError naming the allowed values."""
    precision = (value or "").strip().lower() or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def encoder_precision(precision: str, model_type: str | None) -> str:
    """The arithmetic a `model_type` encoder really runs for a precision setting: "bf16" or "fp32".

    Only TinyViT encoders (vit_t and its variants) have a bf16 path; "auto" means fp32 for the
    others, and bf16 only where the CPU has it (`mobilesam.runtime.resolve_precision`, which
    refuses "bf16" on a CPU without it). Known before the model loads, for cache names."""
    from ..model_zoo import MODEL_VARIANTS
    from ..runtime import resolve_precision

    precision = parse_precision(precision, "precision")
    variant = MODEL_VARIANTS.get(model_type or "vit_t")
    if variant is not None and variant.architecture != "vit_t":
        if precision == "bf16":
            raise ValueError(f"precision 'bf16': {model_type} has no low-precision path (only vit_t)")
        return "fp32"
    return resolve_precision(precision)
