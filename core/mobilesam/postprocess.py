"""Mask postprocessing on the fast path: `Sam.postprocess_masks` without the full-size detour.

Works on torch tensors (the torch predictor) and on numpy arrays (the torch-free ONNX predictor,
`mobilesam.onnx.standalone`), so this module imports torch only when given a tensor.

The official postprocessing upsamples the low-res logits (S/4 x S/4) bilinearly to S x S, crops
the unpadded input region and resamples that to the original image size. An exact 4x bilinear
upsampling (half-pixel rule, clamped borders) is four fixed two-tap filters: output 4k + r blends
input rows k-1|k (r = 0, 1) or k|k+1 (r = 2, 3) with weights 5/8, 7/8, 1/8, 3/8 on the second row,
borders being the edge row repeated. So each axis is four scalar `lerp`s over shifted slices of the
edge-padded input, computed only for the cropped region; the second resampling is skipped when it
is the identity (input and original sizes equal) and otherwise is `F.interpolate` (torch) or the
same half-pixel rule with gathered taps (numpy).
Results equal the official ones up to float rounding.
"""

import math

import numpy as np

# (first input row offset relative to k, weight of the following row) for outputs 4k + r.
_PHASES = ((-1, 0.625), (-1, 0.875), (0, 0.125), (0, 0.375))


def _upsample4_axis(x, dim: int, keep: int):
    """4x bilinear upsampling of axis `dim`, keeping the first `keep` outputs."""
    dim = dim % x.ndim
    n = math.ceil(keep / 4)
    numpy = isinstance(x, np.ndarray)

    def take(a, start, length):  # a slice of `length` along dim
        return a[(slice(None),) * dim + (slice(start, start + length),)]

    edges = [take(x, 0, 1), x, take(x, x.shape[dim] - 1, 1)]  # input row j sits at j + 1
    padded = np.concatenate(edges, axis=dim) if numpy else _torch().cat(edges, dim=dim)
    shape = (*x.shape[:dim], n, 4, *x.shape[dim + 1 :])
    out = np.empty(shape, x.dtype) if numpy else x.new_empty(shape)
    for r, (offset, weight) in enumerate(_PHASES):
        a, b = take(padded, 1 + offset, n), take(padded, 2 + offset, n)
        phase = out[(slice(None),) * (dim + 1) + (r,)]
        if numpy:
            np.add(a, np.float32(weight) * (b - a), out=phase)
        else:
            _torch().lerp(a, b, weight, out=phase)
    out = out.reshape(*x.shape[:dim], 4 * n, *x.shape[dim + 1 :])
    return take(out, 0, keep)


def _resample_axis(x: np.ndarray, dim: int, out_len: int) -> np.ndarray:
    """Bilinear resampling (half-pixel rule, as F.interpolate with align_corners=False) of one axis."""
    in_len = x.shape[dim]
    # In float32 like torch's kernel, so the taps (and the logits) agree with F.interpolate's.
    scale = np.float32(in_len / out_len)
    src = np.maximum((np.arange(out_len, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    shape = [1] * x.ndim
    shape[dim] = out_len
    weight = (src - i0).astype(x.dtype).reshape(shape)
    a, b = np.take(x, i0, axis=dim), np.take(x, i1, axis=dim)
    return a + weight * (b - a)


def _torch():
    import torch

    return torch


def postprocess_logits(masks, img_size: int, input_size: tuple[int, ...], original_size: tuple[int, ...]):
    """Low-res logits (B, C, s, s) with 4s = img_size -> (B, C, H0, W0), as `Sam.postprocess_masks`.

    `masks` is a torch tensor or a float32 numpy array; the result is of the same kind."""
    if 4 * masks.shape[-1] != img_size or 4 * masks.shape[-2] != img_size:
        raise ValueError(f"low-res masks {tuple(masks.shape[-2:])} are not a quarter of {img_size}")
    h, w = int(input_size[0]), int(input_size[1])
    original_size = tuple(int(s) for s in original_size)
    # Columns first, while there are only s rows; rows then written contiguously.
    x = _upsample4_axis(_upsample4_axis(masks, -1, w), -2, h)
    if (h, w) == original_size:
        return x
    if isinstance(x, np.ndarray):
        return _resample_axis(_resample_axis(x, 3, original_size[1]), 2, original_size[0])
    import torch.nn.functional as F

    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)
