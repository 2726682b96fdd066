"""TinyViT-5M image encoder in MobileSAM's configuration.

Input (B, 3, S, S) normalised pixels, output (B, 256, S/16, S/16) image embedding; with S = 1024
that is SAM's 256x64x64 embedding. Stages: a conv patch embedding (stride 4), one MBConv stage,
then three windowed-attention stages; patch merging halves the resolution after stages 0 and 1
only (MobileSAM keeps stride 16 overall instead of TinyViT's 32), and a SAM-style neck.

The classification head (`norm_head`, `head`) is unused but kept: the official `mobile_sam.pt`
carries its weights, and strict loading needs the same keys.

Two implementations (see `FastPath`): `exact` runs the official order of operations, so the
embeddings equal the reference bit for bit; the default fast path (eval only) is the same function
rearranged for CPU inference in `fast_encoder`, differing by float rounding only. Each module's
forward below is the official one; a module with a fast path hands over to it in its first line.
"""

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_encoder
from .common import FastPath, conv_neck


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
        if fast_encoder.active(self):
            return fast_encoder.conv2d_bn(self, x)
        return super().forward(x)


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
        if fast_encoder.active(self):
            return fast_encoder.patch_embed(self, x)
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
        if fast_encoder.active(self):
            return fast_encoder.mbconv(self, x)
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
        if fast_encoder.active(self):
            return fast_encoder.patch_merging(self, x)
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
        if fast_encoder.active(self):
            return fast_encoder.tiny_vit_block(self, x)
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
        if fast_encoder.active(self):
            # One flat loop over the blocks: a stage's forward would keep its input alive (in
            # its caller's frame) until the whole stage is done, 16 MiB at 1024 px.
            for module in fast_encoder.stage_modules(self):
                # x is this loop's own temporary: an MBConv may overwrite it (16 MiB at 1024 px).
                x = fast_encoder.mbconv(module, x, inplace=True) if isinstance(module, MBConv) else module(x)
            return fast_encoder.neck(self, x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        s = self.embedding_size
        return self.neck(x.view(B, s, s, C).permute(0, 3, 1, 2))

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """Run the fast path's matrix products and convolutions in `dtype` (torch.bfloat16) with
        fp32 accumulation, or in fp32 (None).

        Where the low precision goes was measured stage by stage (benchmarks/bf16_error.py): the
        attention stages' linear layers run in bf16 with split weights
        (`fast_encoder.split_linear`), the MBConv stage in plain bf16; the patch embedding and the
        patch mergings (~9% of the arithmetic, but a third of the embedding's error in bf16) stay
        fp32, as do the residual stream, the LayerNorms, the depthwise local convs (which carry
        the stream) and the neck.
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


def _init_weights(m: nn.Module) -> None:
    # Matters only when training from scratch (distillation); checkpoints overwrite it.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
