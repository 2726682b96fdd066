"""The TinyViT encoder's fast inference path: the same function as the modules of `tiny_vit`,
rearranged for CPU inference, so embeddings differ from the official order of operations by float
rounding only (tests/test_fast_encoder.py). Each module's `forward` dispatches here with one line
when `active(module)`: eval mode, not exact, not traced or compiled.

The rearrangements:
- every Conv2dBN runs as one convolution with the BatchNorm folded into its weights (recomputed
  from the current parameters on each call, so never stale), in channels-last layout, with the
  following GELU or residual add fused into oneDNN's kernel where torch offers it;
- tokens stay (B, H*W, C) contiguous, which is channels-last (B, C, H, W): the local conv and the
  patch merging read them without transposes;
- window attention runs LayerNorm and qkv on the unpadded tokens (a zero padding token's qkv is a
  constant), adds the qkv bias while copying the tokens into their windows (one pass; no pad or
  transpose copies), folds the softmax scale into the q weights, and runs torch's fused
  attention kernel with the relative-position bias as its mask; the output goes back to the token
  grid in one copy, and the projection and the residual add share one pass;
- the neck runs its LayerNorms over the contiguous channel axis;
- for a lower peak memory the MBConvs run in row bands (overwriting their input inside the
  encoder), window attention in bands of window rows and the MLPs in bands of tokens, each band
  computed by the same kernels on the same rows, so bit for bit as unbanded (`BAND_BYTES`);
  intermediates are dropped once consumed, and MKL's pooled GEMM buffers are released per block;
- with a low-precision `compute_dtype` (bf16, `TinyViT.set_compute_dtype`) the attention stages'
  linear layers run with split weights (`split_linear`); the residual stream stays fp32.

Functions take the `tiny_vit` module whose forward they replace (this module imports nothing from
`tiny_vit`, which imports it).
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import release_blas_buffers
from .common import FastPath, derived, linear_gelu

# oneDNN's fused convolution (conv + GELU, conv + add) as torch's inductor uses it for CPU inference.
_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def active(module: FastPath) -> bool:
    """Whether `module` runs its fast path now: eval mode, not exact, and not being traced or
    compiled (the ONNX export traces the exact code: fused oneDNN kernels and in-place window
    copies do not export, and a compiler does its own fusion)."""
    return module.use_fast_path() and not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
    )


# --- The modules' fast forwards ---------------------------------------------------------------


def conv2d_bn(
    conv_bn: nn.Module, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """Eval-mode `GELU?(bn(c(x)) + residual?)` of a Conv2dBN as one convolution, channels-last in
    and out.

    x (B, C_in, H, W) and residual (B, C_out, H', W'), ideally channels-last already. With a
    low-precision `compute_dtype` the convolution runs in it (oneDNN accumulates in fp32) and
    returns it, but a residual of another dtype is added in that dtype (the fp32 stream).
    """
    weight, bias = folded_conv_bn(conv_bn)
    dtype = conv_bn.compute_dtype or weight.dtype  # a bf16 input to an fp32 layer is cast up
    x, weight, bias = (t.to(dtype) for t in (x, weight, bias))
    if residual is not None and residual.dtype != x.dtype:
        y = residual + _conv(conv_bn.c, x, weight, bias)  # promotes to the residual's dtype
        return _gelu(y) if gelu else y
    return _conv(conv_bn.c, x, weight, bias, gelu, residual)


def patch_embed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """PatchEmbed: (B, 3, S, S) -> (B, C, S/4, S/4) channels-last."""
    conv1, _, conv2 = module.seq
    return conv2d_bn(conv2, conv2d_bn(conv1, x, gelu=True))


def mbconv(module: nn.Module, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """MBConv: (B, C, H, W) -> (B, C, H, W) channels-last, in row bands (`_banded`,
    `CONV_BAND_BYTES`); with `inplace` the result overwrites x (a channels-last temporary of the
    caller's)."""

    def rows(a: int, b: int) -> torch.Tensor:
        lo, hi, skip = _input_rows(module.conv2.c, a, b, x.shape[2])
        y = conv2d_bn(module.conv2, conv2d_bn(module.conv1, x[:, :, lo:hi], gelu=True), gelu=True)
        return conv2d_bn(module.conv3, y[:, :, skip : skip + b - a], gelu=True, residual=x[:, :, a:b])

    hidden_row_bytes = 2 * module.conv1.c.out_channels * x.shape[3] * x.element_size()
    inplace = inplace and _no_autograd(x, module.conv1.c.weight)  # autograd needs x as it was
    return _banded(rows, x.shape[2], hidden_row_bytes, x, CONV_BAND_BYTES, out=x if inplace else None)


def patch_merging(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """PatchMerging: (B, C, H, W) or (B, H*W, C) -> (B, H'*W', C_out) contiguous."""
    if x.ndim == 3:
        x = _tokens_as_image(x.contiguous(), *module.input_resolution)
    x = conv2d_bn(module.conv2, conv2d_bn(module.conv1, x, gelu=True), gelu=True)
    return _image_as_tokens(conv2d_bn(module.conv3, x))


def tiny_vit_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViTBlock: (B, H*W, C) -> (B, H*W, C) fp32. The tokens stay contiguous, which the local
    conv reads as a channels-last image."""
    H, W = block.input_resolution
    dtype = block.compute_dtype
    x = x.float()  # the residual stream stays fp32 (a bf16 patch merging hands over bf16)
    x = attention_windows_residual(block.attn, x.contiguous(), H, W, block.window_size, dtype)
    release_blas_buffers()
    # The depthwise local conv is the stream itself (no residual around it): it stays fp32.
    x = _image_as_tokens(conv2d_bn(block.local_conv, _tokens_as_image(x, H, W)))
    x = mlp_residual(block.mlp, x, dtype)
    release_blas_buffers()
    return x


def stage_modules(encoder: nn.Module) -> Iterator[nn.Module]:
    """The blocks and patch mergings of the TinyViT's stages, in order: what each stage's forward
    runs."""
    for layer in encoder.layers:
        yield from layer.blocks
        if layer.downsample is not None:
            yield layer.downsample


def neck(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The TinyViT's neck on the last stage's (B, s*s, C) tokens -> (B, 256, s, s) contiguous.

    On channels-last tokens the neck's LayerNorm2d is a LayerNorm over the contiguous last axis.
    """
    B, _, C = x.shape
    s = encoder.embedding_size
    x = x.float().contiguous().view(B, s, s, C)
    conv1, norm1, conv2, norm2 = encoder.neck
    x = F.linear(x, conv1.weight.flatten(1))
    x = F.layer_norm(x, x.shape[-1:], norm1.weight, norm1.bias, norm1.eps)
    x = F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, None, conv2.stride, conv2.padding)
    x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], norm2.weight, norm2.bias, norm2.eps)
    return x.permute(0, 3, 1, 2).contiguous()


