"""The mask decoder's fast inference path: the same function as `MaskDecoder.predict_masks`,
rearranged so that a click costs a fraction of the official arithmetic.

Shapes: L = h*w image tokens (4096), C = 256 channels, d = C / downsample (128) attention width,
H heads of width dh = d / H, N prompt tokens (output tokens + points, ~7), B prompts in a batch.

Three rearrangements, all exact in real arithmetic (outputs differ by float rounding, ~1e-6):

1. Per-image cache. Without a mask prompt the first layer's image side (keys, values and the
   image->token queries) depends on the image only, so `prepare_image` computes it once per image
   and every click (and every prompt of a segment-everything batch) reuses it; the official
   decoder recomputes it for each click and copies the embedding once per prompt.
2. Attention with few tokens on one side. Projecting 4096 image tokens (L*C*d multiply-adds per
   projection) is the expensive part; when H*N < d it is cheaper to move the projection onto the
   tokens: q.(W x + b) = (W^T q).x + q.b, and sum_j p_j (W x_j + b) = W (sum_j p_j x_j) + b because
   softmax weights sum to one. The constant q.b shifts a softmax row and drops out.
3. Mask upscaling as two GEMMs. A 2x2 stride-2 transposed convolution is one matrix product per
   input pixel; computed in token layout it needs no NCHW round trip, and the masks come out in
   blocked pixel order, reordered once at the end (only for the masks actually returned).
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import linear_gelu
from .transformer import Attention, TwoWayTransformer


@dataclass
class ImageCache:
    """Decoder inputs that depend on the image only (batch b0 = 1, or B with per-prompt masks).

    src: (b0, L, C) image embedding + dense prompt embedding; pe: (L, C) positional encoding.
    k0, v0: (b0, H, L, dh) first layer token->image keys and values.
    q0: (b0, L, d) first layer image->token queries.
    The projections are None when prepared for a single use: projecting the image once costs
    more than the prompt-side arithmetic that replaces it (see `_token_to_image`).
    """

    src: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor | None = None
    v0: torch.Tensor | None = None
    q0: torch.Tensor | None = None


def prepare_image(
    transformer: TwoWayTransformer, src: torch.Tensor, pe: torch.Tensor, project: bool = True
) -> ImageCache:
    """src (b0, C, h, w), pe (1, C, h, w) -> the per-image part of the first layer.

    project=True precomputes the first layer's image projections, for an image that will see many
    prompts; False only lays out the tensors (one-off calls, ONNX export).
    """
    src = src.flatten(2).transpose(1, 2).contiguous()
    pe = pe.flatten(2).transpose(1, 2)[0].contiguous()
    if not project:
        return ImageCache(src=src, pe=pe)
    layer = transformer.layers[0]
    keys_pe = src + pe
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return ImageCache(
        src=src,
        pe=pe,
        k0=t2i._split_heads(t2i.k_proj(keys_pe)),
        v0=t2i._split_heads(t2i.v_proj(src)),
        q0=i2t.q_proj(keys_pe),
    )


def transformer_forward(
    transformer: TwoWayTransformer, cache: ImageCache, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `TwoWayTransformer.forward`: tokens (B, N, C) -> tokens (B, N, C), keys (B, L, C)."""
    queries, keys, pe = tokens, cache.src, cache.pe
    for i, layer in enumerate(transformer.layers):
        queries = layer.token_self_attention(queries, tokens)
        cached = i == 0 and cache.k0 is not None
        if cached:
            attn = _token_to_image_cached(
                layer.cross_attn_token_to_image, queries + tokens, cache.k0, cache.v0
            )
        else:
            keys_pe = keys + pe
            attn = _token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys)
        queries = layer.norm2(queries + attn)
        queries = layer.norm3(queries + layer.mlp(queries))

        i2t = layer.cross_attn_image_to_token
        # After the first layer `keys` is this function's own temporary: add onto it in place.
        own = i > 0
        if cached:
            keys = _image_to_token(i2t, None, cache.q0, queries + tokens, queries, keys, own)
        else:
            keys = _image_to_token(i2t, keys_pe, None, queries + tokens, queries, keys, own)
        keys = layer.norm4(keys)
    attn = _token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys)
    return transformer.norm_final_attn(queries + attn), keys


