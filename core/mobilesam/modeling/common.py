"""Small building blocks shared by the encoders and the mask decoder."""

import weakref

import torch
from torch import nn


class FastPath:
    """Mixin for modules with two implementations of the same function.

    `exact = True` runs the official order of operations (outputs equal the reference bit for
    bit); `exact = False` (the default) runs a faster rearrangement whose outputs differ from it by
    float rounding only (parity <= 1e-4, see tests/test_parity.py). The fast path is used only in
    eval mode: training (distillation) always runs the exact code, which batch-norm folding and
    the decoder's cached projections would not be valid for.
    """

    exact: bool = False
    # Low-precision dtype of the fast path's matrix products and convolutions (torch.bfloat16 on
    # CPUs with AVX512-BF16/AMX), or None for fp32; see `Sam.set_precision`.
    compute_dtype: torch.dtype | None = None

    def use_fast_path(self) -> bool:
        return not (self.exact or self.training)


def derived(owner: nn.Module, name: str, sources: tuple[torch.Tensor, ...], make):
    """`make()`, a value computed from the tensors `sources` (owner's parameters), cached on
    `owner` until any source is replaced or modified in place (its storage or version counter
    changes), so that loading new weights never leaves it stale.

    Computed afresh, uncached, while autograd records (the graph must reach the parameters) or
    where a source keeps no version counter (a model built under `torch.inference_mode`).
    """
    if torch.is_grad_enabled():
        return make()
    try:
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
    except RuntimeError:  # inference tensors have no version counter
        return make()
    cache = owner.__dict__.setdefault("_derived", {})
    hit = cache.get(name)
    # The same tensor objects (weak references: a replaced parameter whose memory went to its
    # successor must not pass for it), at the same version.
    if hit is not None and hit[0] == stamp and all(ref() is t for ref, t in zip(hit[1], sources)):
        return hit[2]
    value = make()
    cache[name] = (stamp, tuple(weakref.ref(t) for t in sources), value)
    return value


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (transformer feed-forward)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def conv_neck(in_dim: int, out_dim: int = 256) -> nn.Sequential:
    """The encoder neck SAM and MobileSAM share: 1x1 conv, LN, 3x3 conv, LN (no biases)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


# oneDNN's linear with a fused epilogue, as torch's inductor uses it for CPU inference.
_FUSED_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`GELU(F.linear(x, weight, bias))` (exact erf GELU); x (..., K), weight (M, K) -> (..., M).

    On CPU, for inference, the GELU runs in oneDNN's matrix-product epilogue instead of a second
    pass over the output: the same values (torch.equal in tests/test_fast_path.py), 10-20% faster
    for the encoder's MLPs, whose hidden layer is the largest tensor they write.
    """
    fused = (
        _FUSED_LINEAR
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        # an ONNX export traces this: the oneDNN op has no ONNX form
        and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())
    )
    if not fused:
        return nn.functional.gelu(nn.functional.linear(x, weight, bias))
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, weight.contiguous(), bias, "gelu", [], "none")
    return out.view(*x.shape[:-1], weight.shape[0])
