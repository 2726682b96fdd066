"""The default fast path against the official code: same weights and inputs, outputs within 1e-4.

`build_sam(..., exact=False)` (the default) folds, reorders and caches arithmetic (see
modeling/fast_decoder.py and the encoder's fast path); these tests bound what that costs in
accuracy against the reference implementations, and check the fast path is really what runs.
Binary masks may differ only where a logit is within float rounding of the threshold.
"""

import numpy as np
import pytest
import torch
from test_parity import Pair, _image, _max_diff

import mobilesam
from mobilesam import EmbeddingState

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # vit_t only: vit_b/l/h share the decoder (and run it through the same fast path), and their
    # encoders have no fast path; a ViT-B pair would add a minute of encoding to CI for nothing.
    return Pair("vit_t", tmp_path_factory.mktemp("vit_t"), _image(300, 451), exact=False)


def _assert_close(ours, ref, what):
    masks, iou, low = ours
    ref_masks, ref_iou, ref_low = ref
    diff = max(_max_diff(low, ref_low), _max_diff(iou, ref_iou))
    print(f"{what}: max |diff| logits/iou {diff:.2e}")
    assert diff <= TOL, f"{what}: max |diff| {diff:.2e} > {TOL}"
    disagree = masks != ref_masks
    # A flipped pixel is only allowed where the upsampled logit sits at the threshold.
    assert disagree.sum() <= max(1, 1e-4 * masks.size), f"{what}: {disagree.sum()} mask pixels differ"


def test_fast_path_is_the_default():
    model = mobilesam.build_sam("vit_t", image_size=256)
    assert not model.exact and model.mask_decoder.use_fast_path()
    assert model.set_exact(True).exact and not model.mask_decoder.use_fast_path()
    model.set_exact(False).train()
    assert not model.mask_decoder.use_fast_path(), "training must run the official arithmetic"


def test_image_embeddings_close(pair):
    diff = _max_diff(pair.ours.features, pair.ref.features)
    print(f"embedding max |diff| {diff:.2e}")
    assert diff <= TOL


PROMPTS = {
    "point": dict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1])),
    "points": dict(
        point_coords=np.array([[120.0, 90.0], [40.0, 200.0], [10.0, 10.0]]), point_labels=np.array([1, 0, 1])
    ),
    "box": dict(box=np.array([30.0, 40.0, 200.0, 220.0])),
    "box+points": dict(
        box=np.array([30.0, 40.0, 200.0, 220.0]),
        point_coords=np.array([[100.0, 100.0]]),
        point_labels=np.array([0]),
    ),
    # 20 points: 8 heads x 26 tokens > 128, the decoder's other order of attention arithmetic.
    "many points": dict(
        point_coords=np.random.default_rng(0).uniform(0, 240, (20, 2)), point_labels=np.arange(20) % 2
    ),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_predict_close(pair, prompt, multimask):
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask)
    _assert_close(pair.ours.predict(**kwargs), pair.ref.predict(**kwargs), prompt)


def test_clicks_reuse_the_image_cache(pair):
    """The first click on an image runs uncached (cheaper once); later clicks share one cache, which
    survives restoring the same embedding state, as front-ends do before each click."""
    ours = pair.ours
    state = ours.get_embedding_state()
    ours.set_embedding(state)
    assert ours.runtime.decoder_cache is None
    _assert_close(ours.predict(**PROMPTS["point"]), pair.ref.predict(**PROMPTS["point"]), "first click")
    assert ours.runtime.decoder_cache is None
    _assert_close(ours.predict(**PROMPTS["box"]), pair.ref.predict(**PROMPTS["box"]), "second click")
    cache = ours.runtime.decoder_cache
    assert cache is not None
    ours.set_embedding(state)
    _assert_close(ours.predict(**PROMPTS["points"]), pair.ref.predict(**PROMPTS["points"]), "third click")
    assert ours.runtime.decoder_cache is cache
    ours.set_embedding(EmbeddingState(state.features.clone(), state.original_size, state.input_size))
    assert ours.runtime.decoder_cache is None  # another state object: no assumption that it is the same image


def test_mask_input_close(pair):
    first = pair.ref.predict(**PROMPTS["point"])
    mask_input = first[2][np.argmax(first[1])][None]
    kwargs = dict(PROMPTS["point"], mask_input=mask_input)
    _assert_close(pair.ours.predict(**kwargs), pair.ref.predict(**kwargs), "mask input")


def test_batched_prompts_close(pair):
    """A segment-everything style batch: 16 single points, and 3 boxes, through predict_torch."""
    rng = np.random.default_rng(3)
    h, w = pair.ours.original_size
    points = rng.uniform(0, [w, h], (16, 2))
    coords = torch.as_tensor(pair.ours.transform.apply_coords(points, (h, w)), dtype=torch.float)[:, None]
    labels = torch.ones(16, 1, dtype=torch.int)
    boxes = torch.as_tensor(
        pair.ours.transform.apply_boxes(
            np.array([[10, 10, 100, 100], [50, 60, 200, 240], [0, 0, w, h]]), (h, w)
        ),
        dtype=torch.float,
    )
    for args in ((coords, labels, None), (None, None, boxes)):
        ours = [t.numpy() for t in pair.ours.predict_torch(*args, return_logits=False)]
        ref = [t.numpy() for t in pair.ref.predict_torch(*args, return_logits=False)]
        for o, r in zip(ours, ref):
            assert o.shape == r.shape
        assert _max_diff(ours[2], ref[2]) <= TOL and _max_diff(ours[1], ref[1]) <= TOL
        assert (ours[0] != ref[0]).mean() <= 1e-4


