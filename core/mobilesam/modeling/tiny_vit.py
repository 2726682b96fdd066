"""TinyViT-5M image encoder in MobileSAM's configuration.

Input (B, 3, S, S) normalised pixels, output (B, 256, S/16, S/16) image embedding; with S = 1024
that is SAM's 256x64x64 embedding. Stages: a conv patch embedding (stride 4), one MBConv stage,
then three windowed-attention stages; patch merging halves the resolution after stages 0 and 1
only (MobileSAM keeps stride 16 overall instead of TinyViT's 32), and a SAM-style neck.

The classification head (`norm_head`, `head`) is unused but kept: the official `mobile_sam.pt`
carries its weights, and strict loading needs the same keys.

Two implementations (see `FastPath`): `exact` runs the official order of operations, so the
embeddings equal the reference bit for bit; the default fast path (eval only) is the same function
rearranged for CPU inference, differing by float rounding only:
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
- the neck runs its LayerNorms over the contiguous channel axis.
"""

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .common import FastPath, conv_neck

# oneDNN's fused convolution (conv + GELU, conv + add) as torch's inductor uses it for CPU inference.
_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _fast(module: FastPath) -> bool:
    """Whether `module` runs its fast path now: eval mode, not exact, and not being traced or
    compiled (the ONNX export traces the exact code: fused oneDNN kernels and in-place window
    copies do not export, and a compiler does its own fusion)."""
    return module.use_fast_path() and not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
    )


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


