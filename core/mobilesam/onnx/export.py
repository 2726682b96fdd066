"""Export a `Sam` to two ONNX models: the image encoder, and prompt encoder + mask decoder.

Decoder inputs (the convention of segment-anything's ONNX export, so existing clients work):
  image_embeddings (1, 256, 64, 64) float32
  point_coords     (B, N, 2) float32, (x, y) in model-input pixels (after `apply_coords`)
  point_labels     (B, N) float32: 1 foreground, 0 background, 2 box top-left, 3 box bottom-right,
                   -1 padding (add one (0, 0) point labelled -1 when there is no box)
  mask_input       (B or 1, 1, 256, 256) float32 low-res logits of a previous prediction
  has_mask_input   (1,) float32: 1 to use mask_input, 0 to ignore it
Outputs: low_res_masks (B, 4, 256, 256) and iou_predictions (B, 4); index 0 is the single-mask
output, 1..3 the multimask candidates (the caller slices, as `MaskDecoder.forward` does).
"""

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write
from ..modeling import Sam, fast_decoder
from .layout import (  # noqa: F401 (re-exported)
    DECODER_FILE,
    DECODER_HEAD_FILE,
    DECODER_UPSCALE_FILE,
    ENCODER_FILE,
    FINGERPRINT_FILE,
)

# The encoder needs opset 18 with torch's TorchScript exporter (earlier opsets lack what its
# LayerNorm/attention lowering emits); the decoder uses the same for one runtime requirement.
OPSET = 18


