"""micro-sam's automatic instance segmentation (AIS): our decoder and watershed against micro-sam's
own code (installed from PyPI as a test-only oracle) on the same random weights and images."""

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam.errors import CheckpointError
from mobilesam.instance_segmentation import (
    AISParameters,
    InstanceSegmenter,
    load_decoder,
    watershed_from_maps,
)

micro_sam_is = pytest.importorskip(
    "micro_sam.instance_segmentation", reason="micro-sam (test oracle) not installed"
)
from torch_em.model import UNETR  # noqa: E402  (installed with micro-sam)

IMAGE_SIZE = 256  # small model input keeps the decoder at 256 x 256 on CPU


def _oracle_decoder(encoder, transposed: bool, seed: int):
    """micro-sam's DecoderAdapter (as `get_decoder` builds it) with seeded random weights and
    non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    unetr = UNETR(
        backbone="sam",
        encoder=encoder,
        out_channels=3,
        use_sam_stats=True,
        final_activation="Sigmoid",
        use_skip_connection=False,
        resize_input=True,
        use_conv_transpose=transposed,
    )
    for module in unetr.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    # Contrast in the output maps, so the watershed finds several instances (not all or nothing).
    unetr.out_conv.weight.data *= 10
    unetr.out_conv.bias.data = torch.tensor([1.0, -0.5, -0.5])
    return micro_sam_is.DecoderAdapter(unetr).eval()


def _decoder_state(oracle):
    """The decoder state as micro-sam ships it in *_decoder.pt (the UNETR minus its encoder)."""
    return {k: v for k, v in oracle.state_dict().items() if not k.startswith("encoder")}


@pytest.fixture(scope="module")
def small_sam():
    torch.manual_seed(3)
    return mobilesam.build_sam("vit_t", image_size=IMAGE_SIZE, exact=True).eval()


def _image(h, w, seed=5):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = rng.integers(0, 60, (h, w, 3))
    for cy, cx, r in ((40, 50, 25), (110, 150, 30), (60, 170, 18)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
    return img.clip(0, 255).astype(np.uint8)


def _tie_mismatch_fraction(ours, theirs):
    """Fraction of pixels whose labels differ. micro-sam's watershed (bioimage_cpp) quantizes heights
    to 65,536 levels and leaves the order within a level unspecified, so a pixel between two regions
    at the same quantized height may go either way; on these random maps that is 0-1 pixel."""
    return float(np.mean(ours != theirs))


@pytest.mark.parametrize("transposed", [False, True], ids=["bilinear", "transposed"])
def test_decoder_state_dict_matches_micro_sam(small_sam, transposed, tmp_path):
    oracle = _oracle_decoder(small_sam.image_encoder, transposed, seed=0)
    state = _decoder_state(oracle)
    path = tmp_path / "vit_t_decoder.pt"
    torch.save(state, path)
    ours = load_decoder(path, image_size=IMAGE_SIZE)  # strict; weights_only=True
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }


@pytest.mark.parametrize("transposed", [False, True], ids=["bilinear", "transposed"])
def test_ais_maps_and_labels_match_micro_sam(small_sam, transposed, tmp_path):
    oracle = _oracle_decoder(small_sam.image_encoder, transposed, seed=1)
    path = tmp_path / "decoder.pt"
    # Combined format {"model_state", "decoder_state"} as micro-sam's export writes it.
    torch.save({"model_state": small_sam.state_dict(), "decoder_state": _decoder_state(oracle)}, path)
    segmenter = InstanceSegmenter(small_sam, load_decoder(path, image_size=IMAGE_SIZE))
    image = _image(180, 230)  # non-square, smaller than the model input: crop + resize paths

    ours = segmenter.predict_maps(image)
    predictor = segmenter.predictor
    with torch.no_grad():
        theirs = oracle(predictor.features, predictor.input_size, predictor.original_size)[0].numpy()
    assert ours.shape == theirs.shape == (3, 180, 230)
    assert np.abs(ours - theirs).max() < 1e-4

    # micro-sam's watershed on micro-sam's maps vs ours on ours.
    reference = micro_sam_is.InstanceSegmentationWithDecoder(None, None)
    reference.set_state(dict(foreground=theirs[0], center_distances=theirs[1], boundary_distances=theirs[2]))
    expected = reference.generate()
    labels = watershed_from_maps(*ours)
    assert labels.max() == expected.max() > 1
    assert _tie_mismatch_fraction(labels, expected) < 1e-3


def _blob_maps(seed):
    """Decoder-like maps of touching round objects: foreground, centre distance, boundary distance."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = 160, 200
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros((h, w), np.int32)
    for i, (cy, cx, r) in enumerate(
        zip(rng.integers(20, h - 20, 12), rng.integers(20, w - 20, 12), rng.integers(8, 20, 12)), start=1
    ):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    foreground = (truth > 0).astype(np.float32)
    inside = ndi.distance_transform_edt(truth > 0)
    boundary = 1 - inside / max(inside.max(), 1)
    center = np.ones_like(boundary)
    for i in range(1, truth.max() + 1):
        if (truth == i).any():
            cy, cx = ndi.center_of_mass(truth == i)
            center = np.minimum(center, np.hypot(yy - cy, xx - cx) / 20)
    noise = rng.normal(0, 0.02, (3, h, w))
    return [np.clip(m + n, 0, 1).astype(np.float32) for m, n in zip((foreground, center, boundary), noise)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_size", [0, 50])
def test_watershed_labels_match_micro_sam(seed, min_size):
    foreground, center, boundary = _blob_maps(seed)
    reference = micro_sam_is.InstanceSegmentationWithDecoder(None, None)
    reference.set_state(dict(foreground=foreground, center_distances=center, boundary_distances=boundary))
    expected = reference.generate(min_size=min_size)
    labels = watershed_from_maps(foreground, center, boundary, AISParameters(min_size=min_size))
    assert labels.max() == expected.max() >= 5
    np.testing.assert_array_equal(labels, expected)


def test_sam_checkpoint_given_as_decoder_says_what_it_is(vit_t_checkpoint):
    with pytest.raises(CheckpointError, match="is a SAM model checkpoint; an instance segmentation decoder"):
        load_decoder(vit_t_checkpoint)


def test_decoder_given_as_sam_checkpoint_says_what_it_is(small_sam, tmp_path):
    path = tmp_path / "vit_t_lm_decoder.pt"
    torch.save(_decoder_state(_oracle_decoder(small_sam.image_encoder, False, seed=2)), path)
    with pytest.raises(CheckpointError, match="is a micro-sam instance segmentation decoder.*vit_t_lm"):
        mobilesam.build_sam("vit_t_lm", path)
