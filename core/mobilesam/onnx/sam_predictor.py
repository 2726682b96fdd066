"""`OnnxSamPredictor`: `SamPredictor` with the encoder and decoder run by onnxruntime.

Pre- and postprocessing (resize, normalise, pad, mask upsampling) stay the torch code shared
with the torch path, so only the two networks change backend (`OnnxBackend`).
"""

import os

from ..modeling import Sam
from ..predictor import SamPredictor


class OnnxSamPredictor(SamPredictor):
    """`SamPredictor(model, backend="onnx", ...)`; see `OnnxBackend` for the options."""

    def __init__(
        self,
        sam_model: Sam,
        onnx_dir: str | os.PathLike | None = None,
        precision: str = "fp32",
        num_threads: int | None = None,
    ) -> None:
        super().__init__(
            sam_model, backend="onnx", onnx_dir=onnx_dir, precision=precision, num_threads=num_threads
        )
