"""SAM's mask decoder: tokens + image embedding -> low-res mask logits and IoU predictions."""

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_decoder
from .common import FastPath, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(FastPath, nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_cache: fast_decoder.ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1 or B, C, h, w); sparse (B, N, C); dense (B, C, h, w).

        Returns masks (B, 3 or 1, 4h, 4w) logits and iou predictions (B, 3 or 1). Mask 0 is the
        single-mask output; 1..3 are the multimask candidates. `image_cache` (fast path only):
        `prepare_image` of this image embedding and dense embedding, to reuse across prompts.
        """
        keep = slice(1, None) if multimask_output else slice(0, 1)
        if self.use_fast_path():
            return self.predict_masks_fast(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                keep,
                image_cache,
            )
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, keep], iou_pred[:, keep]

    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        project: bool = True,
    ) -> fast_decoder.ImageCache:
        """The per-image part of the fast path (see `fast_decoder`), to compute once per image
        (project=True) or to lay out for a single call (False)."""
        dense = dense_prompt_embeddings
        if dense.shape[0] > 1 and dense.stride(0) == 0:  # the same no-mask embedding for every prompt
            dense = dense[:1]
        return fast_decoder.prepare_image(self.transformer, image_embeddings + dense, image_pe, project)

    def predict_masks_fast(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        keep: slice,
        image_cache: fast_decoder.ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_masks` rearranged for speed (`fast_decoder`), computing only the `keep` masks."""
        if image_cache is None:
            image_cache = self.prepare_image(
                image_embeddings, image_pe, dense_prompt_embeddings, project=False
            )
        tokens = self._tokens(sparse_prompt_embeddings)
        hs, keys = fast_decoder.transformer_forward(self.transformer, image_cache, tokens)
        masks = fast_decoder.upscale_masks(self, keys, self._hyper_in(hs, keep), image_embeddings.shape[-2:])
        return masks, self.iou_prediction_head(hs[:, 0, :])[:, keep]

    def predict_confident_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        min_iou: float,
        image_cache: fast_decoder.ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Only the masks whose predicted IoU exceeds `min_iou`, as filtering `forward`'s output would.

        Returns low-res logits (K, 4h, 4w), their IoU predictions (K,) and their positions (K,) in
        the flattened (B, 3 or 1) output, ascending. The IoU comes from the transformer alone, so the
        fast path upscales only the prompts with a mask to keep (segment everything keeps a few).
        """
        keep = slice(1, None) if multimask_output else slice(0, 1)
        if not self.use_fast_path():
            masks, iou = self(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                multimask_output,
            )
            return select_confident(masks, iou, min_iou)
        if image_cache is None:
            image_cache = self.prepare_image(
                image_embeddings, image_pe, dense_prompt_embeddings, project=False
            )
        hs, keys = fast_decoder.transformer_forward(
            self.transformer, image_cache, self._tokens(sparse_prompt_embeddings)
        )
        iou = self.iou_prediction_head(hs[:, 0, :])[:, keep]
        per_prompt = iou.shape[1]
        index = torch.nonzero(iou.flatten() > min_iou).flatten()
        prompt = index // per_prompt
        prompts = torch.unique(prompt)  # sorted
        masks = fast_decoder.upscale_masks(
            self, keys[prompts], self._hyper_in(hs[prompts], keep), image_embeddings.shape[-2:]
        )
        masks = masks[torch.searchsorted(prompts, prompt), index % per_prompt]
        return masks, iou.flatten()[index], index

    def _hyper_in(self, hs: torch.Tensor, keep: slice) -> torch.Tensor:
        """Hypernetwork outputs (B, M, C/8) of the `keep` mask tokens of transformer output hs."""
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        return torch.stack(
            [
                self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                for i in range(self.num_mask_tokens)[keep]
            ],
            dim=1,
        )

    def _tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Output tokens (IoU, masks) followed by the prompt tokens: (B, 1 + 4 + N, C)."""
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        return torch.cat((output_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings), dim=1)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All num_mask_tokens masks (B, 4, 4h, 4w) and their IoU predictions (B, 4)."""
        B = sparse_prompt_embeddings.shape[0]
        tokens = self._tokens(sparse_prompt_embeddings)

        # One image embedding serves a whole batch of prompts: broadcast instead of copying.
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != B:
            src = src.expand(B, -1, -1, -1)
        pos_src = image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def select_confident(
    masks: torch.Tensor, iou: torch.Tensor, min_iou: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """masks (B, C, h, w), iou (B, C) -> the masks with iou > min_iou: (K, h, w), (K,), flat positions (K,)."""
    index = torch.nonzero(iou.flatten() > min_iou).flatten()
    return masks.flatten(0, 1)[index], iou.flatten()[index], index


class MLP(nn.Module):
    """A ReLU MLP with `num_layers` linear layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
