"""ONNX Runtime path: export MobileSAM to ONNX and run it with onnxruntime.

- `export_onnx(model, out_dir)` writes `encoder.onnx` (preprocessed (1, 3, S, S) image ->
  (1, 256, S/16, S/16) embedding) and `decoder.onnx` (prompt encoder + mask decoder: embedding,
  points with a dynamic count, box as two corner points, optional mask input -> all four mask
  logits and IoU predictions), plus that decoder in two parts for segment everything
  (`decoder_head.onnx`: IoU predictions, hypernetwork outputs and image tokens;
  `decoder_upscale.onnx`: masks for the prompts whose IoU passes, as the torch path upscales only
  those). `mobilesam export-onnx` is the command-line form.
- `OnnxSamPredictor(model)`, equivalently `mobilesam.SamPredictor(model, backend="onnx")`: the
  `SamPredictor` API (set_image, predict, predict_torch, get_embedding_state, set_embedding) with
  the encoder and decoder run by onnxruntime; outputs match the torch path within 1e-3.

- `precision="int8"`: the encoder's linear layers in int8, statically calibrated on a fixed
  image set (`mobilesam.onnx.int8`), with the fp32 decoder; opt-in, less accurate, faster on
  CPUs with VNNI / AMX-INT8 (benchmarks/int8.py measures speed and agreement with fp32).

onnx/onnxruntime are optional dependencies (`pip install napari-mobilesam[onnx]`); they are
imported only when this path is used.

- `StandalonePredictor(onnx_dir)`: the same predict API on exported models with onnxruntime and
  numpy only; torch is never imported (a server or script that only runs inference needs ~1/4 of
  the memory: see benchmarks/run.py).

Front-ends keep exported models in `default_onnx_dir(model_type)` (under the weights cache dir),
so only the first start exports; concurrent processes using one folder take turns on a file lock.
"""

from .._lazy import lazy_attributes

# Loaded on first use: `mobilesam.onnx.standalone` runs exported models without torch, which the
# exporter and the torch-backed predictor need.
_LAZY = {
    "DECODER_FILE": "layout",
    "ENCODER_FILE": "layout",
    "export_onnx": "export",
    "quantize_onnx": "export",
    "BACKENDS": "predictor",
    "PRECISIONS": "predictor",
    "OnnxBackend": "predictor",
    "OnnxSamPredictor": "sam_predictor",
    "default_onnx_dir": "predictor",
    "StandalonePredictor": "standalone",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "export_onnx",
    "quantize_onnx",
    "OnnxSamPredictor",
    "OnnxBackend",
    "ENCODER_FILE",
    "DECODER_FILE",
    "default_onnx_dir",
    "BACKENDS",
    "PRECISIONS",
    "StandalonePredictor",
]
