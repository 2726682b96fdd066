"""EfficientViT-SAM L0 against the official `efficientsam` package (PyPI, test-only oracle) on the
same random weights: checkpoint layout, 512 px embeddings and 1024-frame mask logits."""

import numpy as np
import pytest
import torch

import mobilesam
from mobilesam.errors import CheckpointError

efficientsam_zoo = pytest.importorskip(
    "efficientsam.sam_model_zoo", reason="efficientsam (test oracle) not installed"
)
from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(official predictor, our predictor) on one seeded random checkpoint in the official format."""
    torch.manual_seed(0)
    official = efficientsam_zoo.create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False).eval()
    for module in official.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("evit") / "efficientvit_sam_l0.pt"
    torch.save(official.state_dict(), path)
    ours = mobilesam.build_sam("efficientvit_sam_l0", path, exact=True)
    image = np.random.default_rng(1).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    reference, predictor = EfficientViTSamPredictor(official), mobilesam.SamPredictor(ours)
    reference.set_image(image)
    predictor.set_image(image)
    return reference, predictor, path


def test_state_dict_layout_matches_official(pair):
    reference, predictor, _ = pair
    theirs = {k: tuple(v.shape) for k, v in reference.model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in predictor.model.state_dict().items()} == theirs


def test_embeddings_match(pair):
    reference, predictor, _ = pair
    assert predictor.features.shape == (1, 256, 64, 64)
    assert tuple(predictor.input_size) == tuple(reference.input_size)
    assert (predictor.features - reference.features).abs().max().item() < 1e-4


PROMPTS = {
    "points": dict(point_coords=np.array([[50.0, 60.0], [120.0, 90.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([20.0, 30.0, 150.0, 120.0])),
}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_mask_logits_match_with_and_without_mask_input(pair, prompt):
    reference, predictor, _ = pair
    kwargs = PROMPTS[prompt]
    theirs = reference.predict(**kwargs, return_logits=True)
    ours = predictor.predict(**kwargs, return_logits=True)
    for a, b in zip(ours, theirs):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-4
    mask_input = theirs[2][:1]
    theirs = reference.predict(**kwargs, mask_input=mask_input, multimask_output=False, return_logits=True)
    ours = predictor.predict(**kwargs, mask_input=mask_input, multimask_output=False, return_logits=True)
    for a, b in zip(ours, theirs):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-4


def test_wrong_architecture_both_ways(pair, vit_t_checkpoint):
    _, _, path = pair
    with pytest.raises(
        CheckpointError, match=r"is a efficientvit_sam_l0 model \(EfficientViT-SAM L0.*you asked for vit_t"
    ):
        mobilesam.build_sam("vit_t", path)
    with pytest.raises(
        CheckpointError, match=r"is a vit_t model \(MobileSAM.*you asked for efficientvit_sam_l0"
    ):
        mobilesam.build_sam("efficientvit_sam_l0", vit_t_checkpoint)


def test_load_model_detects_the_architecture(pair):
    _, _, path = pair
    model = mobilesam.load_model(None, path, allow_download=False)
    assert type(model.image_encoder).__name__ == "EfficientViTSamEncoder"


def test_onnx_export_refuses_the_512_px_encoder(pair, tmp_path):
    from mobilesam.onnx import export_onnx

    _, predictor, _ = pair
    with pytest.raises(ValueError, match="reads 512 px: use the torch backend"):
        export_onnx(predictor.model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
