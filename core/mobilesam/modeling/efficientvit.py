"""EfficientViT-SAM's image encoder (Zhang et al., 2024): an EfficientViT-L backbone, a neck that
fuses its last three stages at 64 x 64, and a channel LayerNorm. It reads a 512 x 512 image and
yields SAM-compatible (B, 256, 64, 64) embeddings, so SAM's prompt encoder and mask decoder (in
the 1024-pixel prompt frame) are used unchanged.

Parameter names follow the official checkpoints (`backbone.stages.*`, `neck.input_ops.*`, ...).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .efficientvit_layers import (
    NORM_EPS,
    ConvNormAct,
    FusedMBConv,
    Identity,
    LayerNorm2d,
    MBConv,
    ResBlock,
    Residual,
    Sequence_,
    gelu,
)
from .lite_mla import LiteMLA

EMBED_SIZE = 64


class EfficientViTBlock(nn.Module):
    """Global context (LiteMLA) then local mixing (MBConv), each residual."""

    def __init__(self, channels: int, dim: int = 32, expand_ratio: float = 4) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim), Identity())
        self.local_module = Residual(
            MBConv(channels, channels, expand_ratio=expand_ratio, fewer_norm=True), Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


def _local_block(kind: str, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool) -> nn.Module:
    if kind == "res":
        return ResBlock(cin, cout, stride, fewer_norm)
    if kind == "fmb":
        return FusedMBConv(cin, cout, stride, expand, fewer_norm)
    return MBConv(cin, cout, stride, expand, fewer_norm)


class EfficientViTLargeBackbone(nn.Module):
    """Five stages at strides 2, 4, 8, 16, 32; (B, 3, S, S) -> dict of stage outputs."""

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        depths: Sequence[int] = (1, 1, 1, 4, 4),
        blocks: Sequence[str] = ("res", "fmb", "fmb", "mb", "att"),
        expands: Sequence[float] = (1, 4, 4, 4, 6),
        fewer_norms: Sequence[bool] = (False, False, False, True, True),
        qkv_dim: int = 32,
    ) -> None:
        super().__init__()
        stem = [ConvNormAct(3, widths[0], 3, stride=2, act=gelu())]
        stem += [
            Residual(_local_block(blocks[0], widths[0], widths[0], 1, expands[0], fewer_norms[0]), Identity())
            for _ in range(depths[0])
        ]
        stages = [Sequence_(stem)]
        for i in range(1, len(widths)):
            down_kind = blocks[i] if blocks[i] in ("mb", "fmb") else "mb"
            ops = [
                Residual(
                    _local_block(down_kind, widths[i - 1], widths[i], 2, expands[i] * 4, fewer_norms[i]), None
                )
            ]
            for _ in range(depths[i]):
                if blocks[i] == "att":
                    ops.append(EfficientViTBlock(widths[i], qkv_dim, expands[i]))
                else:
                    ops.append(
                        Residual(
                            _local_block(blocks[i], widths[i], widths[i], 1, expands[i], fewer_norms[i]),
                            Identity(),
                        )
                    )
            stages.append(Sequence_(ops))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict:
        features = {}
        for i, stage in enumerate(self.stages):
            features[f"stage{i}"] = x = stage(x)
        return features


class Resize(nn.Module):
    """Bicubic resize to (size, size) (no-op when already there)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Stage 4, 3, 2 features -> 1x1 conv + resize to 64 x 64 each, summed, FusedMBConv blocks, 1x1 conv."""

    def __init__(
        self,
        stages: Sequence[str] = ("stage4", "stage3", "stage2"),
        in_channels: Sequence[int] = (512, 256, 128),
        width: int = 256,
        depth: int = 4,
        out_dim: int = 256,
    ) -> None:
        super().__init__()
        self.stage_names = list(stages)
        self.input_ops = nn.ModuleList(
            [Sequence_([ConvNormAct(c, width, 1), Resize(EMBED_SIZE)]) for c in in_channels]
        )
        self.middle = Sequence_(
            [Residual(FusedMBConv(width, width, expand_ratio=1), Identity()) for _ in range(depth)]
        )
        self.output_ops = nn.ModuleList([Sequence_([ConvNormAct(width, out_dim, 1, bias=True, norm=False)])])

    def forward(self, features: dict) -> torch.Tensor:
        x = sum(op(features[name]) for name, op in zip(self.stage_names, self.input_ops))
        return self.output_ops[0](self.middle(x))


class EfficientViTSamEncoder(nn.Module):
    """(B, 3, 512, 512) normalised image -> (B, 256, 64, 64) SAM embedding.

    `img_size` is the 1024-pixel frame of prompts and masks (SAM's); `input_size` the 512 pixels
    the encoder itself reads, to which the predictor resizes images.
    """

    def __init__(self, img_size: int = 1024, input_size: int = 512) -> None:
        super().__init__()
        self.img_size = img_size
        self.input_size = input_size
        self.backbone = EfficientViTLargeBackbone()
        self.neck = SamNeck()
        self.norm = LayerNorm2d(256, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.neck(self.backbone(x)))
