"""Convolutional building blocks of EfficientViT (Cai et al., 2023), as used by EfficientViT-SAM.

Module and parameter names follow the official checkpoints (`...conv.weight`, `...norm.running_mean`,
`main` / `shortcut`, `op_list`), so `efficientvit_sam_l0.pt` loads unchanged. All normalisation
layers use eps 1e-6 as the official model factory sets them.
"""

from collections.abc import Sequence

import torch
from torch import nn

NORM_EPS = 1e-6


def gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class ConvNormAct(nn.Module):
    """Conv2d ("same" padding) -> optional BatchNorm -> optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=bias
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class ResBlock(nn.Module):
    """Two 3x3 convolutions (the first may stride); `fewer_norm` drops the first norm for a bias."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, fewer_norm: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(
            in_channels, in_channels, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=gelu()
        )
        self.conv2 = ConvNormAct(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """Fused inverted bottleneck: 3x3 expansion conv, then 1x1 projection."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        fewer_norm: bool = False,
    ) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.spatial_conv = ConvNormAct(
            in_channels, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=gelu()
        )
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expansion, 3x3 depthwise (may stride), 1x1 projection."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        fewer_norm: bool = False,
    ) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(
            in_channels, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=gelu()
        )
        self.depth_conv = ConvNormAct(
            mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, act=gelu()
        )
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Residual(nn.Module):
    """main(x) + x (with `shortcut` an identity) or main(x) alone (shortcut None, e.g. when striding)."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + self.shortcut(x) if self.shortcut is not None else out


class Sequence_(nn.Module):
    """Modules applied in order, stored as `op_list` (the checkpoints' name)."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W), computed as EfficientViT does (two-pass mean/var)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x - x.mean(dim=1, keepdim=True)
        out = out / torch.sqrt(out.square().mean(dim=1, keepdim=True) + self.eps)
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
