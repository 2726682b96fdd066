"""`OnnxBackend`: the predictor backend (`mobilesam.backend`) that runs the encoder and decoder
with onnxruntime, behind `SamPredictor(model, backend="onnx")` (`OnnxSamPredictor`).

Pre- and postprocessing (resize, normalise, pad, mask upsampling) stay the torch code shared
with the torch path, so only the two networks change backend.
"""

import os
import tempfile
import threading
import warnings
import weakref
from contextlib import nullcontext, suppress
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from ..build_sam import detect_model_type
from ..errors import MobileSamError
from ..modeling import Sam
from ..modeling.mask_decoder import select_confident
from ..runtime import usable_cpus
from ..serving.backend import BACKENDS  # noqa: F401 - re-exported (mobilesam.onnx.BACKENDS)
from ..serving.backend import ONNX_PRECISIONS as PRECISIONS
from ..weights import cache_dir
from .export import export_onnx, weights_fingerprint
from .int8 import quantize_encoder_static, warn_without_int8_instructions
from .layout import (
    DECODER_FILE,
    DECODER_HEAD_FILE,
    DECODER_UPSCALE_FILE,
    ENCODER_FILE,
    FINGERPRINT_FILE,
    INT8_ENCODER_FILE,
    LEGACY_INT8_FILES,
    cpu_session,
    decoder_prompt_inputs,
)

INSTALL_HINT = "pip install 'napari-mobilesam[onnx]'"
LOCK_FILE = ".export.lock"

# Sessions by (model file, its mtime and size, threads): predictors of the same exported model
# (e.g. a server's encoder and decoder predictors) share one copy of the weights. Weak, so a
# session is freed with the last predictor using it. `InferenceSession.run` is thread-safe.
_sessions: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()
_sessions_lock = threading.Lock()
# torch.onnx.export keeps global state: two exports in one process must not overlap, even into
# different folders (the folder's file lock covers only same-folder users).
_torch_export_lock = threading.Lock()


def default_onnx_dir(model_type: str | Sam) -> Path:
    """Where front-ends keep the exported models of `model_type` (a name, or a `Sam` whose
    architecture is read from its weights): `<cache dir>/onnx/<model_type>`, next to the downloaded
    weights (`MOBILESAM_HOME`, else the platform cache dir). One folder per architecture; other
    weights of the same architecture replace its files (fingerprint check)."""
    if isinstance(model_type, Sam):
        model_type = detect_model_type(model_type.state_dict()) or "vit_t"
    if not model_type or os.sep in model_type or "/" in model_type:
        raise ValueError(f"model_type must be a name such as 'vit_t', not {model_type!r}")
    return cache_dir() / "onnx" / model_type


