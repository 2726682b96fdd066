"""Static int8 quantisation of the exported image encoder, calibrated on a fixed set of images.

Dynamic quantisation (`quantize_onnx`) measures each activation's range at run time, per image.
Static quantisation fixes the scale of every quantised input beforehand, from calibration images
run through the encoder, so the int8 linear layers run as single fused kernels (VNNI / AMX-INT8
on x86, dot-product instructions on ARM) with no range pass per image; weights are quantised per
output channel. Only the linear layers are quantised and their outputs stay float (see
`quantize_encoder_static`); the prompt decoder stays fp32 (the old path's dynamic int8 decoder
lowered the mean mask IoU vs fp32 by another 0.005-0.014 and saved no time: benchmarks/int8.py).

The calibration set is deterministic, so the same weights always give the same int8 file:
`calibration_images()` (the packaged sample image, two crops of it and seeded synthetic scenes),
each preprocessed as the predictors do (`encoder_input`). numpy, onnx and onnxruntime only.
"""

import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .layout import encoder_input

# The encoder's linear layers (MatMul + bias, fused to Gemm; MatMul with constant weights):
# about half its time in fp32. Measured on random-weight vit_t at 1024 px when this was chosen:
# also quantising the convolutions (int8 outputs, which their fused kernel needs) took the
# embedding's relative error from ~0.065 to 0.16-0.34 and made the encoder slower than fp32
# (Q/DQ pairs around every GELU); quantising the MatMul form instead of Gemm (MatMulIntegerToFloat)
# was no faster than fp32.
QUANTIZED_OPS = ("Gemm", "MatMul")
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample_coins.png"


