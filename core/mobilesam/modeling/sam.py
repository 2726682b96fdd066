"""`Sam`: image encoder + prompt encoder + mask decoder, with SAM's pre- and postprocessing."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..postprocess import postprocess_above, postprocess_logits
from ..transforms import PIXEL_MEAN, PIXEL_STD
from .common import FastPath
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(FastPath, nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    precision: str = "fp32"  # of the fast encoder, see set_precision

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def set_exact(self, exact: bool = True) -> "Sam":
        """exact=True: the official order of operations everywhere (bit-identical outputs);
        False (the default): the fast inference path (differences of float rounding only)."""
        for module in self.modules():
            if isinstance(module, FastPath):
                module.exact = exact
        return self

    def set_precision(self, precision: str = "fp32") -> "Sam":
        """The fast encoder's matrix products and convolutions in "bf16" (fp32 accumulation in
        oneDNN, residual stream and norms fp32; on CPUs with AVX512-BF16/AMX only) or "fp32";
        "auto" picks bf16 where the CPU has it and the encoder has a bf16 path (vit_t). Embeddings
        then differ from fp32 by ~8e-3 relative on random weights (benchmarks/bf16_error.py;
        README, Performance). The exact path (`set_exact(True)`) ignores it."""
        from ..runtime import resolve_precision

        has_low_precision = hasattr(self.image_encoder, "set_compute_dtype")
        precision = resolve_precision(precision) if has_low_precision or precision != "auto" else "fp32"
        if has_low_precision:
            self.image_encoder.set_compute_dtype(torch.bfloat16 if precision == "bf16" else None)
        elif precision != "fp32":
            raise ValueError(f"{type(self.image_encoder).__name__} has no low-precision path (only vit_t)")
        self.precision = precision
        return self

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @torch.inference_mode()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a batch of images, as segment_anything's `Sam.forward`.

        Each input dict has `image` (3, H, W) already resized to the model's longest side,
        `original_size` (H0, W0), and optionally `point_coords` (B, N, 2), `point_labels` (B, N),
        `boxes` (B, 4), `mask_inputs` (B, 1, 256, 256), all in model-input coordinates.
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input])
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                embedding.unsqueeze(0), self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits (B, C, 256, 256) -> logits (B, C, H0, W0) in the original image frame."""
        if self.use_fast_path():  # same result, without materialising the padded 1024 x 1024 masks
            return postprocess_logits(masks, self.img_size, input_size, original_size)
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(masks.shape[-2:]) == tuple(original_size):
            return masks  # bilinear resampling to the same size is the identity: skip the copy
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def postprocess_binary(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """`postprocess_masks(...) > mask_threshold`: bool masks (B, C, H0, W0). On the fast path
        the full-size logits are never materialised (`postprocess.postprocess_above`)."""
        if self.use_fast_path() and masks.device.type == "cpu":
            return postprocess_above(masks, self.img_size, input_size, original_size, self.mask_threshold)
        return self.postprocess_masks(masks, input_size, original_size) > self.mask_threshold

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (3, h, w) or (B, 3, h, w) pixels and zero-pad bottom/right to a square."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = getattr(self.image_encoder, "input_size", self.img_size)  # EfficientViT-SAM: 512
        return F.pad(x, (0, size - w, 0, size - h))
