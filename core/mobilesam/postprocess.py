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
    padded = _edge_padded(x, dim)
    out = _empty(x, (*x.shape[:dim], n, 4, *x.shape[dim + 1 :]))
    _upsample4_groups(padded, dim, 0, n, out)
    out = out.reshape(*x.shape[:dim], 4 * n, *x.shape[dim + 1 :])
    return _take(out, dim, 0, keep)


def _take(a, dim: int, start: int, length: int):
    """A slice of `length` along dim."""
    return a[(slice(None),) * dim + (slice(start, start + length),)]


def _empty(like, shape):
    return np.empty(shape, like.dtype) if isinstance(like, np.ndarray) else like.new_empty(shape)


def _edge_padded(x, dim: int):
    """x with its first and last entries along dim repeated once at each end (input j sits at j + 1)."""
    edges = [_take(x, dim, 0, 1), x, _take(x, dim, x.shape[dim] - 1, 1)]
    return np.concatenate(edges, axis=dim) if isinstance(x, np.ndarray) else _torch().cat(edges, dim=dim)


def _upsample4_groups(padded, dim: int, start: int, n: int, out) -> None:
    """Outputs 4k + r for k in [start, start + n) of the 4x upsampling of an `_edge_padded` input,
    written to `out` (..., n, 4, ...) (the group k and phase r axes in place of dim)."""
    numpy = isinstance(padded, np.ndarray)
    for r, (offset, weight) in enumerate(_PHASES):
        a = _take(padded, dim, start + 1 + offset, n)
        b = _take(padded, dim, start + 2 + offset, n)
        phase = out[(slice(None),) * (dim + 1) + (r,)]
        if numpy:
            np.add(a, np.float32(weight) * (b - a), out=phase)
        else:
            _torch().lerp(a, b, weight, out=phase)


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


def _check_low_res(masks, img_size: int) -> None:
    if 4 * masks.shape[-1] != img_size or 4 * masks.shape[-2] != img_size:
        raise ValueError(f"low-res masks {tuple(masks.shape[-2:])} are not a quarter of {img_size}")


def postprocess_logits(masks, img_size: int, input_size: tuple[int, ...], original_size: tuple[int, ...]):
    """Low-res logits (B, C, s, s) with 4s = img_size -> (B, C, H0, W0), as `Sam.postprocess_masks`.

    `masks` is a torch tensor or a float32 numpy array; the result is of the same kind."""
    _check_low_res(masks, img_size)
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


# Rows of full-size logits upsampled at a time by `postprocess_above`: small enough to stay in a
# core's cache between the upsampling and the comparison.
ABOVE_BLOCK_BYTES = 1 << 20


def postprocess_above(
    masks, img_size: int, input_size: tuple[int, ...], original_size: tuple[int, ...], threshold: float
):
    """`postprocess_logits(...) > threshold`: bool masks (B, C, H0, W0), of masks' kind (torch
    tensor on CPU, or numpy).

    When no second resampling is needed (the image's longest side is img_size) the rows are
    upsampled a block at a time and compared while the block is in the cache, so the full-size
    float logits are never written out; the result is the same as thresholding them.
    """
    h, w = int(input_size[0]), int(input_size[1])
    numpy = isinstance(masks, np.ndarray)
    if (h, w) != tuple(int(s) for s in original_size) or not (numpy or masks.device.type == "cpu"):
        return _above(postprocess_logits(masks, img_size, input_size, original_size), threshold)
    _check_low_res(masks, img_size)
    columns = _upsample4_axis(masks, -1, w)  # (..., s, w)
    dim = columns.ndim - 2
    padded = _edge_padded(columns, dim)
    lead = columns.shape[:dim]
    out = np.empty((*lead, h, w), dtype=bool)
    groups = math.ceil(h / 4)
    block = max(1, ABOVE_BLOCK_BYTES // (4 * w * 4 * max(1, math.prod(lead))))
    buffer = _empty(columns, (*lead, min(block, groups), 4, w))
    for k in range(0, groups, block):
        n = min(block, groups - k)
        rows = min(4 * (k + n), h) - 4 * k
        _upsample4_groups(padded, dim, k, n, buffer[..., :n, :, :])
        logits = buffer[..., :n, :, :].reshape(*lead, 4 * n, w)[..., :rows, :]
        np.greater(logits if numpy else logits.numpy(), threshold, out=out[..., 4 * k : 4 * k + rows, :])
    return out if numpy else _torch().from_numpy(out)


def _above(logits, threshold: float):
    """`logits > threshold` as bool. On CPU numpy's comparison is 3-6x faster than torch's."""
    if isinstance(logits, np.ndarray):
        return logits > threshold
    if logits.device.type != "cpu":
        return logits > threshold
    return _torch().from_numpy(np.greater(logits.numpy(), threshold))
