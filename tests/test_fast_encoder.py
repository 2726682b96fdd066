"""The TinyViT encoder's fast path (the default) against the reference `mobile_sam` encoder
(at 1024) and our exact path (its bit-identical copy, at any size).

The fast path folds BatchNorm into the convolutions, drops window padding from LayerNorm/qkv,
fuses GELU and residual adds, so its embeddings differ from the reference by float rounding only:
at most 1e-4 here. Norm layers and attention biases are randomised first, since fresh ones
(identity BatchNorm, zero-weight last BatchNorm of each MBConv, zero attention biases, unit
LayerNorms) would hide bugs in the folding, the padding tokens or the bias.
"""

import pytest
import torch
from torch import nn

import mobilesam
from mobilesam.modeling.common import FastPath
from mobilesam.modeling.tiny_vit import TinyViT

TOL = 1e-4


def _randomise_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm running statistics and affine, LayerNorm affine, attention biases."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, scale=1.0, offset=0.0):
        return torch.randn(t.shape, generator=g) * scale + offset

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(rand(m.running_mean, 0.2))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(rand(m.weight, 0.2, 1.0))
                m.bias.copy_(rand(m.bias, 0.2))
            elif type(m).__name__ in ("LayerNorm", "LayerNorm2d"):
                m.weight.copy_(rand(m.weight, 0.2, 1.0))
                m.bias.copy_(rand(m.bias, 0.2))
            if hasattr(m, "attention_biases"):
                m.attention_biases.copy_(rand(m.attention_biases))


def _reference_encoder(seed: int) -> nn.Module:
    """mobile_sam's vit_t encoder with seeded random weights and norms, in eval mode."""
    import mobile_sam

    torch.manual_seed(seed)
    encoder = mobile_sam.sam_model_registry["vit_t"]().image_encoder
    _randomise_norms(encoder, seed)
    return encoder.eval()  # after randomising: the reference caches its attention biases in eval()


def _set_exact(encoder: nn.Module, exact: bool) -> None:
    for m in encoder.modules():
        if isinstance(m, FastPath):
            m.exact = exact


def _ours(image_size: int, seed: int, exact: bool = False) -> TinyViT:
    """Our encoder with seeded random weights and norms, in eval mode.

    The reference runs at 1024 only (its forward hard-codes the 64x64 grid); at smaller sizes our
    exact path, the official order of operations (bit-identical at 1024, tests/test_parity.py),
    is the oracle.
    """
    torch.manual_seed(seed)
    ours = TinyViT(img_size=image_size)
    _randomise_norms(ours, seed)
    _set_exact(ours, exact)
    return ours.eval()


def _copy(encoder: TinyViT, exact: bool) -> TinyViT:
    other = TinyViT(img_size=encoder.img_size).eval()
    other.load_state_dict(encoder.state_dict())
    _set_exact(other, exact)
    return other