class OnnxBackend:
    """The encoder and prompt decoder as onnxruntime sessions for one model's weights (a
    `mobilesam.backend.PredictorBackend`).

    onnx_dir: where the exported models live. Files there are reused when their fingerprint
    matches the model's weights, else (re-)exported; None exports into a private temporary
    directory removed with this object.
    precision: "fp32", or "int8" for the encoder's linear layers in int8, statically calibrated
    (`mobilesam.onnx.int8`; made once, next to the fp32 files), with the fp32 decoder: faster on
    CPUs with VNNI / AMX-INT8 (warns on others), less accurate (benchmarks/int8.py measures both).
    """

    def __init__(
        self,
        model: Sam,
        onnx_dir: str | os.PathLike | None = None,
        precision: str = "fp32",
        num_threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MobileSamError(f"backend='onnx' needs onnxruntime and onnx: {INSTALL_HINT}") from exc
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "int8":
            warn_without_int8_instructions()
        self._tmp = None
        if onnx_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mobilesam-onnx-")
            onnx_dir = self._tmp.name
        onnx_dir = Path(onnx_dir)
        threads = num_threads or usable_cpus()
        # Processes (server workers) and threads sharing the folder take turns: one exports while
        # the others wait, then find fresh files; nobody opens a model another is replacing.
        with _export_lock(onnx_dir):
            encoder_path, decoder_path = self._ensure_exported(model, onnx_dir, precision)
            try:
                self.encoder, self.decoder = (
                    _session(ort, path, threads) for path in (encoder_path, decoder_path)
                )
            except Exception as exc:  # noqa: BLE001 - onnxruntime's InvalidProtobuf, Fail, ... share no base class
                # A damaged cached file (truncated, overwritten) is exported again, once.
                warnings.warn(
                    f"exported model in {onnx_dir} could not be loaded ({exc}); exporting it again",
                    stacklevel=2,
                )
                for path in (onnx_dir / FINGERPRINT_FILE, encoder_path, decoder_path):
                    path.unlink(missing_ok=True)
                encoder_path, decoder_path = self._ensure_exported(model, onnx_dir, precision)
                self.encoder, self.decoder = (
                    _session(ort, path, threads) for path in (encoder_path, decoder_path)
                )
        self.mask_input_size = model.prompt_encoder.mask_input_size
        self.precision = precision
        parts = (onnx_dir / DECODER_HEAD_FILE, onnx_dir / DECODER_UPSCALE_FILE)
        self._part_paths = parts if all(path.exists() for path in parts) else None
        self._threads = threads
        self._parts = None
        self._parts_lock = threading.Lock()

    @staticmethod
    def _ensure_exported(model: Sam, onnx_dir: Path, precision: str) -> tuple[Path, Path]:
        """Paths of the models for `precision`, exporting (and quantising) what is missing or stale.
        Call with the folder's export lock held."""
        fingerprint = weights_fingerprint(model)
        encoder, decoder = onnx_dir / ENCODER_FILE, onnx_dir / DECODER_FILE
        quantized = onnx_dir / INT8_ENCODER_FILE
        for name in LEGACY_INT8_FILES:  # an older version's int8 files: never loaded, so not kept
            with suppress(OSError):  # a read-only folder keeps them
                (onnx_dir / name).unlink(missing_ok=True)
        stamp = onnx_dir / FINGERPRINT_FILE
        # A fast model's folder also holds the decoder's two parts (an older version's does not).
        parts = (DECODER_HEAD_FILE, DECODER_UPSCALE_FILE) if model.mask_decoder.use_fast_path() else ()
        fresh = (
            encoder.exists()
            and decoder.exists()
            and all((onnx_dir / name).exists() for name in parts)
            and stamp.exists()
            and stamp.read_text().strip() == fingerprint
        )
        if not fresh:
            _require_exporter()
            # The stamp goes first and comes back last (export_onnx writes it after both models), so
            # an export cut short never vouches for files of other weights; int8 copies of the old
            # weights go too.
            for path in (stamp, quantized):
                path.unlink(missing_ok=True)
            with _torch_export_lock:
                export_onnx(model, onnx_dir)
        if precision == "fp32":
            return encoder, decoder
        if not quantized.exists():
            quantize_encoder_static(encoder, quantized)
        return quantized, decoder

    name = "onnx"

    def reset(self) -> None:
        """Nothing is kept per image (the exported decoder takes the whole embedding each time)."""

    def clone(self) -> "OnnxBackend":
        """This backend itself: it keeps nothing per image, and its sessions are thread-safe."""
        return self

    def decode_confident(self, features, points, boxes, mask_input, multimask_output: bool, min_iou: float):
        """The masks with IoU > min_iou, as `decode` then `select_confident` would give: the
        decoder's two parts (`export.DecoderHeadOnnx`) upscale only the prompts with a mask to
        keep, as the torch path does (segment everything keeps a few of each batch)."""
        parts = self._decoder_parts()
        if parts is None:  # an exact model's export: the one-piece official decoder only
            return select_confident(
                *self.decode(features, points, boxes, mask_input, multimask_output), min_iou
            )
        head, upscale = parts
        iou, hyper_in, keys = head.run(None, self._decoder_inputs(features, points, boxes, mask_input))
        keep = slice(1, None) if multimask_output else slice(0, 1)
        iou = iou[:, keep]
        per_prompt = iou.shape[1]
        index = np.flatnonzero(iou.reshape(-1) > min_iou)
        prompt = index // per_prompt
        prompts = np.unique(prompt)  # sorted
        if prompts.size:
            inputs = {"keys": keys[prompts], "hyper_in": np.ascontiguousarray(hyper_in[prompts][:, keep])}
            (low_res,) = upscale.run(None, inputs)
            masks = low_res[np.searchsorted(prompts, prompt), index % per_prompt]
        else:
            masks = np.zeros((0, *self.mask_input_size), np.float32)
        return (
            torch.from_numpy(np.ascontiguousarray(masks)),
            torch.from_numpy(iou.reshape(-1)[index]),
            torch.from_numpy(index.astype(np.int64)),
        )

    def _decoder_parts(self):
        """The head and upscaling sessions, made at the first use (a predictor that only answers
        clicks never loads them), or None where the folder has no decoder parts."""
        if self._part_paths is None:
            return None
        with self._parts_lock:
            if self._parts is None:
                import onnxruntime as ort

                try:
                    self._parts = tuple(_session(ort, path, self._threads) for path in self._part_paths)
                except Exception as exc:  # noqa: BLE001 - as in __init__: onnxruntime's errors share no base
                    warnings.warn(
                        f"the decoder parts in {self._part_paths[0].parent} could not be loaded ({exc}); "
                        "segment everything decodes with the whole decoder",
                        stacklevel=3,
                    )
                    self._part_paths = None
                    return None
            return self._parts

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) normalised, padded image -> (1, 256, S/16, S/16) embedding."""
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        (features,) = self.encoder.run(None, {"image": array})
        return torch.from_numpy(features)

    def decode(
        self, features: torch.Tensor, points, boxes, mask_input, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `SamPredictor.decode`: points ((B, N, 2), (B, N)), boxes (B, 4), mask_input (B, 1, 256, 256)."""
        low_res, iou = self.decoder.run(None, self._decoder_inputs(features, points, boxes, mask_input))
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return torch.from_numpy(low_res[:, keep]), torch.from_numpy(iou[:, keep])

    def _decoder_inputs(self, features, points, boxes, mask_input) -> dict:
        """The exported decoder's inputs (`export.PromptDecoderOnnx`) for model-input prompts."""
        coords, labels = self._point_inputs(points, boxes)
        if mask_input is None:
            mask = np.zeros((1, 1, *self.mask_input_size), np.float32)
            has_mask = np.zeros(1, np.float32)
        else:
            mask = np.ascontiguousarray(_numpy(mask_input), dtype=np.float32)
            has_mask = np.ones(1, np.float32)
        return {
            "image_embeddings": np.ascontiguousarray(_numpy(features), dtype=np.float32),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask,
            "has_mask_input": has_mask,
        }

    @staticmethod
    def _point_inputs(points, boxes) -> tuple[np.ndarray, np.ndarray]:
        coords, labels = (None, None) if points is None else (_numpy(points[0]), _numpy(points[1]))
        return decoder_prompt_inputs(coords, labels, None if boxes is None else _numpy(boxes))


def _export_lock(onnx_dir: Path):
    """An inter-process lock on `onnx_dir` (created if needed); none for a read-only folder, where
    nothing can be exported anyway."""
    try:
        onnx_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MobileSamError(f"cannot create the ONNX model folder {onnx_dir}: {exc}") from None
    if not os.access(onnx_dir, os.W_OK):
        return nullcontext()
    return FileLock(str(onnx_dir / LOCK_FILE))


def _require_exporter() -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
    except ImportError as exc:
        raise MobileSamError(f"exporting the model to ONNX needs the onnx package: {INSTALL_HINT}") from exc


def _session(ort, path: Path, threads: int):
    """An onnxruntime CPU session for `path`, shared with other predictors of the same file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, threads)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = cpu_session(ort, path, threads, encoder=path.name.startswith("encoder"))
            _sessions[key] = session
        return session


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