class Conv2dBN(FastPath, nn.Sequential):
    """Conv (no bias) followed by BatchNorm; state-dict keys `c.*` and `bn.*`."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x) if _fast(self) else super().forward(x)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv's weight and bias with the eval-mode BatchNorm folded in.

        Computed from the current parameters and running statistics on every call (a few
        microseconds), so loading new weights or training can never leave it stale.
        """
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return self.c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def fused(
        self, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eval-mode `GELU?(bn(c(x)) + residual?)` as one convolution, channels-last in and out.

        x (B, C_in, H, W) and residual (B, C_out, H', W'), ideally channels-last already. With a
        low-precision `compute_dtype` the convolution runs in it (oneDNN accumulates in fp32) and
        returns it, but a residual of another dtype is added in that dtype (the fp32 stream).
        """
        weight, bias = self.folded()
        dtype = self.compute_dtype or weight.dtype  # a bf16 input to an fp32 layer is cast up
        x, weight, bias = (t.to(dtype) for t in (x, weight, bias))
        if residual is not None and residual.dtype != x.dtype:
            y = residual + self._conv(x, weight, bias)  # promotes to the residual's dtype
            return _gelu(y) if gelu else y
        return self._conv(x, weight, bias, gelu, residual)

    def _conv(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        gelu: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.c
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


class PatchEmbed(FastPath, nn.Module):
    """Two stride-2 3x3 convs: (B, 3, S, S) -> (B, C, S/4, S/4) (channels-last on the fast path)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast(self):
            return self.seq[2].fused(self.seq[0].fused(x, gelu=True))
        return self.seq(x)


class MBConv(FastPath, nn.Module):
    """Inverted residual block (expand 1x1, depthwise 3x3, project 1x1) on (B, C, H, W)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast(self):
            y = self.conv2.fused(self.conv1.fused(x, gelu=True), gelu=True)
            return self.conv3.fused(y, gelu=True, residual=x)
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(FastPath, nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', C_out), with H' = H/stride."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast(self):
            if x.ndim == 3:
                x = _tokens_as_image(x.contiguous(), *self.input_resolution)
            x = self.conv2.fused(self.conv1.fused(x, gelu=True), gelu=True)
            return _image_as_tokens(self.conv3.fused(x))
        if x.ndim == 3:
            H, W = self.input_resolution
            x = x.view(x.shape[0], H, W, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm feed-forward on (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))

    def fast_residual(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`x + self(x)` for inference, the residual add sharing fc2's pass; x (B, N, C) contiguous.
        With `dtype` (bf16) both linear layers run in it with split weights (`_split_linear`);
        the residual stream keeps x's dtype."""
        if dtype is None:
            return _add_linear(x, _gelu(self.fc1(self.norm(x))), self.fc2)
        hidden = _split_linear(_doubled(self.norm(x), dtype), self.fc1.weight, self.fc1.bias)
        return x + _split_linear(_doubled_gelu(hidden), self.fc2.weight, self.fc2.bias)


class Attention(nn.Module):
    """Pre-norm window attention on (B, N, C) with a learned bias per (|dy|, |dx|) offset and head."""

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offset_ids: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offset_ids.setdefault(offset, len(offset_ids)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offset_ids)))
        # Derived from the resolution, so not part of the checkpoint.
        self.register_buffer(
            "attention_bias_idxs",
            torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=3)  # each (B, heads, N, key_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        # Written out in the official order of operations (a fused kernel is no faster on these
        # 49- and 196-token windows), so embeddings match the official model bit for bit.
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def fast_windows_residual(
        self, x: torch.Tensor, H: int, W: int, window_size: int, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`x + attention` over window_size^2 windows of the (H, W) token grid, for inference.

        x (B, H*W, C) contiguous -> (B, H*W, C). Same function as zero-padding the grid at the
        bottom/right to whole windows, attending within each window and cropping, but LayerNorm
        and qkv run on the H*W real tokens only: a zero token's LayerNorm is the norm's bias, so
        every padding token has the same qkv, which fills the padded window slots. With `dtype`
        (bf16) qkv, attention and the projection run in it; the residual stream keeps x's dtype.
        """
        B, L, C = x.shape
        heads, key_dim, ws = self.num_heads, self.key_dim, window_size
        # The softmax scale goes into the q rows of the qkv projection (per head: q, k, v).
        qkv_scale = x.new_tensor([self.scale, 1.0, 1.0]).view(1, 3, 1, 1)
        weight = (self.qkv.weight.view(heads, 3, key_dim, C) * qkv_scale).view(3 * C, C)
        bias = (self.qkv.bias.view(heads, 3, key_dim) * qkv_scale[..., 0]).view(3 * C)
        # The bias is added by the copy into the windows below (saving a pass over qkv).
        pad_qkv = F.linear(self.norm.bias, weight, bias)
        normed = self.norm(x)
        if dtype is None:
            qkv = F.linear(normed, weight)
        else:
            qkv = _split_linear(_doubled(normed, dtype), weight)
            bias, pad_qkv = bias.to(dtype), pad_qkv.to(dtype)
        qkv = qkv.view(B, H, W, 3 * C)

        nH, nW = -(-H // ws), -(-W // ws)
        windows = qkv.new_empty(B * nH * nW, ws * ws, 3 * C)
        _scatter_to_windows(qkv, windows.view(B, nH, nW, ws, ws, 3 * C).transpose(2, 3), bias, pad_qkv)
        # Strided (windows, heads, ws * ws, key_dim) views: the attention kernel reads them in
        # place, and whole-token rows make the copy above fast.
        q, k, v = windows.view(B * nH * nW, ws * ws, heads, 3, key_dim).transpose(1, 2).unbind(3)

        # torch's fused CPU attention keeps each window's scores in cache; the bias needs its
        # 4-D (1, heads, N, N) form for that kernel (a 3-D one takes a much slower path).
        bias = self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        out = out.reshape(B, nH, nW, heads, ws, ws, key_dim)  # a view (the kernel writes it contiguous)
        if dtype is None:
            grid = out.new_empty(B, H, W, heads, key_dim)
            _gather_from_windows(out.permute(0, 1, 4, 2, 5, 3, 6), grid)
            return _add_linear(x, grid.view(B, L, C), self.proj)
        # The tokens go straight into the first half of the doubled input the projection needs.
        doubled = out.new_empty(B, L, 2 * C)
        _gather_from_windows(out.permute(0, 1, 4, 2, 5, 3, 6), doubled[..., :C].view(B, H, W, heads, key_dim))
        doubled[..., C:].copy_(doubled[..., :C])
        return x + _split_linear(doubled, self.proj.weight, self.proj.bias)


class TinyViTBlock(FastPath, nn.Module):
    """Window attention, depthwise local conv, feed-forward; on (B, H*W, C)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, pad=local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast(self):
            return self.forward_fast(x)
        H, W = self.input_resolution
        B, L, C = x.shape
        ws = self.window_size
        if H == ws and W == ws:
            attn = self.attn(x)
        else:
            grid = x.view(B, H, W, C)
            pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            pH, pW = H + pad_b, W + pad_r
            nH, nW = pH // ws, pW // ws
            windows = grid.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
            windows = self.attn(windows)
            grid = windows.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
            attn = grid[:, :H, :W].reshape(B, L, C)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W)).view(B, C, L).transpose(1, 2)
        return x + self.mlp(x)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: the tokens stay (B, H*W, C) contiguous, which the local conv reads as a
        channels-last image."""
        H, W = self.input_resolution
        dtype = self.compute_dtype
        x = x.float()  # the residual stream stays fp32 (a bf16 patch merging hands over bf16)
        x = self.attn.fast_windows_residual(x.contiguous(), H, W, self.window_size, dtype)
        # The depthwise local conv is the stream itself (no residual around it): it stays fp32.
        x = _image_as_tokens(self.local_conv.fused(_tokens_as_image(x, H, W)))
        return self.mlp.fast_residual(x, dtype)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(FastPath, nn.Module):
    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            # Resolutions 1/4, 1/8, 1/16, 1/16: the last merging keeps stride 1.
            stage_res = res // (2 ** min(i, 2))
            is_last = i == len(embed_dims) - 1
            downsample = None
            if not is_last:
                stride = 1 if i + 1 == len(embed_dims) - 1 else 2
                downsample = PatchMerging((stage_res, stage_res), dim, embed_dims[i + 1], stride)
            if i == 0:
                layer = ConvLayer(dim, depths[i], mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(
                    dim,
                    (stage_res, stage_res),
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    downsample,
                )
            self.layers.append(layer)
        self.embedding_size = res // 4
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = conv_neck(embed_dims[-1], out_chans)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        s = self.embedding_size
        if _fast(self):
            return self.neck_fast(x.float().contiguous().view(B, s, s, C))
        return self.neck(x.view(B, s, s, C).permute(0, 3, 1, 2))

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """Run the fast path's matrix products and convolutions in `dtype` (torch.bfloat16) with
        fp32 accumulation, or in fp32 (None).

        Where the low precision goes was measured stage by stage (benchmarks/bf16_error.py): the
        attention stages' linear layers run in bf16 with split weights (`_split_linear`), the
        MBConv stage in plain bf16; the patch embedding and the patch mergings (~9% of the
        arithmetic, but a third of the embedding's error in bf16) stay fp32, as do the residual
        stream, the LayerNorms, the depthwise local convs (which carry the stream) and the neck.
        """
        for module in self.modules():
            if isinstance(module, FastPath):
                module.compute_dtype = dtype
        for module in itertools.chain(self.patch_embed.modules(), self._mergings()):
            if isinstance(module, FastPath):
                module.compute_dtype = None
        for module in self.modules():
            if isinstance(module, TinyViTBlock):
                module.local_conv.compute_dtype = None

    def _mergings(self) -> Iterator[nn.Module]:
        for layer in self.layers:
            if layer.downsample is not None:
                yield from layer.downsample.modules()

    def neck_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The neck on (B, s, s, C) channels-last tokens: its LayerNorm2d is a LayerNorm over the
        contiguous last axis. Returns (B, 256, s, s) contiguous."""
        conv1, norm1, conv2, norm2 = self.neck
        x = F.linear(x, conv1.weight.flatten(1))
        x = F.layer_norm(x, x.shape[-1:], norm1.weight, norm1.bias, norm1.eps)
        x = F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, None, conv2.stride, conv2.padding)
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], norm2.weight, norm2.bias, norm2.eps)
        return x.permute(0, 3, 1, 2).contiguous()


