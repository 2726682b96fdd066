"""What the front-ends (napari plugin, Label Studio backend, CLI) share about serving a model.

- `model_identity(...)`: one string that identifies a model (type, weights, input size), used to
  key every cache of embeddings and exported models.
- `build_predictor(...)`: a predictor for (model or model type/checkpoint, backend, ONNX folder).
- `parse_backend(...)` / `backend_from_env()`: the one reading of `MOBILESAM_BACKEND`;
  `parse_precision(...)` of `MOBILESAM_PRECISION` (the torch encoder's fp32 / bf16 / auto).
- `EmbeddingCache`: the one in-memory LRU of embeddings (by count and bytes), for servers and volumes.
- `EmbeddingStore` / `SliceEmbeddingStore`: the verified embedding stores on disk (one file per
  image for servers, one zarr array per slice for volumes), sharing one set of rules (`disk_store`).
"""

from .._lazy import lazy_attributes

# Loaded on first use: the setting parsers are torch-free (read before any model loads).
_LAZY = {
    "model_identity": "identity",
    "build_predictor": "factory",
    "BackendUnavailable": "factory",
    "BACKENDS": "backend",
    "ONNX_PRECISIONS": "backend",
    "BACKEND_ENV": "backend",
    "parse_backend": "backend",
    "parse_onnx_precision": "backend",
    "PRECISION_ENV": "backend",
    "parse_precision": "backend",
    "encoder_precision": "backend",
    "backend_from_env": "backend",
    "EmbeddingCache": "memory_cache",
    "EmbeddingStore": "disk_store",
    "SliceEmbeddingStore": "disk_store",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = list(_LAZY)
