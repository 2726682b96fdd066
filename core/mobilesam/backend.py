"""Predictor backends: what runs the image encoder and the prompt decoder behind `SamPredictor`.

`SamPredictor` does the rest itself (resizing, normalising, prompt checks and coordinate
transforms, mask upscaling), so a backend is small:

- `name`: "torch", "onnx", ...
- `encode(image)`: (1, 3, S, S) preprocessed image -> (1, 256, S/16, S/16) embedding.
- `decode(features, points, boxes, mask_input, multimask_output)`: low-res logits (B, C, h, w)
  and IoU predictions (B, C) for model-input prompts on an embedding.
- `decode_confident(..., min_iou)`: the same, keeping only masks with IoU > min_iou, flattened.
- `reset()`: forget what was kept about the current image (a new image is coming).
- `clone()`: a backend for another predictor of the same model, sharing what can be shared
  (ONNX sessions) but no per-image state.

`TorchBackend` is the model's own modules; `mobilesam.onnx.OnnxBackend` runs exported models with
onnxruntime. `make_backend` picks one by name; an object with these methods can be given instead
(one object per predictor: it keeps that predictor's per-image state).
"""

from typing import Protocol

import torch

from .modeling import Sam


class PredictorBackend(Protocol):
    name: str

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(
        self, features: torch.Tensor, points, boxes, mask_input, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode_confident(
        self, features: torch.Tensor, points, boxes, mask_input, multimask_output: bool, min_iou: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def reset(self) -> None: ...

    def clone(self) -> "PredictorBackend": ...


def make_backend(model: Sam, backend="torch", **options) -> PredictorBackend:
    """The backend called `backend` ("torch" or "onnx"; options go to the ONNX one, see
    `mobilesam.onnx.OnnxBackend`), or `backend` itself when it is a backend object."""
    if not isinstance(backend, str):
        if options:
            raise ValueError("backend options go with a backend name, not a backend object")
        return backend
    if backend == "torch" and not options:
        return TorchBackend(model)
    if backend == "onnx":
        from .onnx.predictor import OnnxBackend  # optional dependencies, imported only when asked for

        return OnnxBackend(model, **options)
    raise ValueError(f"backend must be 'torch' or 'onnx' (options only for onnx), not {backend!r}")


class TorchBackend:
    """The model's own encoder, prompt encoder and mask decoder (fast paths included).

    Keeps per image what every click would otherwise recompute: the positional encoding of the
    embedding grid and, from the second click on, the fast decoder's first-layer image tensors.
    """

    name = "torch"

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.decoder_cache = None  # per-image first-layer tensors of the fast decoder path
        self._uncached_decodes = 0
        self._image_pe = None

    def clone(self) -> "TorchBackend":
        return TorchBackend(self.model)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(image)

    def decode(self, features, points, boxes, mask_input, multimask_output: bool):
        return self.model.mask_decoder(
            **self._decoder_inputs(features, points, boxes, mask_input), multimask_output=multimask_output
        )

    def decode_confident(self, features, points, boxes, mask_input, multimask_output: bool, min_iou: float):
        """The fast path skips upscaling the rejected masks."""
        return self.model.mask_decoder.predict_confident_masks(
            **self._decoder_inputs(features, points, boxes, mask_input),
            multimask_output=multimask_output,
            min_iou=min_iou,
        )

    def _decoder_inputs(self, features, points, boxes, mask_input) -> dict:
        """The mask decoder's inputs for these prompts on the embedding."""
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        decoder = self.model.mask_decoder
        image_pe = self._dense_pe()
        image_cache = None
        if decoder.use_fast_path() and mask_input is None:
            # Without a mask prompt the decoder's first layer sees the same image for every
            # click: prepare it once per image (see modeling/fast_decoder.py), from the second
            # decode on, since for a single click the uncached arithmetic is cheaper.
            if self.decoder_cache is None and self._uncached_decodes >= 1:
                self.decoder_cache = decoder.prepare_image(features, image_pe, dense)
            self._uncached_decodes += self.decoder_cache is None
            image_cache = self.decoder_cache
        return dict(
            image_embeddings=features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            image_cache=image_cache,
        )

    def _dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the embedding grid, computed once per image
        (it depends on the model only; recomputing it is ~1 ms of sin/cos per click)."""
        if self._image_pe is None:
            self._image_pe = self.model.prompt_encoder.get_dense_pe()
        return self._image_pe
