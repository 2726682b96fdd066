"""An existing mask as a SAM prompt (`mobilesam.mask_prompt`): the mask input lies in SAM's padded
low-res frame, and refining equals the official predictor (mobile_sam, same random weights and
embeddings) asked with the same box + mask input + points, on every slice of a 3-D object."""

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam.mask_prompt import mask_box, mask_input_logits, refine_mask, refine_object
from mobilesam.volume import VolumeEmbeddings

H, W = 48, 80  # non-square: the padding of the 256 frame is exercised


def _object(shape=(H, W), centre=(24, 30), radius=12):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_mask_input_is_the_mask_in_sams_padded_low_res_frame(vit_t_model):
    mask = _object()
    logits = mask_input_logits(mask)
    assert logits.shape == (1, 256, 256) and logits.dtype == np.float32
    rows = round(256 * H / W)  # the longest side (W) fills the frame; the rest is padding
    assert not logits[0, rows + 1 :].any() and (logits[0, :rows] != 0).any()
    # Up-sampled the way SAM up-samples its own low-res masks, the logits give the mask back.
    back = (
        vit_t_model.postprocess_masks(torch.from_numpy(logits)[None], (1024 * H // W, 1024), (H, W))[0, 0] > 0
    )
    iou = (back.numpy() & mask).sum() / (back.numpy() | mask).sum()
    assert iou > 0.95, iou
    assert mask_box(mask).tolist() == [18.0, 12.0, 43.0, 37.0]
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((4, 4), bool))


def test_refining_equals_the_official_predictor_for_the_same_prompts(tmp_path):
    mobile_sam = pytest.importorskip(
        "mobile_sam", reason="the official oracle (mobilesam-mirror) is not installed"
    )
    torch.manual_seed(0)
    reference = mobile_sam.sam_model_registry["vit_t"]().eval()
    torch.save(reference.state_dict(), tmp_path / "vit_t.pt")
    ours = mobilesam.SamPredictor(mobilesam.build_sam("vit_t", tmp_path / "vit_t.pt", exact=True))
    oracle = mobile_sam.SamPredictor(reference)
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (2, H, W, 3), dtype=np.uint8)
    embeddings = VolumeEmbeddings(volume, ours, channel_axis=3)
    mask = np.stack([_object(), _object(radius=9)])
    point = np.array([[44.0, 24.0]])

    refined = refine_object(embeddings, mask, {0: (point, np.array([1]))})
    worst = 0.0
    for z in (0, 1):
        _use_embedding(oracle, embeddings.get(z))  # the encoders' parity is test_parity's; here the prompts'
        masks, _, _ = oracle.predict(
            point_coords=point if z == 0 else None,
            point_labels=np.array([1]) if z == 0 else None,
            box=mask_box(mask[z]),
            mask_input=mask_input_logits(mask[z]),
            multimask_output=False,
            return_logits=True,
        )
        expected = masks[0] > 0
        mismatch = refined[z] != expected
        # Only pixels whose logit is within float noise of the threshold may differ.
        assert np.all(np.abs(masks[0][mismatch]) < 1e-3), np.abs(masks[0][mismatch]).max()
        worst = max(worst, mismatch.mean())
        embeddings.set_slice(z)
        single, score = refine_mask(
            ours, mask[z], point if z == 0 else None, np.array([1]) if z == 0 else None
        )
        np.testing.assert_array_equal(single, refined[z])
        assert np.isfinite(score)
    print(f"refine vs official: fraction of differing pixels {worst:.2e}")


def _use_embedding(oracle, state) -> None:
    """Give the official predictor our embedding of a slice (as if it had encoded the slice)."""
    oracle.reset_image()
    oracle.features = state.features.to(oracle.device)
    oracle.original_size, oracle.input_size = tuple(state.original_size), tuple(state.input_size)
    oracle.is_image_set = True