def mlp_residual(mlp: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x + mlp(x)` for inference, the residual add sharing fc2's pass; x (B, N, C) contiguous.
    With `dtype` (bf16) both linear layers run in it with split weights (`split_linear`);
    the residual stream keeps x's dtype.

    Runs in bands of tokens whose hidden activations fit `BAND_BYTES` (the MLP is per token and
    each product's rows do not depend on the others, so the result is the same bit for bit)."""
    if not _no_autograd(x, mlp.fc1.weight):
        return _mlp_residual_rows(mlp, x, dtype)
    tokens = x.view(-1, x.shape[-1])
    band = max(MIN_BAND_TOKENS, BAND_BYTES // (mlp.fc1.out_features * x.element_size()))
    if band >= tokens.shape[0]:
        return _mlp_residual_rows(mlp, x, dtype)
    out = torch.empty_like(x)
    rows_out = out.view(-1, x.shape[-1])
    for a in range(0, tokens.shape[0], band):
        _mlp_residual_rows(mlp, tokens[a : a + band], dtype, out=rows_out[a : a + band])
    return out


def _mlp_residual_rows(
    mlp: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`x + mlp(x)` for tokens x (..., C), written into `out` if given."""
    if dtype is None:
        return _add_linear(x, linear_gelu(mlp.norm(x), mlp.fc1.weight, mlp.fc1.bias), mlp.fc2, out)
    hidden = _split_linear(doubled(mlp.norm(x), dtype), mlp.fc1, gelu=True)
    return _split_residual(x, hidden, mlp.fc2, out)


def attention_windows_residual(
    attn: nn.Module, x: torch.Tensor, H: int, W: int, window_size: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`x + attention` over window_size^2 windows of the (H, W) token grid, for inference.

    x (B, H*W, C) contiguous -> (B, H*W, C). Same function as zero-padding the grid at the
    bottom/right to whole windows, attending within each window and cropping, but LayerNorm
    and qkv run on the H*W real tokens only: a zero token's LayerNorm is the norm's bias, so
    every padding token has the same qkv, which fills the padded window slots. With `dtype`
    (bf16) qkv, attention and the projection run in it; the residual stream keeps x's dtype.

    Runs in bands of whole window rows whose qkv fits `BAND_BYTES` (at 1024 px the first
    attention stage's qkv and windows are 24 and 26 MiB whole): windows never straddle bands,
    and each product's rows do not depend on the others, so the result is the same bit for bit.
    """
    B, L, C = x.shape
    ws = window_size
    if dtype is None:
        qkv_weights = _qkv_weights(attn, x.dtype)
    else:  # split weights, made once rather than per call (see `derived`)
        sources = (attn.qkv.weight, attn.qkv.bias, attn.norm.bias, attn.attention_biases)
        qkv_weights = derived(attn, f"qkv {dtype}", sources, lambda: _qkv_weights(attn, dtype))
    weight = attn.qkv.weight

    grid = x.view(B, H, W, C)
    row_bytes = ws * W * 3 * C * (torch.finfo(dtype).bits // 8 if dtype else x.element_size())
    band = ws * max(-(-MIN_BAND_TOKENS // (ws * W)), BAND_BYTES // row_bytes)  # whole window rows
    if band >= H or B > 1 or not _no_autograd(x, weight):
        tokens = _window_attention(attn, grid, ws, qkv_weights, dtype)
        return _project_residual(attn.proj, x, tokens, dtype)
    out = torch.empty_like(x)
    for a in range(0, H, band):
        b = min(a + band, H)
        tokens = _window_attention(attn, grid[:, a:b], ws, qkv_weights, dtype)
        _project_residual(attn.proj, x[:, a * W : b * W], tokens, dtype, out[:, a * W : b * W])
        del tokens
    return out


def _qkv_weights(attn: nn.Module, dtype: torch.dtype) -> tuple:
    """The qkv projection as `_window_attention` runs it: (weight, bias, pad_qkv, attn_mask), the
    weight split (`split_weight`) when dtype is a low precision."""
    heads, key_dim = attn.num_heads, attn.key_dim
    C = attn.qkv.weight.shape[1]
    # The softmax scale goes into the q rows of the qkv projection (per head: q, k, v).
    qkv_scale = attn.qkv.weight.new_tensor([attn.scale, 1.0, 1.0]).view(1, 3, 1, 1)
    weight = (attn.qkv.weight.view(heads, 3, key_dim, C) * qkv_scale).view(3 * C, C)
    bias = (attn.qkv.bias.view(heads, 3, key_dim) * qkv_scale[..., 0]).view(3 * C)
    # The bias is added by the copy into the windows (saving a pass over qkv).
    pad_qkv = F.linear(attn.norm.bias, weight, bias)
    # torch's fused CPU attention keeps each window's scores in cache; the bias needs its
    # 4-D (1, heads, N, N) form for that kernel (a 3-D one takes a much slower path).
    attn_mask = attn.attention_biases[:, attn.attention_bias_idxs].unsqueeze(0).to(dtype)
    if dtype != weight.dtype:
        weight, bias, pad_qkv = split_weight(weight, dtype), bias.to(dtype), pad_qkv.to(dtype)
    return weight, bias, pad_qkv, attn_mask


def _window_attention(
    attn: nn.Module, grid: torch.Tensor, ws: int, qkv_weights: tuple, dtype: torch.dtype | None
) -> torch.Tensor:
    """Window attention before the projection for the tokens grid (B, h, W, C) contiguous: the
    attended tokens (B, h*W, C) (in `dtype` if given). A band starts at a window row (h may end in
    a partial one)."""
    B, H, W, C = grid.shape
    heads, key_dim = attn.num_heads, attn.key_dim
    weight, bias, pad_qkv, attn_mask = qkv_weights
    # Intermediates are dropped as soon as they are consumed (`del`).
    normed = attn.norm(grid)
    qkv = F.linear(normed, weight) if dtype is None else F.linear(doubled(normed, dtype), weight)
    del normed

    nH, nW = -(-H // ws), -(-W // ws)
    windows = qkv.new_empty(B * nH * nW, ws * ws, 3 * C)
    _scatter_to_windows(qkv, windows.view(B, nH, nW, ws, ws, 3 * C).transpose(2, 3), bias, pad_qkv)
    del qkv
    # Strided (windows, heads, ws * ws, key_dim) views: the attention kernel reads them in
    # place, and whole-token rows make the copy above fast.
    q, k, v = windows.view(B * nH * nW, ws * ws, heads, 3, key_dim).transpose(1, 2).unbind(3)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
    del windows, q, k, v
    out = out.reshape(B, nH, nW, heads, ws, ws, key_dim)  # a view (the kernel writes it contiguous)
    tokens = out.new_empty(B, H, W, heads, key_dim)
    _gather_from_windows(out.permute(0, 1, 4, 2, 5, 3, 6), tokens)
    return tokens.view(B, H * W, C)


def _project_residual(
    proj: nn.Linear, x: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype | None, out=None
) -> torch.Tensor:
    """`x + proj(tokens)` (B, N, C), written into `out` if given; with `dtype` the tokens are in
    it and the projection has split weights (`_split_residual`)."""
    if dtype is None:
        return _add_linear(x, tokens, proj, out)
    return _split_residual(x, tokens, proj, out)


# --- Row bands ------------------------------------------------------------------------------

# Peak memory: at 1024 px an MBConv's two expanded activations are 64 MiB each, the first attention
# stage's qkv and windows 24 and 26 MiB, its MLP's hidden activations 32 MiB. Run in bands whose
# intermediates fit these budgets (the MBConvs in 32-row bands, 8 MiB for the token stages), the
# encoder's peak RSS (one image + a click, benchmarks/run.py) drops by ~170 MiB. Every output row
# is computed from the same input rows by the same kernels, so the result equals the unbanded one
# bit for bit (tests/test_fast_encoder.py). The price: an MBConv recomputes a halo row per band
# edge, and each band is a few more kernel calls, which cost little on an idle machine but a lot
# on a busy one, where each multi-threaded call waits for a descheduled thread. Hence no bands
# for the patch embedding and mergings (the peak does not move without them) and few for the
# MBConvs; smaller budgets (8 MiB everywhere) saved only ~5 MiB more and cost ~5% of an encode.
CONV_BAND_BYTES = 16 << 20
BAND_BYTES = 8 << 20
# Matrix products run on bands of at least this many tokens: a BLAS may split a product with few
# rows along its inner dimension (MKL does below ~256 rows), which would change the rounding.
MIN_BAND_TOKENS = 1024


def _banded(
    rows, height: int, hidden_row_bytes: int, x: torch.Tensor, budget: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`rows(a, b)` (B, C, b - a, W) channels-last for output rows [a, b) of a `height`-row
    result, assembled band by band so that intermediates of only a band's rows are alive.

    `hidden_row_bytes`: the bytes of intermediates per output row. One band (no copy) when they
    fit `budget` whole, or when autograd records a graph (training runs the exact path anyway).
    `out`: write the result there, which may be the input x itself when each band reads input
    rows of its own and the neighbouring bands only: a band is written once the next one is
    computed, so no band reads rows already overwritten.
    """
    band = max(1, budget // max(1, hidden_row_bytes * x.shape[0]))
    if band >= height or not _no_autograd(x):
        return rows(0, height) if out is None else out.copy_(rows(0, height))
    pending = None
    for a in range(0, height, band):
        b = min(a + band, height)
        y = rows(a, b)
        if out is None:  # the first band tells the dtype (a bf16 stage may return bf16)
            shape = (y.shape[0], y.shape[1], height, y.shape[3])
            out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        if pending is not None:
            out[:, :, pending[0] : pending[1]] = pending[2]
        pending = (a, b, y)
        del y
    out[:, :, pending[0] : pending[1]] = pending[2]
    return out


def _input_rows(conv: nn.Conv2d, a: int, b: int, height: int) -> tuple[int, int, int]:
    """Input rows [lo, hi) of `conv` over an input of `height` rows that give its output rows
    [a, b): run on them (with its own padding), it returns `skip` rows to drop, then those rows.

    lo keeps the stride's phase, so every kept output row reads the same input rows as in the
    whole image; only the dropped first row reads the padding where the band has a neighbour.
    """
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    lo = max(s * a - s * -(-p // s), 0)
    hi = min(s * (b - 1) - p + k, height)
    return lo, hi, a - lo // s


# --- Convolutions ---------------------------------------------------------------------------


def folded_conv_bn(conv_bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A Conv2dBN's conv weight and bias with the eval-mode BatchNorm folded in.

    Computed from the current parameters and running statistics on every call (a few
    microseconds), so loading new weights or training can never leave it stale.
    """
    bn = conv_bn.bn
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return conv_bn.c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def _conv(
    c: nn.Conv2d,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`GELU?(conv(x; weight, bias) + residual?)` with `c`'s geometry, channels-last."""
    x = _to_channels_last(x)
    if _FUSED_CONV and x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES and _no_autograd(x, weight):
        weight = _to_channels_last(weight)
        if residual is not None:
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x,
                _to_channels_last(residual),
                weight,
                bias,
                c.padding,
                c.stride,
                c.dilation,
                c.groups,
                "add",
                None,
                None,
                [],
                None,
            )
            return _gelu(y) if gelu else y
        # oneDNN fuses GELU (algorithm "none": the exact erf form) into the convolution.
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            weight,
            bias,
            c.padding,
            c.stride,
            c.dilation,
            c.groups,
            "gelu" if gelu else "none",
            [],
            "none" if gelu else "",
        )
    y = F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
    if residual is not None:
        y = y + residual
    return _gelu(y) if gelu else y


def _no_autograd(*tensors: torch.Tensor) -> bool:
    """True when no graph is being recorded for these tensors (in-place and fused kernels are safe)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, in place when nothing records a graph (`x` must be a temporary)."""
    return torch.ops.aten.gelu_(x) if _no_autograd(x) else F.gelu(x)


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _tokens_as_image(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) contiguous tokens -> the same memory as a channels-last (B, C, H, W) tensor."""
    return x.view(x.shape[0], H, W, x.shape[-1]).permute(0, 3, 1, 2)


def _image_as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), free when `x` is channels-last."""
    B, C = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(B, -1, C)


# --- Linear layers --------------------------------------------------------------------------


def doubled(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) -> (..., 2K) in `dtype`: x rounded to it, twice along the last axis (the input
    `split_linear` needs)."""
    K = x.shape[-1]
    if not _no_autograd(x):
        return torch.cat([x, x], dim=-1).to(dtype)
    out = x.new_empty(*x.shape[:-1], 2 * K, dtype=dtype)
    out[..., :K].copy_(x)
    out[..., K:].copy_(out[..., :K])
    return out


def split_linear(
    x_doubled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x in a low precision (bf16) given as `x_doubled =
    doubled(x)` (..., 2K), with the fp32 weight (M, K) split into a high and a low bf16 part: one
    matrix product [x, x] @ [W_hi, W_lo]^T = x @ (W_hi + W_lo)^T, accumulated in fp32 by oneDNN.

    Why: rounding the weights to bf16 is the largest part of a bf16 encoder's error (a fixed
    perturbation of every layer, measured at ~60% of it), while on CPUs with AMX a product with
    twice the inner length costs little more than the plain one. Returns (..., M) in x's dtype,
    through GELU when `gelu`.
    """
    dtype = x_doubled.dtype
    split, bias = split_weight(weight, dtype), None if bias is None else bias.to(dtype)
    return linear_gelu(x_doubled, split, bias) if gelu else F.linear(x_doubled, split, bias)


def split_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An fp32 weight (M, K) as [W_hi, W_lo] (M, 2K) in `dtype`, W_hi + W_lo = W to ~2^-16."""
    high = weight.to(dtype)
    return torch.cat([high, (weight - high.to(weight.dtype)).to(dtype)], dim=1)


def _split_residual(
    x: torch.Tensor, inputs: torch.Tensor, linear: nn.Linear, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`x + linear(inputs)` for low-precision inputs, fp32 x: the split weights' two halves as two
    products added to x, each output rounded to the low precision. Same error as one product
    over the doubled input (the low half's rounding is ~2^-8 of the high one's), but without
    writing the doubled input: ~13% faster for the encoder's fc2 (its input is the widest)."""
    high, low, bias = derived(
        linear, f"halves {inputs.dtype}", (linear.weight, linear.bias), lambda: _halves(linear, inputs.dtype)
    )
    out = torch.add(x, F.linear(inputs, high, bias), out=out)
    return out.add_(F.linear(inputs, low))


def _halves(linear: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_hi, W_lo, bias) of `split_weight`, each contiguous, in dtype."""
    K = linear.weight.shape[1]
    split = split_weight(linear.weight, dtype)
    return split[:, :K].contiguous(), split[:, K:].contiguous(), linear.bias.to(dtype)


def _split_linear(x_doubled: torch.Tensor, linear: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """`split_linear` of an nn.Linear, its split weights made once (`derived`), not per call."""
    dtype = x_doubled.dtype

    def make():
        return split_weight(linear.weight, dtype), None if linear.bias is None else linear.bias.to(dtype)

    sources = (linear.weight,) if linear.bias is None else (linear.weight, linear.bias)
    split, bias = derived(linear, f"split {dtype}", sources, make)
    return linear_gelu(x_doubled, split, bias) if gelu else F.linear(x_doubled, split, bias)


def _add_linear(
    x: torch.Tensor, inputs: torch.Tensor, linear: nn.Linear, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`x + linear(inputs)` with the add folded into the matrix product's accumulation.

    x (..., N, C_out), inputs (..., N, C_in) -> (..., N, C_out), a new tensor or `out` (contiguous,
    x's shape; not with autograd).
    """
    if out is not None:
        out = torch.add(x, linear.bias, out=out)
    else:
        out = x + linear.bias
    if not _no_autograd(out, inputs, linear.weight):
        return out + F.linear(inputs, linear.weight)
    out.view(-1, out.shape[-1]).addmm_(inputs.reshape(-1, inputs.shape[-1]), linear.weight.t())
    return out


# --- Windows --------------------------------------------------------------------------------


def _window_parts(n: int, ws: int) -> list[tuple[slice, tuple[int, ...], tuple]]:
    """Split an image axis of length n into whole windows and the partial last window: for each
    part, (slice of the image axis, its shape as window dims, index into (window, in-window))."""
    full, rest = divmod(n, ws)
    parts = []
    if full:
        parts.append((slice(0, full * ws), (full, ws), (slice(0, full), slice(None))))
    if rest:
        parts.append((slice(full * ws, n), (rest,), (full, slice(0, rest))))
    return parts


def _paired_parts(image: torch.Tensor, windows: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Views of the same tokens in image (B, H, W, *E) and windows (B, nH, ws, nW, ws, *E) layout,
    as a few pairs of equally shaped views (the image need not be a whole number of windows).

    A generator on purpose: with autograd on, a view must be taken after the previous in-place
    copy into its base, or autograd sees a stale view.
    """
    B, H, W, *rest = image.shape
    ws = windows.shape[2]
    for rows, row_shape, row_index in _window_parts(H, ws):
        for cols, col_shape, col_index in _window_parts(W, ws):
            part = image[:, rows, cols].view(B, *row_shape, *col_shape, *rest)
            yield part, windows[(slice(None), *row_index, *col_index)]


def _scatter_to_windows(
    image: torch.Tensor, windows: torch.Tensor, bias: torch.Tensor, fill: torch.Tensor
) -> None:
    """Write image + bias (B, H, W, *E) into windows (B, nH, ws, nW, ws, *E), a view of the
    window buffer; window slots beyond the image (bottom/right padding) get `fill` (E)."""
    fused = _no_autograd(image, bias)  # out= cannot record a graph
    for part, slots in _paired_parts(image, windows):
        if fused:
            torch.add(part, bias, out=slots)
        else:
            slots.copy_(part + bias)
    ws = windows.shape[2]
    H, W = image.shape[1:3]
    if H % ws:
        windows[:, -1, H % ws :] = fill
    if W % ws:
        windows[:, :, :, -1, W % ws :] = fill


def _gather_from_windows(windows: torch.Tensor, image: torch.Tensor) -> None:
    """Copy windows (B, nH, ws, nW, ws, *E) into image (B, H, W, *E), dropping the padding."""
    for part, slots in _paired_parts(image, windows):
        part.copy_(slots)