def calibration_images() -> list[np.ndarray]:
    """The fixed calibration set: (H, W, 3) uint8 RGB images of varied size, aspect, contrast
    and content (the packaged sample image and two crops of it, seeded synthetic scenes)."""
    from PIL import Image

    sample = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB"))
    h, w = sample.shape[:2]
    rng = np.random.default_rng(0)
    images = [sample, sample[: h // 2, : w // 2], sample[h // 3 :, w // 4 :]]
    images.append(_shapes_scene(rng, 480, 640, dark=True))
    images.append(_shapes_scene(rng, 600, 400, dark=False))
    images.append(_texture_scene(rng, 512, 512))
    return images


def _shapes_scene(rng: np.random.Generator, h: int, w: int, dark: bool) -> np.ndarray:
    """Filled discs and rectangles of random colours on a smooth gradient background, with noise."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = 40.0 if dark else 180.0
    image = (
        base
        + 40.0 * (xx / w)[..., None] * rng.uniform(-1, 1, 3)
        + 30.0 * (yy / h)[..., None] * rng.uniform(-1, 1, 3)
    )
    for _ in range(12):
        colour = rng.uniform(0, 255, 3)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.03, 0.15) * min(h, w)
        if rng.random() < 0.5:
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = colour
        else:
            image[int(max(cy - r, 0)) : int(cy + r), int(max(cx - 1.5 * r, 0)) : int(cx + 1.5 * r)] = colour
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _texture_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Band-limited coloured noise (textures at several scales), full intensity range."""
    from PIL import Image

    image = np.zeros((h, w, 3), np.float32)
    for scale, weight in ((8, 1.0), (32, 0.6), (128, 0.3)):
        small = rng.uniform(0, 255, (max(h // scale, 2), max(w // scale, 2), 3)).astype(np.uint8)
        image += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    image -= image.min()
    return (image * (255.0 / max(image.max(), 1.0))).astype(np.uint8)


class EncoderCalibrationReader:
    """onnxruntime `CalibrationDataReader` feeding the encoder input of each calibration image."""

    def __init__(self, images: list[np.ndarray], img_size: int, input_name: str = "image") -> None:
        self._inputs = iter([{input_name: encoder_input(image, img_size)[0]} for image in images])

    def get_next(self) -> dict | None:
        return next(self._inputs, None)


def quantize_encoder_static(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    images: list[np.ndarray] | None = None,
    method: str = "minmax",
    op_types: tuple[str, ...] = QUANTIZED_OPS,
    per_channel: bool = True,
) -> Path:
    """Static int8 quantisation (QDQ) of the exported encoder `src` into `dst`, calibrated on
    `images` (default `calibration_images()`).

    Quantised: the `op_types` nodes (default the linear layers, `QUANTIZED_OPS`), with int8
    weights per output channel (symmetric) and uint8 inputs at the calibrated scales (`method`:
    "minmax", "percentile" or "entropy"); their outputs stay float, so every other op (GELU,
    LayerNorm, softmax, attention products, residual sums, convolutions) runs in fp32 on exact
    values. Returns `dst`, written atomically.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, not {method!r}")
    src, dst = Path(src), Path(dst)
    (encoder_image,) = onnx.load(str(src), load_external_data=False).graph.input
    img_size = encoder_image.type.tensor_type.shape.dim[-1].dim_value
    reader = EncoderCalibrationReader(calibration_images() if images is None else images, img_size)
    with (
        tempfile.TemporaryDirectory(prefix="mobilesam-int8-") as work,
        atomic_write(dst, suffix=".part") as tmp,
        _without_preprocessing_advice(),
    ):
        prepared = _optimized(src, Path(work) / "prepared.onnx")
        model = onnx.load(str(prepared))
        linear = _linear_layers(model.graph, op_types)
        _own_weights(model.graph, linear)
        onnx.save(model, str(prepared))
        quantize_static(
            str(prepared),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_quantize=[node.name for node in linear],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,  # u8 x s8 is what VNNI's dot product takes
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            # Float outputs: onnxruntime fuses each into one QGemm / MatMulIntegerToFloat kernel,
            # and no Q/DQ pair surrounds the float ops in between (which made a fully quantised
            # encoder slower than fp32 and 3-4x less accurate).
            extra_options={"OpTypesToExcludeOutputQuantization": list(op_types)},
        )
    return dst


def _linear_layers(graph, op_types: tuple[str, ...]) -> list:
    """The `op_types` nodes whose weights (every input but the first) are constants: the
    linear layers, not attention's products of two activations, which stay float."""
    weights = {tensor.name for tensor in graph.initializer}
    return [
        node
        for node in graph.node
        if node.op_type in op_types and all(name in weights for name in node.input[1:])
    ]


def _own_weights(graph, nodes: list) -> None:
    """Give each of `nodes` its own copy of every constant it shares with another node.

    The exporter stores identical tensors once (e.g. the zero biases of a freshly initialised
    model, shared by linear layers, convolutions and LayerNorms). Quantising a linear layer's
    bias in place would hand the int32 copy, behind a DequantizeLinear, to the convolutions too:
    they then dequantise it on every run and lose onnxruntime's blocked-layout kernels (measured
    1.5x slower convolutions)."""
    import onnx

    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    for node in nodes:
        for i, name in enumerate(node.input):
            if i and uses.get(name, 0) > 1 and name in tensors:
                copy = onnx.TensorProto()
                copy.CopyFrom(tensors[name])
                copy.name = f"{name}/{node.name}"
                graph.initializer.append(copy)
                node.input[i] = copy.name
                uses[name] -= 1


class _PreprocessingAdvice(logging.Filter):
    """onnxruntime's quantiser advises (on the root logger) to run its pre-processing, which
    `_optimized` does in its own way: not worth a warning on every user's console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _without_preprocessing_advice():
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def _optimized(src: Path, dst: Path) -> Path:
    """`src` after onnxruntime's basic graph optimisations (constant folding, Identity removal,
    MatMul + Add -> Gemm): every linear layer's bias becomes a constant the quantiser can fold
    into the int8 kernel (the exporter's Identity nodes otherwise hide it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def warn_without_int8_instructions() -> bool:
    """Warn (once per call site) when this CPU has no int8 dot-product instructions
    (`mobilesam.runtime.int8_supported`), where the int8 encoder is no faster than fp32 and
    still less accurate. Returns whether it warned."""
    from ..runtime import INT8_FLAGS, int8_supported

    if int8_supported():
        return False
    warnings.warn(
        "precision 'int8' on a CPU without int8 dot-product instructions "
        f"(none of {', '.join(INT8_FLAGS)}): it runs, but no faster than 'fp32' and less accurate",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