def _image(image_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def small_exact():
    return _ours(256, seed=3, exact=True)


def test_fast_is_the_default_and_matches_reference_at_1024(tmp_path):
    import mobile_sam

    reference = mobile_sam.sam_model_registry["vit_t"]()
    reference.image_encoder = _reference_encoder(seed=0)
    path = tmp_path / "vit_t.pt"
    torch.save(reference.state_dict(), path)
    encoder = mobilesam.build_sam("vit_t", path).image_encoder  # the default: the fast path
    assert not encoder.exact and encoder.use_fast_path()
    image = _image(1024)
    with torch.inference_mode():
        expected, got = reference.image_encoder(image), encoder(image)
    assert got.shape == (1, 256, 64, 64) and got.is_contiguous()
    assert _max_diff(got, expected) <= TOL
    assert _max_diff(got, expected) > 0  # really the rearranged code, not the official one


@pytest.mark.parametrize("image_size, batch", [(224, 1), (256, 2)])
def test_fast_matches_exact_at_small_sizes(image_size, batch):
    # 256: every attention stage pads its windows; 224: no padding, and stage 2 is one window.
    exact = _ours(image_size, seed=image_size, exact=True)
    fast = _copy(exact, exact=False)
    image = torch.cat([_image(image_size, seed) for seed in range(batch)])
    with torch.inference_mode():
        expected, got = exact(image), fast(image)
    assert got.shape == (batch, 256, image_size // 16, image_size // 16)
    assert 0 < _max_diff(got, expected) <= TOL


def test_fast_path_without_inference_mode_keeps_gradients(small_exact):
    # Eval mode with autograd on: no in-place or fused inference-only kernels may break backward.
    ours = _copy(small_exact, exact=False)
    image = _image(256).requires_grad_()
    out = ours(image)
    with torch.no_grad():
        assert _max_diff(out, small_exact(image)) <= TOL
    out.square().sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert ours.layers[1].blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_switching_exact_on_and_off(small_exact):
    ours = _copy(small_exact, exact=True)
    image = _image(256)
    with torch.inference_mode():
        expected = small_exact(image)
        assert torch.equal(ours(image), expected)
        _set_exact(ours, False)
        fast = ours(image)
        assert 0 < _max_diff(fast, expected) <= TOL
        _set_exact(ours, True)
        assert torch.equal(ours(image), expected)


def test_sam_set_exact_reaches_the_encoder(vit_t_model):
    try:
        vit_t_model.set_exact(True)
        assert all(m.exact for m in vit_t_model.image_encoder.modules() if isinstance(m, FastPath))
        assert not vit_t_model.image_encoder.use_fast_path()
    finally:
        vit_t_model.set_exact(False)
    assert vit_t_model.image_encoder.layers[0].blocks[0].use_fast_path()


def test_training_mode_runs_the_exact_code(small_exact):
    fast, exact = _copy(small_exact, exact=False), _copy(small_exact, exact=True)
    fast.train()
    exact.train()
    image = _image(256)
    out_fast, out_exact = fast(image), exact(image)  # BatchNorm on batch statistics, autograd on
    assert torch.equal(out_fast, out_exact)
    out_fast.sum().backward()
    # Batch statistics were tracked, as training needs (folding would have skipped them).
    assert fast.patch_embed.seq[0].bn.num_batches_tracked.item() == 1


def test_new_weights_after_a_fast_forward_are_used(small_exact):
    ours = _copy(small_exact, exact=False)
    image = _image(256)
    with torch.inference_mode():
        before = ours(image)
    other = _ours(256, seed=7, exact=True)
    ours.load_state_dict(other.state_dict())
    with torch.inference_mode():
        after, expected = ours(image), other(image)
    assert _max_diff(after, expected) <= TOL
    assert _max_diff(after, before) > 1e-2

    # Changing only BatchNorm running statistics in place is honoured too (no cached folding).
    for m in (ours, other):
        with torch.no_grad():
            m.layers[3].blocks[-1].local_conv.bn.running_var.mul_(4.0)
    with torch.inference_mode():
        changed, expected = ours(image), other(image)
    assert _max_diff(changed, expected) <= TOL
    assert _max_diff(changed, after) > 1e-2


def test_every_stage_matches_exact(small_exact):
    # With random weights the early stages barely move the final embedding, so compare each
    # stage's output on the same input (a folding bug in stage 0 must not hide behind stage 3).
    fast = _copy(small_exact, exact=False)
    x = _image(256)
    with torch.inference_mode():
        stages = [("patch_embed", small_exact.patch_embed, fast.patch_embed)]
        stages += [(f"layers.{i}", e, f) for i, (e, f) in enumerate(zip(small_exact.layers, fast.layers))]
        for name, exact_stage, fast_stage in stages:
            expected, got = exact_stage(x), fast_stage(x)
            scale = max(1.0, expected.abs().max().item())
            assert _max_diff(got, expected) <= 1e-5 * scale, name
            x = expected


@pytest.mark.parametrize("shape", [(2, 49, 64), (300, 160)])
def test_linear_gelu_equals_linear_then_gelu(shape):
    """The fused GELU epilogue (oneDNN on CPU) gives exactly what a separate GELU pass gives,
    and falls back to that pass when a graph is being recorded."""
    from mobilesam.modeling.common import linear_gelu

    torch.manual_seed(0)
    x = torch.randn(*shape)
    linear = nn.Linear(shape[-1], 4 * shape[-1])
    expected = nn.functional.gelu(linear(x))
    with torch.inference_mode():
        fused = linear_gelu(x, linear.weight, linear.bias)
    assert fused.shape == expected.shape
    assert torch.equal(fused, expected.detach())
    graph = linear_gelu(x, linear.weight, linear.bias)
    assert graph.requires_grad  # the unfused path keeps autograd working
    assert torch.equal(graph.detach(), expected.detach())


@pytest.mark.parametrize("batch, dtype", [(1, None), (2, None), (1, torch.bfloat16)])
def test_row_bands_give_the_same_embedding_bit_for_bit(monkeypatch, batch, dtype):
    # At 1024 px the fast path runs its MBConvs, window attention and MLPs in bands of
    # <= (CONV_)BAND_BYTES of intermediates (to lower peak memory); a tiny budget makes them run
    # in many bands on a 512 px model (the matrix products in bands of MIN_BAND_TOKENS), which
    # must change nothing, not even the rounding.
    from mobilesam.modeling import fast_encoder
    from mobilesam.runtime import bf16_supported

    if dtype is not None and not bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16/AMX: no bf16 encoder path to band")
    fast = _ours(512, seed=5)
    fast.set_compute_dtype(dtype)
    image = torch.cat([_image(512, seed) for seed in range(batch)])
    calls = []
    window_attention = fast_encoder._window_attention
    monkeypatch.setattr(fast_encoder, "_window_attention", lambda *a: calls.append(1) or window_attention(*a))
    with torch.inference_mode():
        monkeypatch.setattr(fast_encoder, "BAND_BYTES", 1 << 40)
        monkeypatch.setattr(fast_encoder, "CONV_BAND_BYTES", 1 << 40)
        whole = fast(image)
        assert len(calls) == 10  # one call per attention block
        monkeypatch.setattr(fast_encoder, "BAND_BYTES", 1 << 20)
        monkeypatch.setattr(fast_encoder, "CONV_BAND_BYTES", 1 << 20)
        banded = fast(image)
    assert torch.equal(banded, whole)
    assert len(calls) > 20 if batch == 1 else len(calls) == 20  # attention bands one image only
