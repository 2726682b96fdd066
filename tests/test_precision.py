"""Low precision (bf16 encoder), CPU feature detection, warm-up and `mobilesam info`.

The bf16 encoder is checked against our fp32 fast path (itself within 1e-4 of the official
encoder, tests/test_fast_encoder.py) with the stated bounds; `exact=True` must stay bit-exact
whatever the precision setting. 256-px models keep this quick.
"""

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam import runtime
from mobilesam.cli import main

BF16 = runtime.bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has neither AVX512-BF16 nor AMX")


def _pair(seed: int = 11):
    """Two 256-px vit_t models with the same random weights."""
    torch.manual_seed(seed)
    fp32 = mobilesam.build_sam("vit_t", image_size=256).eval()
    other = mobilesam.build_sam("vit_t", image_size=256).eval()
    other.load_state_dict(fp32.state_dict())
    return fp32, other


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@needs_bf16
def test_bf16_encoder_is_close_to_fp32_and_masks_agree(sample_image):
    fp32, bf16 = _pair()
    bf16.set_precision("bf16")
    assert bf16.precision == "bf16" and bf16.image_encoder.layers[1].blocks[0].compute_dtype == torch.bfloat16
    image = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = fp32.image_encoder(image), bf16.image_encoder(image)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    error = _relative_error(got, expected)
    print(f"bf16 vs fp32 embedding: relative error {error:.2e}")
    assert 1e-4 < error <= 1e-2  # really bf16 (fp32 differs by ~1e-6), and within the bound

    # Same prompts on both: the decoder sees the two embeddings; masks must agree.
    predictors = [mobilesam.SamPredictor(m) for m in (fp32, bf16)]
    for p in predictors:
        p.set_image(sample_image)
    ious = []
    for x, y in [(160, 120), (60, 50), (260, 180), (100, 200)]:
        a, b = (
            p.predict(np.array([[x, y]]), np.array([1]), multimask_output=False)[0][0] for p in predictors
        )
        ious.append((a & b).sum() / max((a | b).sum(), 1))
    print(f"mask IoU bf16 vs fp32: min {min(ious):.4f}")
    assert min(ious) >= 0.98


@needs_bf16
def test_split_weights_remove_the_weight_rounding():
    """`split_linear` equals the fp32 product of the bf16-rounded input up to the output's
    rounding, several times closer than plain bf16 weights (whose rounding dominated the error)."""
    from mobilesam.modeling.fast_encoder import doubled, split_linear

    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(512, 160, generator=g), torch.randn(480, 160, generator=g) * 0.02, None
    expected = torch.nn.functional.linear(x.bfloat16().float(), weight)  # only the input rounded
    split = split_linear(doubled(x, torch.bfloat16), weight, bias)
    plain = torch.nn.functional.linear(x.bfloat16(), weight.bfloat16())
    assert split.dtype == torch.bfloat16 and split.shape == expected.shape
    split_error, plain_error = (_relative_error(y.float(), expected) for y in (split, plain))
    print(f"relative error: split weights {split_error:.1e}, plain bf16 weights {plain_error:.1e}")
    assert split_error <= 2e-3 and split_error * 1.3 < plain_error