def _head_weights(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight (H, dh, C) and bias (H, dh) per head."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.view(heads, out_dim // heads, in_dim), linear.bias.view(heads, out_dim // heads)


def _image_matmul(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a (B, M, K) @ x (b0, K, L) with b0 = 1 or B: one image shared by a batch of prompts is one
    GEMM (B*M, K) @ (K, L) rather than B copies of the image."""
    B, M, K = a.shape
    if x.shape[0] == 1 and B > 1:
        return (a.reshape(B * M, K) @ x[0]).view(B, M, -1)
    return torch.matmul(a, x)


def _token_to_image_cached(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Tokens q (B, N, C) attend to projected image keys/values k, v (b0, H, L, dh)."""
    B, N, _ = q.shape
    q = attn._split_heads(attn.q_proj(q))  # (B, H, N, dh)
    if k.shape[0] == 1 and B > 1:  # one image for every prompt: one product per head
        H, dh = q.shape[1], q.shape[3]
        q = q.transpose(0, 1).reshape(H, B * N, dh)
        logits = torch.bmm(q, k[0].transpose(1, 2)) / math.sqrt(dh)
        out = torch.bmm(torch.softmax(logits, dim=-1), v[0])  # (H, B*N, dh)
        out = out.view(H, B, N, dh).permute(1, 2, 0, 3).reshape(B, N, H * dh)
    else:
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
    return attn.out_proj(out)


def _token_to_image(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Tokens q (B, N, C) attend to image tokens k (keys + pe) and v (keys), both (b0, L, C)."""
    B, N, C = q.shape
    H = attn.num_heads
    d = attn.q_proj.out_features
    if H * N >= d:  # many prompt points: projecting the image is the cheaper order
        return attn(q=q, k=k, v=v)
    dh = d // H
    qh = attn._split_heads(attn.q_proj(q))  # (B, H, N, dh)
    wk, _ = _head_weights(attn.k_proj, H)
    wv, bv = _head_weights(attn.v_proj, H)
    # logits = q.(Wk x + bk) = (Wk^T q).x + const; the constant cancels in the softmax.
    qk = torch.matmul(qh, wk).reshape(B, H * N, C)
    logits = _image_matmul(qk, k.transpose(1, 2)) / math.sqrt(dh)  # (B, H*N, L)
    # sum_j p_j (Wv x_j + bv) = Wv (sum_j p_j x_j) + bv, since each softmax row sums to one.
    pooled = _image_matmul(torch.softmax(logits, dim=-1), v).view(B, H, N, C)
    out = torch.matmul(pooled, wv.transpose(1, 2)).transpose(1, 2) + bv  # (B, N, H, dh)
    return attn.out_proj(out.reshape(B, N, d))


def _image_to_token(
    attn: Attention,
    image_q: torch.Tensor | None,
    projected_q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    residual: torch.Tensor,
    residual_is_temporary: bool = False,
) -> torch.Tensor:
    """Image tokens attend to the prompt tokens: -> residual + attention output, (B, L, C).

    Pass either image_q (B, L, C), the unprojected queries, or projected_q (b0, L, d), already
    through q_proj (the per-image cache). k (B, N, C) tokens + pe, v (B, N, C) tokens;
    residual (b0 or B, L, C) the image tokens the output is added to, in place when
    `residual_is_temporary` (saves a copy of the image tokens per layer).
    Logits are laid out (B, H*N, L) so the softmax over each head's N tokens runs across the long,
    contiguous L axis (a softmax along a last axis of ~7 is ten times slower).
    """
    B, N, C = k.shape
    H = attn.num_heads
    d = attn.q_proj.out_features
    dh = d // H
    kh = attn._split_heads(attn.k_proj(k)) / math.sqrt(dh)  # (B, H, N, dh), scale folded in
    vh = attn._split_heads(attn.v_proj(v))
    # out_proj applied to the N token values first: sum_n p_n Wo_h v_n = sum_n p_n (Wo_h v_n).
    wo = attn.out_proj.weight.view(C, H, dh)
    # Each row of probabilities sums to H (one per head), so out_proj's bias rides on the values.
    values = (torch.matmul(vh, wo.permute(1, 2, 0)) + attn.out_proj.bias / H).reshape(B, H * N, C)
    # Block-diagonal keys (B, H*N, d): head h's keys only meet head h's query features.
    # (built by multiplying with the identity: exact, and exportable to ONNX unlike index_put)
    eye = torch.eye(H, dtype=k.dtype, device=k.device)
    block_keys = (kh[:, :, :, None, :] * eye[None, :, None, :, None]).reshape(B, H * N, d)
    if projected_q is not None:
        logits = _image_matmul(block_keys, projected_q.transpose(1, 2))
    else:
        # K (x Wq^T + bq)^T = (K Wq) x^T + K bq: the query projection folded into the keys.
        wq, bq = attn.q_proj.weight, attn.q_proj.bias
        logits = _image_matmul(block_keys @ wq, image_q.transpose(1, 2)) + (block_keys @ bq)[..., None]
    L = logits.shape[-1]
    probs = torch.softmax(logits.view(B, H, N, L), dim=2).view(B, H * N, L)
    if (
        residual_is_temporary
        and residual.shape[0] == B
        and not (torch.is_grad_enabled() or torch.jit.is_tracing())
    ):
        return residual.baddbmm_(probs.transpose(1, 2), values)
    return torch.baddbmm(residual.expand(B, L, C), probs.transpose(1, 2), values)


def upscale_masks(decoder, keys: torch.Tensor, hyper_in: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`output_upscaling` + hypernetwork product: keys (B, L, C), hyper_in (B, M, C/8) -> (B, M, 4h, 4w)."""
    convt1, norm, _, convt2, _ = decoder.output_upscaling
    B, L, C = keys.shape
    h, w = size
    c1, c2 = convt1.out_channels, convt2.out_channels
    # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2*2*out): rows of sub-pixel (dy, dx, channel).
    w1 = convt1.weight.permute(0, 2, 3, 1).reshape(C, 4 * c1)
    x = torch.addmm(convt1.bias.repeat(4), keys.reshape(B * L, C), w1).view(B * L * 4, c1)
    x = F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps)
    x = F.gelu(x) if torch.is_grad_enabled() or torch.jit.is_tracing() else torch.ops.aten.gelu_(x)
    w2 = convt2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = linear_gelu(x, w2.t(), convt2.bias.repeat(4)).view(B, L * 16, c2)
    masks = torch.bmm(hyper_in, x.transpose(1, 2))  # (B, M, 16L) in blocked pixel order
    M = masks.shape[1]
    # One gather along the last axis: 7x faster than the equivalent 8-d permute + copy.
    order = _pixel_order(h, w, masks.device)
    return torch.index_select(masks.view(B * M, 16 * L), 1, order).view(B, M, 4 * h, 4 * w)


@functools.lru_cache(maxsize=8)
def _pixel_order(h: int, w: int, device: torch.device) -> torch.Tensor:
    """For each pixel of a (4h, 4w) mask in raster order, its position in the blocked order
    (y, x, dy1, dx1, dy2, dx2) of `upscale_masks`, whose pixel is (4y + 2dy1 + dy2, 4x + 2dx1 + dx2)."""
    with torch.inference_mode(False):  # cached: a normal tensor, usable where autograd records too
        blocked = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)
        return blocked.permute(0, 2, 4, 1, 3, 5).reshape(-1)
