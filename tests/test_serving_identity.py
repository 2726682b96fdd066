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


def test_one_identity_for_label_studio_onnx_volumes_and_napari(checkpoint, tmp_path, monkeypatch):
    """Label Studio's model_version, the ONNX export stamp, the volume cache and the plugin all name
    a model by `model_identity` (the only scheme left)."""
    from labelstudio_backend.model import model_version_for
    from labelstudio_backend.settings import Settings
    from mobilesam.onnx.export import weights_fingerprint
    from mobilesam.volume.embeddings import model_fingerprint

    ident = model_identity(model_type="vit_t", checkpoint=checkpoint)
    fp32 = dict(precision="fp32")
    assert (
        model_version_for(Settings(model_type="vit_t", checkpoint=str(checkpoint), **fp32))
        == "mobilesam-" + ident
    )
    bf16 = "-bf16" if mobilesam.runtime.bf16_supported() else ""  # the default "auto" precision
    assert (
        model_version_for(Settings(model_type="vit_t", checkpoint=str(checkpoint)))
        == f"mobilesam-{ident}{bf16}"
    )
    assert (
        model_version_for(
            Settings(model_type="vit_t", checkpoint=str(checkpoint), backend="onnx", onnx_precision="int8")
        )
        == "mobilesam-" + ident + "-int8static"
    )
    assert model_fingerprint("vit_t", checkpoint) == ident
    model = mobilesam.load_model("vit_t", checkpoint)
    assert weights_fingerprint(model) == model_identity(model)
    # Official weights not downloaded yet: named by their published digest, i.e. the identity the
    # verified file will have; once the file is there, hashing it gives the same name.
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    published = mobilesam.weights.OFFICIAL_WEIGHTS["vit_t"].sha256
    assert model_version_for(Settings(model_type="vit_t", **fp32)) == f"mobilesam-vit_t-{published}-in1024"
    shutil.copy(checkpoint, mobilesam.weights.cached_path("vit_t"))
    assert model_version_for(Settings(model_type="vit_t", **fp32)) == "mobilesam-" + ident
