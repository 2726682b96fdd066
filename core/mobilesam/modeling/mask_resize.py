"""Mask postprocessing on the fast path: `Sam.postprocess_masks` without the full-size detour.

The official postprocessing upsamples the low-res logits (S/4 x S/4) bilinearly to S x S, crops
the unpadded input region and resamples that to the original image size. An exact 4x bilinear
upsampling (half-pixel rule, clamped borders) is four fixed two-tap filters: output 4k + r blends
input rows k-1|k (r = 0, 1) or k|k+1 (r = 2, 3) with weights 5/8, 7/8, 1/8, 3/8 on the second row,
borders being the edge row repeated. So each axis is four scalar `lerp`s over shifted slices of the
edge-padded input, computed only for the cropped region; the second resampling is skipped when it
is the identity (input and original sizes equal) and otherwise left to `F.interpolate`.
Results equal the official ones up to float rounding.
"""

import math

import torch
import torch.nn.functional as F

# (first input row offset relative to k, weight of the following row) for outputs 4k + r.
_PHASES = ((-1, 0.625), (-1, 0.875), (0, 0.125), (0, 0.375))


def _upsample4_axis(x: torch.Tensor, dim: int, keep: int) -> torch.Tensor:
    """4x bilinear upsampling of axis `dim`, keeping the first `keep` outputs."""
    dim = dim % x.ndim
    n = math.ceil(keep / 4)
    padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)  # row j at j + 1
    out = torch.empty(*x.shape[:dim], n, 4, *x.shape[dim + 1 :], dtype=x.dtype, device=x.device)
    for r, (offset, weight) in enumerate(_PHASES):
        start = 1 + offset  # input row k + offset sits at k + offset + 1 in `padded`
        torch.lerp(padded.narrow(dim, start, n), padded.narrow(dim, start + 1, n), weight, out=out.select(dim + 1, r))
    return out.flatten(dim, dim + 1).narrow(dim, 0, keep)


def postprocess_logits(masks: torch.Tensor, img_size: int, input_size: tuple[int, ...],
                       original_size: tuple[int, ...]) -> torch.Tensor:
    """Low-res logits (B, C, s, s) with 4s = img_size -> (B, C, H0, W0), as `Sam.postprocess_masks`."""
    if 4 * masks.shape[-1] != img_size or 4 * masks.shape[-2] != img_size:
        raise ValueError(f"low-res masks {tuple(masks.shape[-2:])} are not a quarter of {img_size}")
    h, w = int(input_size[0]), int(input_size[1])
    # Columns first, while there are only s rows; rows then written contiguously.
    x = _upsample4_axis(masks, -1, w)
    x = _upsample4_axis(x, -2, h)
    if (h, w) == tuple(int(s) for s in original_size):
        return x
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
