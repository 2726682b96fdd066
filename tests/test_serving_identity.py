"""`mobilesam.serving.model_identity`: one identity per model, from a file or from weights."""

import shutil

import pytest
import torch

import mobilesam
from mobilesam.serving import model_identity
from mobilesam.testing import save_random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("w") / "a.pt", "vit_t", seed=0, image_size=64)


def test_file_identity_follows_content_not_name(checkpoint, tmp_path):
    copy = shutil.copy(checkpoint, tmp_path / "renamed.pt")
    other = save_random_checkpoint(tmp_path / "b.pt", "vit_t", seed=1, image_size=64)
    ident = model_identity(model_type="vit_t", checkpoint=checkpoint)
    assert ident == model_identity(model_type="vit_t", checkpoint=copy)
    assert ident != model_identity(model_type="vit_t", checkpoint=other)
    assert ident.startswith("vit_t-") and ident.endswith("-in1024")
    assert model_identity(model_type="vit_t", checkpoint=checkpoint, input_size=64).endswith("-in64")


def test_model_identity_follows_weights_and_input_size(checkpoint):
    a = mobilesam.build_sam("vit_t", checkpoint, image_size=64)
    b = mobilesam.build_sam("vit_t", checkpoint, image_size=64)
    assert model_identity(a) == model_identity(b) and model_identity(a).endswith("-in64")
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert model_identity(a) != model_identity(b)
    with pytest.raises(ValueError, match="checkpoint file or a model"):
        model_identity()