def _doubled(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) -> (..., 2K) in `dtype`: x rounded to it, twice along the last axis (the input
    `_split_linear` needs)."""
    K = x.shape[-1]
    if not _no_autograd(x):
        return torch.cat([x, x], dim=-1).to(dtype)
    out = x.new_empty(*x.shape[:-1], 2 * K, dtype=dtype)
    out[..., :K].copy_(x)
    out[..., K:].copy_(out[..., :K])
    return out


def _doubled_gelu(x: torch.Tensor) -> torch.Tensor:
    """`_doubled(gelu(x))` for a low-precision temporary x (..., K): GELU in place, one concat."""
    x = _gelu(x)
    return torch.cat([x, x], dim=-1)


def _split_linear(
    doubled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x in a low precision (bf16) given as `_doubled(x)`
    (..., 2K), with the fp32 weight (M, K) split into a high and a low bf16 part: one matrix
    product [x, x] @ [W_hi, W_lo]^T = x @ (W_hi + W_lo)^T, accumulated in fp32 by oneDNN.

    Why: rounding the weights to bf16 is the largest part of a bf16 encoder's error (a fixed
    perturbation of every layer, measured at ~60% of it), while on CPUs with AMX a product with
    twice the inner length costs little more than the plain one. Returns (..., M) in x's dtype.
    """
    dtype = doubled.dtype
    high = weight.to(dtype)
    low = (weight - high.to(weight.dtype)).to(dtype)
    return F.linear(doubled, torch.cat([high, low], dim=1), None if bias is None else bias.to(dtype))


def _add_linear(x: torch.Tensor, inputs: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """`x + linear(inputs)` with the add folded into the matrix product's accumulation.

    x (B, N, C_out), inputs (B, N, C_in) -> (B, N, C_out), a new tensor.
    """
    out = x + linear.bias
    if not _no_autograd(out, inputs, linear.weight):
        return out + F.linear(inputs, linear.weight)
    out.view(-1, out.shape[-1]).addmm_(inputs.reshape(-1, inputs.shape[-1]), linear.weight.t())
    return out


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


def _init_weights(m: nn.Module) -> None:
    # Matters only when training from scratch (distillation); checkpoints overwrite it.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
