"""What an exported model folder holds, how it is run and what its decoder takes; numpy only (no
torch), shared by the exporter, the torch-backed `OnnxBackend` and the torch-free `StandalonePredictor`."""

import threading

import numpy as np

from ..transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
FINGERPRINT_FILE = "weights.sha256"
# The fast decoder in two parts, for segment everything (`OnnxBackend.decode_confident`): the
# transformer with the IoU head, then the mask upscaling for the confident prompts only.
DECODER_HEAD_FILE = "decoder_head.onnx"
DECODER_UPSCALE_FILE = "decoder_upscale.onnx"
# precision="int8": the statically quantised encoder (`mobilesam.onnx.int8`) beside the fp32 decoder.
INT8_ENCODER_FILE = "encoder.int8-static.onnx"
# What older versions wrote for precision="int8" (dynamic quantisation of both models): removed
# when found, never loaded.
LEGACY_INT8_FILES = ("encoder.int8.onnx", "decoder.int8.onnx")
PRECISION_FILES = {"fp32": (ENCODER_FILE, DECODER_FILE), "int8": (INT8_ENCODER_FILE, DECODER_FILE)}


# OrtArenaCfg's arena_extend_strategy: 1 = kSameAsRequested (0, the default, doubles each growth).
_ARENA_SAME_AS_REQUESTED = 1
_shared_arena_lock = threading.Lock()
_shared_arena: bool | None = None


def _register_shared_arena(ort) -> bool:
    """Register, once per process, one CPU memory arena for every session made by `cpu_session`.

    Each session otherwise keeps its own arena, sized by its largest run: the decoder's first run
    could not reuse what the encoder's run freed (+25 MB). The arena grows by what is asked for
    rather than by doubling, which would round the encoder's ~270 MB peak up. Together they take
    the torch-free predictor's peak RSS from ~460 to ~430 MB (benchmarks/run.py). Returns whether
    the arena is there (False where this onnxruntime cannot register one: sessions keep theirs).
    """
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena is None:
            try:
                memory = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(
                    memory, ort.OrtArenaCfg(0, _ARENA_SAME_AS_REQUESTED, -1, -1)
                )
                _shared_arena = True
            except (AttributeError, RuntimeError, ValueError, TypeError):
                _shared_arena = False
        return _shared_arena


def cpu_session(ort, path, threads: int, spinning: bool = False, encoder: bool = False):
    """An onnxruntime CPU session with full graph optimisation and `threads` intra-op threads,
    allocating from the process's shared arena (`_register_shared_arena`).

    Spinning is off: by default onnxruntime's idle workers busy-wait after every run, which takes
    the cores from whatever runs next (torch postprocessing, the napari GUI, the next request) and
    made a torch click that followed an onnx one several times slower in benchmarks/run.py.

    `encoder`: a session for the image encoder runs without onnxruntime's planned buffer reuse
    (`enable_mem_reuse`), which at 1024 px holds ~90 MB more at its peak than letting each
    intermediate go back to the arena when its last reader is done (measured: the torch-free
    predictor's peak RSS 392 -> 302 MB, same outputs bit for bit, no slower). The decoder's
    activations are small and it runs ~1% faster with the plan, so it keeps it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_mem_reuse = not encoder
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if _register_shared_arena(ort):
        options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def decoder_prompt_inputs(
    coords: np.ndarray | None, labels: np.ndarray | None, boxes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder `point_coords` (B, N, 2) and `point_labels` (B, N) from model-input points
    (B, n, 2) / labels (B, n) and boxes (B, 4): points, then box corners labelled 2 and 3; without
    a box one padding point labelled -1, as the torch prompt encoder adds its "not a point" token."""
    parts_c, parts_l = [], []
    if coords is not None:
        parts_c.append(np.asarray(coords, np.float32))
        parts_l.append(np.asarray(labels, np.float32))
    batch = parts_c[0].shape[0] if parts_c else (len(boxes) if boxes is not None else 1)
    if boxes is not None:
        parts_c.append(np.asarray(boxes, np.float32).reshape(-1, 2, 2))
        parts_l.append(np.tile(np.array([[2, 3]], np.float32), (batch, 1)))
    elif coords is not None:
        parts_c.append(np.zeros((batch, 1, 2), np.float32))
        parts_l.append(-np.ones((batch, 1), np.float32))
    if not parts_c:
        return np.zeros((batch, 0, 2), np.float32), np.zeros((batch, 0), np.float32)
    return np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)


def encoder_input(image: np.ndarray, img_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> the (1, 3, img_size, img_size) float32 encoder input (longest side
    resized to img_size with PIL bilinear, normalised, zero-padded bottom-right, as `SamPredictor`
    does) and the resized (h, w)."""
    resized = ResizeLongestSide(img_size).apply_image(image)
    h, w = resized.shape[:2]
    padded = np.zeros((1, 3, img_size, img_size), np.float32)
    # Normalised in place: no full-size float temporaries beside the encoder's input.
    region = padded[0, :, :h, :w]
    region[...] = resized.transpose(2, 0, 1)
    region -= np.asarray(PIXEL_MEAN, np.float32)[:, None, None]
    region /= np.asarray(PIXEL_STD, np.float32)[:, None, None]
    return padded, (h, w)
