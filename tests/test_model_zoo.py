"""The model zoo registry: every model is selectable everywhere, loads its official key layout with
weights_only=True, and a checkpoint of another architecture is named as such."""

import numpy as np
import pytest
import tifffile
import torch

import mobilesam
from mobilesam import cli
from mobilesam.errors import CheckpointError
from mobilesam.model_zoo import MODEL_TYPES, MODEL_VARIANTS, all_weights

NEW_MODELS = ("tinysam", "vit_t_lm", "vit_t_em_organelles")


def test_registry_lists_the_new_models_with_licences(capsys):
    assert set(NEW_MODELS) <= set(MODEL_TYPES)
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name, info in all_weights().items():
        assert name in out and info.url in out
    assert out.count("licence: ") == len(all_weights())
    assert "licence: CC-BY-4.0" in out and "licence: Apache-2.0" in out


@pytest.fixture(scope="module")
def mobile_sam_layout():
    mobile_sam = pytest.importorskip("mobile_sam", reason="mobile_sam (test oracle) not installed")
    return {k: v.shape for k, v in mobile_sam.sam_model_registry["vit_t"]().state_dict().items()}


@pytest.mark.parametrize("name", NEW_MODELS)
def test_same_layout_variants_load_a_mobilesam_layout_checkpoint(name, vit_t_checkpoint, mobile_sam_layout):
    """TinySAM and micro-sam's vit_t models ship MobileSAM's exact key layout (micro-sam builds them with
    mobile_sam's registry), so the official mobile_sam key set is their reference."""
    model = mobilesam.load_model(name, vit_t_checkpoint, allow_download=False)
    saved = torch.load(vit_t_checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert {k: v.shape for k, v in model.state_dict().items()} == mobile_sam_layout


@pytest.mark.parametrize("name", NEW_MODELS)
def test_wrong_architecture_checkpoint_names_both(name, tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, path)  # what identifies a ViT-B
    with pytest.raises(
        CheckpointError, match=rf"is a vit_b model \(SAM ViT-B\), you asked for {name} \(a vit_t model\)"
    ):
        mobilesam.build_sam(name, path)


def test_micro_sam_training_format_checkpoint_loads(vit_t_checkpoint, tmp_path):
    """torch_em / micro-sam training checkpoints wrap the SAM state as model_state with a `sam.` prefix."""
    saved = torch.load(vit_t_checkpoint, weights_only=True)
    path = tmp_path / "best.pt"
    torch.save({"model_state": {f"sam.{k}": v for k, v in saved.items()}, "decoder_state": {}}, path)
    model = mobilesam.build_sam("vit_t_lm", path)
    assert torch.equal(
        model.state_dict()["mask_decoder.iou_token.weight"], saved["mask_decoder.iou_token.weight"]
    )


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_label_studio_model_type_accepts_each_name(name):
    from labelstudio_backend.settings import Settings

    assert Settings.from_env({"MOBILESAM_MODEL_TYPE": name}).model_type == name


def test_label_studio_rejects_unknown_model_type():
    from labelstudio_backend.settings import Settings

    with pytest.raises(ValueError, match="MOBILESAM_MODEL_TYPE='vit_x' is not one of vit_t, vit_b"):
        Settings.from_env({"MOBILESAM_MODEL_TYPE": "vit_x"})


def test_ais_cli_writes_instance_labels(vit_t_checkpoint, tmp_path, capsys):
    from mobilesam.modeling.instance_decoder import InstanceSegmentationDecoder

    torch.manual_seed(0)
    decoder = InstanceSegmentationDecoder()
    torch.nn.init.constant_(decoder.out_conv.bias, 0.0)
    decoder_path = tmp_path / "vit_t_lm_decoder.pt"
    torch.save(decoder.state_dict(), decoder_path)
    out = tmp_path / "labels.tif"
    assert (
        cli.main(
            [
                "ais",
                "sample",
                "-o",
                str(out),
                "--checkpoint",
                str(vit_t_checkpoint),
                "--decoder-checkpoint",
                str(decoder_path),
                "--no-download",
                "--min-size",
                "5",
            ]
        )
        == 0
    )
    labels = tifffile.imread(out)
    image = mobilesam.io.read_image("sample")
    assert labels.dtype == np.uint32 and labels.shape == image.shape[:2]
    assert f"{int(labels.max())} objects" in capsys.readouterr().out


def test_ais_cli_refuses_a_model_without_decoder_and_a_png_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["ais", "sample", "-o", str(tmp_path / "l.tif"), "--model-type", "tinysam"])
    with pytest.raises(SystemExit):
        cli.main(["ais", "sample", "-o", str(tmp_path / "l.png")])
    assert "must end in .tif" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_every_variant_names_a_known_architecture():
    for variant in MODEL_VARIANTS.values():
        assert (
            variant.architecture in MODEL_VARIANTS
            and MODEL_VARIANTS[variant.architecture].architecture == variant.architecture
        )
        assert variant.weights.model_type == variant.name and variant.weights.licence
