"""What an exported model folder holds, how it is run and what its decoder takes; numpy only (no
torch), shared by the exporter, the torch-backed `OnnxBackend` and the torch-free `StandalonePredictor`."""

import numpy as np

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
FINGERPRINT_FILE = "weights.sha256"


def cpu_session(ort, path, threads: int, spinning: bool = False):
    """An onnxruntime CPU session with full graph optimisation and `threads` intra-op threads.

    Spinning is off: by default onnxruntime's idle workers busy-wait after every run, which takes
    the cores from whatever runs next (torch postprocessing, the napari GUI, the next request) and
    made a torch click that followed an onnx one several times slower in benchmarks/run.py."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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
