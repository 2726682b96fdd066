"""EfficientViT's lightweight multi-scale linear attention (LiteMLA).

Queries, keys and values come from a 1x1 convolution, plus a multi-scale copy aggregated by a
depthwise 5x5 and a grouped 1x1 convolution; attention is ReLU-linear: out = (V Kᵀ) Q / (1ᵀ Kᵀ Q),
computed by padding V with a row of ones so numerator and normaliser come from one matmul.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .efficientvit_layers import ConvNormAct

EPS = 1e-15


class LiteMLA(nn.Module):
    """(B, C, H, W) -> (B, C, H, W) linear attention with heads of width `dim`."""

    def __init__(self, channels: int, dim: int = 32, scales: tuple = (5,)) -> None:
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim = dim
        self.qkv = ConvNormAct(channels, 3 * total, 1, norm=False)
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                    nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
                )
                for s in scales
            ]
        )
        self.proj = ConvNormAct(total * (1 + len(scales)), channels, 1)

    def linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, heads*3*dim, H, W) -> (B, heads*dim, H, W)."""
        b, _, h, w = qkv.shape
        qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w)  # (B, heads, 3*dim, N)
        q, k, v = qkv.split(self.dim, dim=2)
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones gives the normaliser
        out = (v @ k.transpose(-1, -2)) @ q  # (B, heads, dim + 1, N)
        out = out[:, :, :-1] / (out[:, :, -1:] + EPS)
        return out.reshape(b, -1, h, w)

    def quadratic_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """The same attention via the N x N map, used when N <= dim (tiny inputs)."""
        b, _, h, w = qkv.shape
        q, k, v = qkv.reshape(b, -1, 3 * self.dim, h * w).split(self.dim, dim=2)
        att = F.relu(k).transpose(-1, -2) @ F.relu(q)
        att = att / (att.sum(dim=2, keepdim=True) + EPS)
        return (v @ att).reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        h, w = qkv.shape[-2:]
        out = self.linear_attention(qkv).to(qkv.dtype) if h * w > self.dim else self.quadratic_attention(qkv)
        return self.proj(out)
