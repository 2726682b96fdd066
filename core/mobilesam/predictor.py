"""`SamPredictor`: a drop-in for segment_anything's, plus exportable embedding state.

Encode an image once (`set_image`), then answer any number of prompts (`predict`). Coordinates
are (x, y) pixels of the original image. `get_embedding_state` / `set_embedding` let front-ends
cache embeddings and restore them without re-encoding.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .backend import PredictorBackend, make_backend
from .modeling import Sam
from .runtime import decoder_threads
from .transforms import ResizeLongestSide, model_input_prompts, rgb_image


@dataclass(frozen=True)
class EmbeddingState:
    """Everything `predict` needs about an encoded image.

    features: (1, 256, 64, 64) float32 image embedding (on CPU when exported).
    original_size: (H, W) of the image given to `set_image`.
    input_size: (h, w) of the resized image fed to the encoder (before padding).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


class SamPredictor:
    """backend "torch" (default) runs the model itself; "onnx" runs the encoder and decoder with
    onnxruntime (`mobilesam.onnx.OnnxBackend`; options such as onnx_dir and precision go in
    **backend_options); a `mobilesam.backend.PredictorBackend` object may be given instead. All
    give the same API, and outputs within 1e-3 of torch's."""

    def __init__(
        self, sam_model: Sam, backend: "str | PredictorBackend" = "torch", **backend_options
    ) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.runtime = make_backend(sam_model, backend, **backend_options)
        self.backend = self.runtime.name
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image in `image_format` ("RGB" or "BGR")."""
        image = rgb_image(image, image_format)  # SAM models take RGB (`Sam.image_format`)
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        encoder_size = getattr(self.model.image_encoder, "input_size", self.model.img_size)
        if (
            encoder_size != self.model.img_size
        ):  # EfficientViT-SAM reads 512 px, prompts stay in the 1024 frame
            small = ResizeLongestSide(encoder_size).apply_image(image)
            encoder_image = torch.as_tensor(small, device=self.device).permute(2, 0, 1).contiguous()[None]
            return self.set_torch_image(tensor, image.shape[:2], encoder_image=encoder_image)
        self.set_torch_image(tensor, image.shape[:2])

    @torch.inference_mode()
    def set_torch_image(
        self,
        transformed_image: torch.Tensor,
        original_image_size: tuple[int, ...],
        encoder_image: torch.Tensor | None = None,
    ) -> None:
        """Encode a (1, 3, h, w) image already resized so that max(h, w) is the model's input size
        (`encoder_image`: the image at the encoder's own, smaller size, for EfficientViT-SAM)."""
        if not (
            transformed_image.ndim == 4
            and transformed_image.shape[1] == 3
            and max(*transformed_image.shape[2:]) == self.model.img_size
        ):
            raise ValueError(
                f"set_torch_image needs (1, 3, h, w) with max(h, w) = {self.model.img_size}, "
                f"got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        image = self.model.preprocess(transformed_image if encoder_image is None else encoder_image)
        self.features = self.runtime.encode(image)
        self.is_image_set = True

    def get_embedding_state(self) -> EmbeddingState:
        """The current image's embedding and sizes, detached on CPU, for caching."""
        self._require_image()
        return EmbeddingState(self.features.detach().cpu(), self.original_size, self.input_size)

    def set_embedding(self, state: EmbeddingState) -> None:
        """Restore a state from `get_embedding_state` instead of encoding the image again.

        Restoring the state that is already current (front-ends do so before every click) keeps
        the decoder's per-image cache."""
        if self.is_image_set and state is self._state:
            return
        expected = (self.model.prompt_encoder.embed_dim, *self.model.prompt_encoder.image_embedding_size)
        features = torch.as_tensor(state.features)
        if features.ndim == 3:
            features = features[None]
        if tuple(features.shape[1:]) != expected or features.shape[0] != 1:
            raise ValueError(f"embedding has shape {tuple(features.shape)}, this model needs (1, {expected})")
        if not torch.isfinite(features).all():  # masks from it would have NaN scores
            raise ValueError("embedding has values that are not finite numbers (NaN or infinity)")
        self.reset_image()
        self.features = features.to(self.device, torch.float32)
        self.original_size = tuple(int(s) for s in state.original_size)
        self.input_size = tuple(int(s) for s in state.input_size)
        self.is_image_set = True
        self._state = state

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        point_coords (N, 2) (x, y) pixels; point_labels (N,) 1 foreground / 0 background;
        box (4,) XYXY pixels; mask_input (1, 256, 256) logits from a previous prediction.
        Returns masks (C, H, W) bool (or logits), iou predictions (C,), low-res logits (C, 256, 256);
        C is 3 with multimask_output, else 1.
        """
        self._require_image()
        coords, labels, box, mask_input = model_input_prompts(
            self.transform, self.original_size, point_coords, point_labels, box, mask_input
        )
        coords_torch = labels_torch = box_torch = mask_torch = None
        if coords is not None:
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        if box is not None:
            box_torch = torch.as_tensor(box, dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_torch = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)
        masks, iou, low_res = self.predict_torch(
            coords_torch, labels_torch, box_torch, mask_torch, multimask_output, return_logits=return_logits
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction on model-input coordinates (see `transform.apply_coords_torch`).

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256).
        Returns masks (B, C, H, W), iou predictions (B, C), low-res logits (B, C, 256, 256).
        """
        self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        with decoder_threads():  # small operations: one thread by default (see runtime.py)
            low_res, iou = self.decode(points, boxes, mask_input, multimask_output)
            if return_logits:
                masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
            else:
                masks = self.model.postprocess_binary(low_res, self.input_size, self.original_size)
        return masks, iou, low_res

    @torch.inference_mode()
    def decode(self, points, boxes, mask_input, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on the current embedding: low-res logits and IoU predictions."""
        return self.runtime.decode(self.features, points, boxes, mask_input, multimask_output)

    @torch.inference_mode()
    def decode_confident(
        self, points, boxes, mask_input, multimask_output: bool, min_iou: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `decode`, keeping only masks with predicted IoU > min_iou (all when None): low-res
        logits (K, 256, 256), IoU predictions (K,) and positions (K,) in the flattened (B, C)
        output. The torch fast path skips upscaling the rejected masks."""
        threshold = float("-inf") if min_iou is None else min_iou
        return self.runtime.decode_confident(
            self.features, points, boxes, mask_input, multimask_output, threshold
        )

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding, (1, 256, 64, 64)."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.runtime.reset()  # per-image tensors the backend keeps
        self._state = None  # the EmbeddingState last restored, if that is the current image
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size = None
        self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
