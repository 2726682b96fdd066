"""`parse_backend`: the one reading of the `MOBILESAM_BACKEND` setting, shared by every front-end.

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
