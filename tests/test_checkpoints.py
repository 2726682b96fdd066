"""Loading checkpoints: strict, safe, and clear about what is wrong with a bad file."""

import pytest
import torch

import mobilesam
from mobilesam.build_sam import detect_model_type, read_state_dict
from mobilesam.errors import CheckpointError


def test_random_checkpoint_roundtrip(vit_t_checkpoint):
    model = mobilesam.build_sam("vit_t", vit_t_checkpoint)
    saved = torch.load(vit_t_checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert (
        mobilesam.sam_model_registry["vit_t"](checkpoint=vit_t_checkpoint).state_dict().keys() == saved.keys()
    )


def test_wrong_architecture_is_named(vit_t_checkpoint):
    with pytest.raises(CheckpointError, match=r"is a vit_t model .*you asked for vit_b") as info:
        mobilesam.build_sam("vit_b", vit_t_checkpoint)
    assert str(vit_t_checkpoint) in str(info.value)


def test_truncated_file(vit_t_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(vit_t_checkpoint.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated, corrupt, or not a PyTorch checkpoint"):
        mobilesam.build_sam("vit_t", truncated)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=str(text)):
        mobilesam.build_sam("vit_t", text)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        mobilesam.build_sam("vit_t", tmp_path / "nope.pt")


def test_other_model_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM/MobileSAM checkpoint"):
        mobilesam.build_sam("vit_t", path)


def test_incomplete_state_dict_lists_missing_keys(vit_t_checkpoint, tmp_path):
    sd = torch.load(vit_t_checkpoint, weights_only=True)
    del sd["mask_decoder.iou_token.weight"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e.g. mask_decoder.iou_token.weight\)"):
        mobilesam.build_sam("vit_t", path)


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on unpickling is rejected, not executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_wrapped_state_dict_and_detection(vit_t_checkpoint, tmp_path):
    sd = torch.load(vit_t_checkpoint, weights_only=True)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": sd}, path)
    assert detect_model_type(read_state_dict(path)) == "vit_t"
    mobilesam.build_sam("vit_t", path)


def test_load_model_detects_type_from_checkpoint(vit_t_checkpoint, monkeypatch):
    monkeypatch.setenv("MOBILESAM_CHECKPOINT", str(vit_t_checkpoint))
    model = mobilesam.load_model()
    assert model.image_encoder.__class__.__name__ == "TinyViT"


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown model type 'vit_x'"):
        mobilesam.build_sam("vit_x")