class EncoderOnnx(nn.Module):
    """(1, 3, S, S) normalised, padded image -> (1, 256, S/16, S/16) embedding."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class PromptDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder with box corners and padding expressed as point labels.

    Uses the same modules as `PromptEncoder` and the mask decoder's path the model is set to
    (`MaskDecoder.predict_masks_fast`, or `predict_masks` for an exact model), so its outputs
    equal the torch path's up to float rounding.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, pe.not_a_point_embed.weight, emb)
        # Adding exact zeros for the other labels keeps each sum identical to the torch path.
        for i, point_embedding in enumerate(pe.point_embeddings):
            emb = emb + torch.where(labels == i, point_embedding.weight, 0.0)
        return emb

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """(mask batch, C, h, w): one dense embedding shared by every prompt unless masks differ."""
        pe = self.prompt_encoder
        masked = pe.mask_downscaling(mask_input) * has_mask_input
        return masked + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        decoder = self.mask_decoder
        if decoder.use_fast_path():  # the model's own choice: exact models export the official arithmetic
            return decoder.predict_masks_fast(
                image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, keep=slice(None)
            )
        return decoder.predict_masks(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense.expand(point_coords.shape[0], -1, -1, -1),
        )


class DecoderHeadOnnx(PromptDecoderOnnx):
    """The fast decoder's first part: the same inputs as `PromptDecoderOnnx` -> iou_predictions
    (B, 4), hyper_in (B, 4, C/8) (the hypernetwork outputs of the four mask tokens) and keys
    (B, L, C), the transformer's image tokens: what `DecoderUpscaleOnnx` needs for the prompts
    whose IoU passes a threshold (as `MaskDecoder.predict_confident_masks` does in torch)."""

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        decoder = self.mask_decoder
        dense = self._embed_mask(mask_input, has_mask_input)
        image = decoder.prepare_image(
            image_embeddings, self.prompt_encoder.get_dense_pe(), dense, project=False
        )
        tokens = decoder._tokens(self._embed_points(point_coords, point_labels))
        hs, keys = fast_decoder.transformer_forward(decoder.transformer, image, tokens)
        return decoder.iou_prediction_head(hs[:, 0, :]), decoder._hyper_in(hs, slice(None)), keys


class DecoderUpscaleOnnx(nn.Module):
    """The fast decoder's second part: keys (K, L, C) and hyper_in (K, M, C/8) -> low_res_masks
    (K, M, 4h, 4w), the mask upscaling of `fast_decoder.upscale_masks`."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        self.size = tuple(model.prompt_encoder.image_embedding_size)

    def forward(self, keys: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        return fast_decoder.upscale_masks(self.mask_decoder, keys, hyper_in, self.size)


def weights_fingerprint(model: nn.Module) -> str:
    """The model's `mobilesam.serving.model_identity` (type, weights, input size), stamped next to
    the exported files to tell whether they are stale: the one identity caches use everywhere."""
    from ..serving.identity import model_identity

    return model_identity(model, precision="fp32")  # the export traces the fp32 code whatever the model's


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    # torch.onnx.export puts the module back in the mode it found it in, recursively: a wrapper
    # left in its default training mode would leave the model's own modules training.
    module.eval()
    # Never leave a half-written model under the final name.
    with atomic_write(path, suffix=".part") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        # dynamo=False: torch 2.14's default (dynamo) exporter fails on SAM's decoder.
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_onnx(
    model: Sam, out_dir: str | os.PathLike, encoder: bool = True, decoder: bool = True
) -> tuple[Path, Path]:
    """Write `encoder.onnx` and `decoder.onnx` (and a weights fingerprint) into `out_dir`.

    The model is exported in eval mode and left in the mode it was in.
    Returns (encoder_path, decoder_path).
    """
    if (
        getattr(model.image_encoder, "input_size", model.image_encoder.img_size)
        != model.image_encoder.img_size
    ):
        # The ONNX predictors feed the encoder the prompt-frame image; EfficientViT-SAM reads a smaller one.
        raise ValueError(
            f"ONNX export supports encoders that read the {model.image_encoder.img_size} px prompt "
            f"frame; {type(model.image_encoder).__name__} reads {model.image_encoder.input_size} px: "
            "use the torch backend"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if encoder:
                size = model.image_encoder.img_size
                _export(
                    EncoderOnnx(model),
                    (torch.zeros(1, 3, size, size),),
                    encoder_path,
                    ["image"],
                    ["image_embeddings"],
                    None,
                )
            if decoder:
                pe = model.prompt_encoder
                h, w = pe.image_embedding_size
                dummy = (
                    torch.randn(1, pe.embed_dim, h, w),
                    torch.tensor([[[100.0, 200.0], [0.0, 0.0]]]),
                    torch.tensor([[1.0, -1.0]]),
                    torch.zeros(1, 1, *pe.mask_input_size),
                    torch.zeros(1),
                )
                prompt_inputs = [
                    "image_embeddings",
                    "point_coords",
                    "point_labels",
                    "mask_input",
                    "has_mask_input",
                ]
                prompt_axes = {
                    "point_coords": {0: "batch", 1: "num_points"},
                    "point_labels": {0: "batch", 1: "num_points"},
                    "mask_input": {0: "mask_batch"},
                }
                _export(
                    PromptDecoderOnnx(model),
                    dummy,
                    decoder_path,
                    prompt_inputs,
                    ["low_res_masks", "iou_predictions"],
                    {**prompt_axes, "low_res_masks": {0: "batch"}, "iou_predictions": {0: "batch"}},
                )
                if model.mask_decoder.use_fast_path():  # an exact model keeps the official decoder only
                    _export_decoder_parts(model, out_dir, dummy, prompt_inputs, prompt_axes)
    finally:
        model.train(was_training)
    if encoder and decoder:  # the fingerprint vouches for both files
        _write_text(out_dir / FINGERPRINT_FILE, weights_fingerprint(model))
    return encoder_path, decoder_path


def _export_decoder_parts(model: Sam, out_dir: Path, dummy: tuple, prompt_inputs, prompt_axes) -> None:
    """`decoder_head.onnx` and `decoder_upscale.onnx` (see `DecoderHeadOnnx`)."""
    head = DecoderHeadOnnx(model)
    _export(
        head,
        dummy,
        out_dir / DECODER_HEAD_FILE,
        prompt_inputs,
        ["iou_predictions", "hyper_in", "keys"],
        {**prompt_axes, "iou_predictions": {0: "batch"}, "hyper_in": {0: "batch"}, "keys": {0: "batch"}},
    )
    _, hyper_in, keys = head(*dummy)
    _export(
        DecoderUpscaleOnnx(model),
        (keys, hyper_in[:, 1:]),
        out_dir / DECODER_UPSCALE_FILE,
        ["keys", "hyper_in"],
        ["low_res_masks"],
        {
            "keys": {0: "prompts"},
            "hyper_in": {0: "prompts", 1: "masks"},
            "low_res_masks": {0: "prompts", 1: "masks"},
        },
    )


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of an exported model's MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with atomic_write(dst, suffix=".part") as tmp:
        quantize_dynamic(
            str(src), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8
        )
    return dst


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, suffix=".part") as tmp:
        tmp.write_text(text)
