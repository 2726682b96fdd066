"""Parity with the official code: same random weights, same inputs, same outputs.

The reference implementations (`mobile_sam` from mobilesam-mirror for vit_t, Meta's
`segment_anything` for vit_b) are used only as oracles. Their random-initialised state dicts are
saved in the official checkpoint format and loaded through our `build_sam` with strict=True.
Each case prints its measured max |diff| (run with -s to see them).
(`build_sam(..., exact=True)`: the official order of operations; the default fast path is
compared with a tolerance in tests/test_fast_path.py.)
"""

import numpy as np
import pytest
import torch

import mobilesam

TOL = 1e-4


def _reference_registry(model_type):
    if model_type == "vit_t":
        import mobile_sam

        return mobile_sam.sam_model_registry, mobile_sam.SamPredictor
    import segment_anything

    return segment_anything.sam_model_registry, segment_anything.SamPredictor


class Pair:
    """A reference predictor and ours, on the same weights and image."""

    def __init__(self, model_type, tmp_path, image, seed=0, exact=True):
        registry, ref_predictor_cls = _reference_registry(model_type)
        torch.manual_seed(seed)
        reference = registry[model_type]().eval()
        path = tmp_path / f"{model_type}.pth"
        torch.save(reference.state_dict(), path)
        self.ref = ref_predictor_cls(reference)
        self.ours = mobilesam.SamPredictor(mobilesam.build_sam(model_type, path, exact=exact))
        self.ref.set_image(image)
        self.ours.set_image(image)


def _image(h, w, seed=1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 90.0)], axis=-1)
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2] = [240, 200, 30]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=["vit_t", "vit_b"])
def pair(request, tmp_path_factory):
    # Non-square, and not a multiple of 16, so resizing, padding and cropping are all exercised.
    shape = (300, 451) if request.param == "vit_t" else (380, 250)
    return request.param, Pair(request.param, tmp_path_factory.mktemp(request.param), _image(*shape))


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_image_embeddings_match(pair):
    model_type, p = pair
    diff = _max_diff(p.ref.features.numpy(), p.ours.features.numpy())
    print(f"\n[{model_type}] image embedding max|diff| = {diff:.3g}")
    assert p.ours.features.shape == (1, 256, 64, 64)
    assert p.ours.input_size == p.ref.input_size and p.ours.original_size == p.ref.original_size
    assert diff <= TOL


PROMPTS = {
    "one positive point": dict(point_coords=np.array([[150, 140]]), point_labels=np.array([1])),
    "positive and negative points": dict(
        point_coords=np.array([[150, 140], [60, 40], [200, 250]]), point_labels=np.array([1, 0, 1])
    ),
    "box": dict(box=np.array([40, 60, 220, 240])),
    "box and points": dict(
        box=np.array([40, 60, 220, 240]),
        point_coords=np.array([[100, 120], [210, 70]]),
        point_labels=np.array([1, 0]),
    ),
}


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda k: k.replace(" ", "-"))
def test_predict_matches(pair, prompt, multimask):
    model_type, p = pair
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask)
    ref_logits, ref_iou, ref_low = p.ref.predict(**kwargs, return_logits=True)
    logits, iou, low = p.ours.predict(**kwargs, return_logits=True)
    ref_masks, _, _ = p.ref.predict(**kwargs)
    masks, _, _ = p.ours.predict(**kwargs)

    assert masks.shape == ref_masks.shape == (3 if multimask else 1, *p.ref.original_size)
    assert masks.dtype == np.bool_
    diffs = dict(
        logits=_max_diff(ref_logits, logits), iou=_max_diff(ref_iou, iou), low_res=_max_diff(ref_low, low)
    )
    print(
        f"\n[{model_type}] {prompt}, multimask={multimask}: "
        + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
    )
    assert diffs["logits"] <= TOL and diffs["low_res"] <= TOL and diffs["iou"] <= TOL
    assert np.array_equal(masks, ref_masks)


def test_mask_input_refinement_matches(pair):
    """A second click that feeds the previous low-res logits back as mask_input."""
    model_type, p = pair
    first = dict(point_coords=np.array([[150, 140]]), point_labels=np.array([1]))
    _, ref_iou, ref_low = p.ref.predict(**first)
    best = int(np.argmax(ref_iou))
    second = dict(
        point_coords=np.array([[150, 140], [80, 200]]),
        point_labels=np.array([1, 0]),
        mask_input=ref_low[best][None],
        multimask_output=False,
    )
    ref_masks, ref_iou2, ref_low2 = p.ref.predict(**second)
    masks, iou2, low2 = p.ours.predict(**second)
    diffs = (_max_diff(ref_low2, low2), _max_diff(ref_iou2, iou2))
    print(f"\n[{model_type}] mask_input refinement: low_res {diffs[0]:.3g}, iou {diffs[1]:.3g}")
    assert max(diffs) <= TOL
    assert np.array_equal(masks, ref_masks)


