"""`OnnxSamPredictor`: `SamPredictor` with the encoder and decoder run by onnxruntime.

Pre- and postprocessing (resize, normalise, pad, mask upsampling) stay the torch code shared
with the torch path, so only the two networks change backend.
"""

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import MobileSamError
from ..modeling import Sam
from ..predictor import SamPredictor
from ..runtime import usable_cpus
from .export import DECODER_FILE, ENCODER_FILE, FINGERPRINT_FILE, export_onnx, quantize_onnx, weights_fingerprint

PRECISIONS = ("fp32", "int8")


class OnnxBackend:
    """The encoder and prompt decoder as onnxruntime sessions for one model's weights.

    onnx_dir: where the exported models live. Files there are reused when their fingerprint
    matches the model's weights, else (re-)exported; None exports into a private temporary
    directory removed with this object.
    precision: "fp32", or "int8" for dynamic int8 quantisation of MatMul/Gemm weights (smaller,
    faster on some CPUs, less accurate: see benchmarks/run.py for the measured mask IoU).
    """

    def __init__(self, model: Sam, onnx_dir: Union[str, os.PathLike, None] = None, precision: str = "fp32",
                 num_threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MobileSamError(
                "backend='onnx' needs onnxruntime and onnx: pip install 'napari-mobilesam[onnx]'"
            ) from exc
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self._tmp = None
        if onnx_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mobilesam-onnx-")
            onnx_dir = self._tmp.name
        encoder_path, decoder_path = self._ensure_exported(model, Path(onnx_dir), precision)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = num_threads or usable_cpus()
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), options, providers=providers)
        self.mask_input_size = model.prompt_encoder.mask_input_size
        self.precision = precision

    @staticmethod
    def _ensure_exported(model: Sam, onnx_dir: Path, precision: str) -> tuple[Path, Path]:
        fingerprint = weights_fingerprint(model)
        encoder, decoder = onnx_dir / ENCODER_FILE, onnx_dir / DECODER_FILE
        stamp = onnx_dir / FINGERPRINT_FILE
        fresh = encoder.exists() and decoder.exists() and stamp.exists() and stamp.read_text().strip() == fingerprint
        if not fresh:
            export_onnx(model, onnx_dir)
        if precision == "fp32":
            return encoder, decoder
        quantized = []
        for path in (encoder, decoder):
            target = path.with_name(path.stem + ".int8.onnx")
            if not fresh or not target.exists():
                quantize_onnx(path, target)
            quantized.append(target)
        return quantized[0], quantized[1]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) normalised, padded image -> (1, 256, S/16, S/16) embedding."""
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        (features,) = self.encoder.run(None, {"image": array})
        return torch.from_numpy(features)

    def decode(self, features: torch.Tensor, points, boxes, mask_input, multimask_output: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `SamPredictor.decode`: points ((B, N, 2), (B, N)), boxes (B, 4), mask_input (B, 1, 256, 256)."""
        coords, labels = self._point_inputs(points, boxes)
        if mask_input is None:
            mask = np.zeros((1, 1, *self.mask_input_size), np.float32)
            has_mask = np.zeros(1, np.float32)
        else:
            mask = np.ascontiguousarray(_numpy(mask_input), dtype=np.float32)
            has_mask = np.ones(1, np.float32)
        low_res, iou = self.decoder.run(None, {
            "image_embeddings": np.ascontiguousarray(_numpy(features), dtype=np.float32),
            "point_coords": coords, "point_labels": labels,
            "mask_input": mask, "has_mask_input": has_mask,
        })
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return torch.from_numpy(low_res[:, keep]), torch.from_numpy(iou[:, keep])

    @staticmethod
    def _point_inputs(points, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Points, then box corners labelled 2 and 3; without a box one padding point labelled -1,
        as the torch prompt encoder adds its "not a point" token."""
        coords, labels = [], []
        if points is not None:
            coords.append(_numpy(points[0]).astype(np.float32))
            labels.append(_numpy(points[1]).astype(np.float32))
        batch = coords[0].shape[0] if coords else (len(boxes) if boxes is not None else 1)
        if boxes is not None:
            coords.append(_numpy(boxes).astype(np.float32).reshape(-1, 2, 2))
            labels.append(np.tile(np.array([[2, 3]], np.float32), (batch, 1)))
        elif points is not None:
            coords.append(np.zeros((batch, 1, 2), np.float32))
            labels.append(-np.ones((batch, 1), np.float32))
        if not coords:
            return np.zeros((batch, 0, 2), np.float32), np.zeros((batch, 0), np.float32)
        return np.concatenate(coords, axis=1), np.concatenate(labels, axis=1)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class OnnxSamPredictor(SamPredictor):
    """`SamPredictor(model, backend="onnx", ...)`; see `OnnxBackend` for the options."""

    def __init__(self, sam_model: Sam, onnx_dir: Union[str, os.PathLike, None] = None, precision: str = "fp32",
                 num_threads: Optional[int] = None) -> None:
        super().__init__(sam_model, backend="onnx", onnx_dir=onnx_dir, precision=precision, num_threads=num_threads)