@needs_bf16
def test_bf16_split_weights_are_kept_until_the_weights_change(monkeypatch):
    """The split weights are made once, not per call (`modeling.common.derived`), and are made
    again when new weights are loaded or changed in place: the output is then that of a model
    built with the new weights."""
    from mobilesam.modeling import fast_encoder

    made = []
    split_weight = fast_encoder.split_weight
    monkeypatch.setattr(fast_encoder, "split_weight", lambda *a: made.append(1) or split_weight(*a))
    old, new = _pair(seed=3)[0], _pair(seed=4)[0]
    model = mobilesam.build_sam("vit_t", image_size=256).eval()
    model.load_state_dict(old.state_dict())
    model.set_precision("bf16")
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = model.image_encoder(image)
        per_encode = len(made)
        assert per_encode > 0 and torch.equal(model.image_encoder(image), first)
        assert len(made) == per_encode  # the second encode made none
    model.load_state_dict(new.state_dict())
    with torch.inference_mode():
        reloaded = model.image_encoder(image)
        assert len(made) == 2 * per_encode
        expected = new.set_precision("bf16").image_encoder(image)
    assert torch.equal(reloaded, expected) and not torch.equal(reloaded, first)
    fc2 = model.image_encoder.layers[1].blocks[0].mlp.fc2
    with torch.no_grad():  # changed in place (as an optimizer step does)
        fc2.weight.mul_(2)
    with torch.inference_mode():
        doubled = model.image_encoder(image)
        assert not torch.equal(doubled, reloaded)
    fc2.weight = torch.nn.Parameter(fc2.weight.detach() / 2)  # replaced by another tensor
    with torch.inference_mode():
        assert torch.equal(model.image_encoder(image), reloaded)
    grads = model.image_encoder(image)  # autograd records: nothing cached is used
    assert grads.requires_grad


def test_bf16_keeps_the_sensitive_parts_in_fp32(monkeypatch):
    """The measured mix (benchmarks/bf16_error.py): patch embedding, patch mergings, the local
    convs that carry the stream and the neck stay fp32; the blocks and MBConvs run bf16."""
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)  # the setting only, nothing runs
    model = mobilesam.build_sam("vit_t", image_size=256)
    encoder = model.set_precision("bf16").image_encoder
    fp32 = [encoder.patch_embed, *encoder.patch_embed.seq[::2]]
    fp32 += [m for layer in encoder.layers if layer.downsample for m in layer.downsample.modules()]
    fp32 += [block.local_conv for layer in encoder.layers[1:] for block in layer.blocks]
    assert all(getattr(m, "compute_dtype", None) is None for m in fp32)
    bf16 = [*encoder.layers[0].blocks, *(b for layer in encoder.layers[1:] for b in layer.blocks)]
    assert all(m.compute_dtype == torch.bfloat16 for m in bf16)
    assert model.set_precision("fp32").image_encoder.layers[1].blocks[0].compute_dtype is None


def test_exact_stays_bit_exact_with_bf16_set(monkeypatch):
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)  # settable on any CPU: exact ignores it
    exact, exact_bf16 = _pair(seed=3)
    exact.set_exact(True)
    exact_bf16.set_exact(True).set_precision("bf16")
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert (exact.image_encoder(image) - exact_bf16.image_encoder(image)).abs().max().item() == 0


def test_precision_is_detected_at_run_time(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # a CPU without bf16
    assert not runtime.bf16_supported()
    assert runtime.resolve_precision("auto") == "fp32"
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
        runtime.resolve_precision("bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.resolve_precision("fp16")
    model, _ = _pair()
    assert model.set_precision("auto").precision == "fp32"
    assert model.image_encoder.patch_embed.compute_dtype is None


def test_auto_precision_is_fp32_for_encoders_without_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    model = mobilesam.build_sam("vit_t", image_size=256)
    model.image_encoder = torch.nn.Conv2d(3, 256, 16, 16)  # an encoder with no bf16 path
    assert model.set_precision("auto").precision == "fp32"  # auto: fp32 where bf16 has no path
    with pytest.raises(ValueError, match="no low-precision path"):
        model.set_precision("bf16")


def test_cpu_flags_read_this_machine():
    flags = runtime.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    assert runtime.bf16_supported() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_warm_up_encodes_once_and_leaves_no_image(small_model):
    predictor = mobilesam.SamPredictor(small_model)
    seconds = runtime.warm_up(predictor)
    assert seconds > 0 and not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[10, 10]]), np.array([1]))


def test_info_prints_cpu_features_and_paths(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("CPU features:", "bf16 encoder:", "fast path:", "backends:", "torch"):
        assert label in out
    flags_line = next(line for line in out.splitlines() if line.startswith("CPU features:"))
    for flag in runtime.CPU_FLAGS:
        assert (flag in flags_line.split()) == (flag in runtime.cpu_flags())
    assert ("bf16 encoder:          available" in out) == BF16