def test_batched_boxes_predict_torch_match(pair):
    model_type, p = pair
    boxes = np.array([[10, 20, 120, 150], [40, 60, 220, 240], [0, 0, 240, 290]], dtype=np.float32)
    ref_boxes = p.ref.transform.apply_boxes_torch(torch.as_tensor(boxes), p.ref.original_size)
    our_boxes = p.ours.transform.apply_boxes_torch(torch.as_tensor(boxes), p.ours.original_size)
    assert torch.equal(ref_boxes, our_boxes)
    ref = p.ref.predict_torch(None, None, boxes=ref_boxes, multimask_output=True, return_logits=True)
    ours = p.ours.predict_torch(None, None, boxes=our_boxes, multimask_output=True, return_logits=True)
    assert ours[0].shape == (3, 3, *p.ref.original_size)
    diffs = [_max_diff(a.numpy(), b.numpy()) for a, b in zip(ref, ours)]
    print(
        f"\n[{model_type}] 3 batched boxes: logits {diffs[0]:.3g}, iou {diffs[1]:.3g}, low_res {diffs[2]:.3g}"
    )
    assert max(diffs) <= TOL
    assert torch.equal(ref[0] > 0, ours[0] > 0)


def test_embedding_state_roundtrip_gives_same_masks(pair):
    """set_embedding restores an exported state without re-encoding."""
    model_type, p = pair
    state = p.ours.get_embedding_state()
    fresh = mobilesam.SamPredictor(p.ours.model)
    fresh.set_embedding(state)
    kwargs = PROMPTS["box and points"]
    assert all(np.array_equal(a, b) for a, b in zip(fresh.predict(**kwargs), p.ours.predict(**kwargs)))


@pytest.mark.parametrize("model_type", ["vit_t", "vit_b", "vit_l", "vit_h"])
def test_state_dict_layout_matches_official(model_type):
    """Keys and shapes equal the official checkpoints'."""
    registry, _ = _reference_registry(model_type)
    # The big ViTs are built on the meta device (no memory); the reference TinyViT cannot be.
    device = "cpu" if model_type == "vit_t" else "meta"
    with torch.device(device):
        reference = registry[model_type]()
        ours = mobilesam.build_sam(model_type)
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert sorted(ref_sd) == sorted(our_sd)
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)


def test_parameter_counts_match_reference():
    import mobile_sam

    reference = mobile_sam.sam_model_registry["vit_t"]()
    ours = mobilesam.build_sam("vit_t")

    def count(module):
        return sum(p.numel() for p in module.parameters())

    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        print(
            f"\nvit_t {part}: ours {count(getattr(ours, part)):,}, reference {count(getattr(reference, part)):,}"
        )
        assert count(getattr(ours, part)) == count(getattr(reference, part))
    assert round(count(ours.image_encoder) / 1e6, 2) == 6.07
    assert round(count(ours.mask_decoder) / 1e6, 2) == 4.06


def test_runtime_does_not_import_torchvision_or_timm():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, mobilesam\n"
        "p = mobilesam.SamPredictor(mobilesam.build_sam('vit_t'))\n"
        "p.set_image(np.zeros((32, 48, 3), np.uint8)); p.predict(box=np.array([1, 1, 20, 20]))\n"
        "bad = [m for m in ('torchvision', 'timm') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_forward_batched_images_match(tmp_path):
    """`Sam.forward` on a batch of two prompted images, as in segment_anything's notebooks."""
    import mobile_sam

    torch.manual_seed(3)
    reference = mobile_sam.sam_model_registry["vit_t"]().eval()
    torch.save(reference.state_dict(), tmp_path / "t.pt")
    ours = mobilesam.build_sam("vit_t", tmp_path / "t.pt", exact=True)
    resize = mobilesam.transforms.ResizeLongestSide(1024)
    batch = []
    for shape, box in (((200, 300), [20, 30, 150, 160]), ((310, 170), [5, 40, 160, 300])):
        img = _image(*shape)
        tensor = torch.as_tensor(resize.apply_image(img)).permute(2, 0, 1).contiguous()
        batch.append(
            {
                "image": tensor,
                "original_size": shape,
                "boxes": resize.apply_boxes_torch(torch.tensor([box], dtype=torch.float), shape),
                "point_coords": resize.apply_coords_torch(torch.tensor([[[60.0, 90.0]]]), shape),
                "point_labels": torch.tensor([[1]]),
            }
        )
    with torch.no_grad():
        expected = reference(batch, multimask_output=True)
    got = ours(batch, multimask_output=True)
    for e, g in zip(expected, got):
        assert torch.equal(e["masks"], g["masks"])
        assert torch.allclose(e["iou_predictions"], g["iou_predictions"], atol=TOL, rtol=0)
        assert torch.allclose(e["low_res_logits"], g["low_res_logits"], atol=TOL, rtol=0)