@pytest.mark.parametrize(
    "input_size,original_size",
    [
        ((768, 1024), (768, 1024)),  # second resampling is the identity
        ((681, 1024), (300, 451)),  # downsampled to the original
        ((1024, 17), (3000, 50)),  # upsampled, extreme aspect ratio
        ((1024, 1024), (1024, 1024)),
    ],
)
def test_postprocess_masks_close(input_size, original_size):
    model = mobilesam.build_sam("vit_t", image_size=1024)
    low = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 4
    fast = model.postprocess_masks(low, input_size, original_size)
    exact = model.set_exact(True).postprocess_masks(low, input_size, original_size)
    assert fast.shape == exact.shape == (2, 3, *original_size)
    assert _max_diff(fast, exact) <= 1e-5


@pytest.mark.parametrize("input_size", [(768, 1024), (1024, 1024), (1021, 1024), (1024, 5), (3, 1024)])
@pytest.mark.parametrize("block_bytes", [1 << 12, 1 << 20, 1 << 40])
def test_binary_masks_equal_thresholded_logits(monkeypatch, input_size, block_bytes):
    # Bool masks are upsampled a block of rows at a time and compared in the cache; whatever the
    # block, they must be exactly the thresholded logits, for torch tensors and numpy arrays.
    from mobilesam import postprocess

    monkeypatch.setattr(postprocess, "ABOVE_BLOCK_BYTES", block_bytes)
    coarse = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 5
    low = torch.nn.functional.interpolate(coarse, (256, 256), mode="bilinear")  # smooth: real edges
    for threshold in (0.0, 1.5):
        expected = postprocess.postprocess_logits(low, 1024, input_size, input_size) > threshold
        assert 0 < expected.float().mean() < 1
        got = postprocess.postprocess_above(low, 1024, input_size, input_size, threshold)
        assert got.dtype == torch.bool and torch.equal(got, expected)
        expected_np = postprocess.postprocess_logits(low.numpy(), 1024, input_size, input_size) > threshold
        got_np = postprocess.postprocess_above(low.numpy(), 1024, input_size, input_size, threshold)
        assert isinstance(got_np, np.ndarray) and np.array_equal(got_np, expected_np)
    model = mobilesam.build_sam("vit_t", image_size=1024)  # a second resampling: same as before
    resized = model.postprocess_binary(low, input_size, (300, 451))
    assert torch.equal(resized, model.postprocess_masks(low, input_size, (300, 451)) > 0)
    exact = model.set_exact(True).postprocess_binary(low, input_size, input_size)  # official order
    assert exact.shape == expected.shape and exact.any()
    assert (
        exact != postprocess.postprocess_above(low, 1024, input_size, input_size, 0.0)
    ).float().mean() < 1e-4


def _fast_and_exact(image_size=256, seed=5):
    torch.manual_seed(seed)
    fast = mobilesam.build_sam("vit_t", image_size=image_size)
    exact = mobilesam.build_sam("vit_t", image_size=image_size, exact=True)
    exact.load_state_dict(fast.state_dict())
    return fast, exact


def test_sam_forward_fast_matches_exact():
    """`Sam.forward` (no per-image cache, several images, points and boxes) on the fast path."""
    fast, exact = _fast_and_exact()
    rng = np.random.default_rng(0)
    batch = [
        {
            "image": torch.as_tensor(rng.integers(0, 255, (3, 256, 192)), dtype=torch.float),
            "original_size": (300, 225),
            "point_coords": torch.tensor([[[50.0, 60.0], [100.0, 30.0]]]),
            "point_labels": torch.tensor([[1, 0]]),
        },
        {
            "image": torch.as_tensor(rng.integers(0, 255, (3, 170, 256)), dtype=torch.float),
            "original_size": (170, 256),
            "boxes": torch.tensor([[10.0, 10.0, 120.0, 90.0], [0.0, 0.0, 255.0, 169.0]]),
        },
    ]
    for ours, ref in zip(fast(batch, multimask_output=True), exact(batch, multimask_output=True)):
        assert _max_diff(ours["low_res_logits"], ref["low_res_logits"]) <= TOL
        assert _max_diff(ours["iou_predictions"], ref["iou_predictions"]) <= TOL
        assert (ours["masks"] != ref["masks"]).float().mean() <= 1e-4


def test_batched_mask_inputs_fast_matches_exact():
    """A batch of prompts each with its own mask input: the per-prompt (uncached) image side."""
    fast, exact = _fast_and_exact()
    predictors = [mobilesam.SamPredictor(m) for m in (fast, exact)]
    image = _image(200, 160)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 150.0], [40.0, 10.0, 90.0, 60.0], [0.0, 0.0, 159.0, 199.0]])
    masks_in = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for predictor in predictors:
        predictor.set_image(image)
        model_boxes = predictor.transform.apply_boxes_torch(boxes, predictor.original_size)
        outputs.append(
            predictor.predict_torch(
                None, None, model_boxes, masks_in, multimask_output=False, return_logits=True
            )
        )
    (logits, iou, low), (ref_logits, ref_iou, ref_low) = outputs
    assert logits.shape == ref_logits.shape == (3, 1, 200, 160)
    assert max(_max_diff(low, ref_low), _max_diff(iou, ref_iou), _max_diff(logits, ref_logits)) <= TOL


def test_fast_decoder_trains_after_inference_in_the_same_process():
    """The decoder's cached pixel order, first made under inference_mode, must still serve a
    forward pass that autograd records (distillation's coupled mode after a predict)."""
    from mobilesam.modeling import fast_decoder

    fast_decoder._pixel_order.cache_clear()
    with torch.inference_mode():
        order = fast_decoder._pixel_order(4, 4, torch.device("cpu"))
    masks = torch.randn(3, 16 * 16, requires_grad=True)
    torch.index_select(masks, 1, order).sum().backward()
    assert torch.equal(masks.grad, torch.ones_like(masks))
