"""ONNX Runtime path: export MobileSAM to ONNX and run it with onnxruntime.

- `export_onnx(model, out_dir)` writes `encoder.onnx` (preprocessed (1, 3, S, S) image ->
  (1, 256, S/16, S/16) embedding) and `decoder.onnx` (prompt encoder + mask decoder: embedding,
  points with a dynamic count, box as two corner points, optional mask input -> all four mask
  logits and IoU predictions). `mobilesam export-onnx` is the command-line form.
- `OnnxSamPredictor(model)`, equivalently `mobilesam.SamPredictor(model, backend="onnx")`: the
  `SamPredictor` API (set_image, predict, predict_torch, get_embedding_state, set_embedding) with
  the encoder and decoder run by onnxruntime; outputs match the torch path within 1e-3.

onnx/onnxruntime are optional dependencies (`pip install napari-mobilesam[onnx]`); they are
imported only when this path is used.
"""

from .export import DECODER_FILE, ENCODER_FILE, export_onnx, quantize_onnx
from .predictor import OnnxBackend, OnnxSamPredictor

__all__ = ["export_onnx", "quantize_onnx", "OnnxSamPredictor", "OnnxBackend", "ENCODER_FILE", "DECODER_FILE"]
