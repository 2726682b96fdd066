"""`mobilesam` CLI: segment, weights, usage errors (in-process through `mobilesam.cli.main`)."""

import numpy as np
import pytest
import tifffile
from PIL import Image

import mobilesam
from mobilesam.cli import main
from mobilesam.io import read_image


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MOBILESAM_CHECKPOINT", raising=False)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "segment" in out and "weights" in out


def test_segment_sample_writes_the_predictors_mask(vit_t_checkpoint, tmp_path, capsys):
    out = tmp_path / "mask.png"
    code = main(
        [
            "segment",
            "sample",
            "--point",
            "120,150",
            "--point",
            "300,40,0",
            "--box",
            "60,80,250,230",
            "--checkpoint",
            str(vit_t_checkpoint),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    mask = np.array(Image.open(out))
    # The CLI's default precision is "auto" (bf16 on CPUs that have it): the same model here.
    predictor = mobilesam.SamPredictor(mobilesam.load_model("vit_t", vit_t_checkpoint, precision="auto"))
    predictor.set_image(mobilesam.image.to_rgb_uint8(read_image("sample")))
    masks, scores, _ = predictor.predict(
        np.array([[120, 150], [300, 40]]), np.array([1, 0]), np.array([60, 80, 250, 230])
    )
    best = int(np.argmax(scores))
    assert mask.shape == (303, 384) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, masks[best])
    assert f"score {scores[best]:.4f}" in capsys.readouterr().out


def test_segment_all_masks_tiff(vit_t_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILESAM_CHECKPOINT", str(vit_t_checkpoint))
    image = tmp_path / "img16.tif"
    tifffile.imwrite(image, (np.arange(64 * 80).reshape(64, 80) * 7).astype(np.uint16))
    out = tmp_path / "masks.tif"
    assert main(["segment", str(image), "--point", "10,10", "--all-masks", "-o", str(out)]) == 0
    stack = tifffile.imread(out)
    assert stack.shape == (3, 64, 80) and stack.dtype == np.uint8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "sample", "-o", "x.png"], "at least one --point or a --box"),
        (["segment", "sample", "--point", "1000,5", "-o", "x.png"], "outside the 384x303 image"),
        (["segment", "sample", "--point", "a,b", "-o", "x.png"], "must be X,Y or X,Y,LABEL"),
        (["segment", "sample", "--point", "1,2,7", "-o", "x.png"], "label must be 1"),
        (["segment", "sample", "--box", "10,10,5,20", "-o", "x.png"], "X1 > X0"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_offline_without_weights_fails_clearly(offline_home, tmp_path, capsys, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    out = tmp_path / "mask.png"
    assert main(["segment", "sample", "--point", "100,100", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could not download the vit_t weights" in err and "MOBILESAM_CHECKPOINT" in err
    assert "Traceback" not in err and not out.exists()


def test_missing_image_is_a_clear_error(vit_t_checkpoint, tmp_path, capsys):
    code = main(
        [
            "segment",
            str(tmp_path / "nope.png"),
            "--point",
            "1,1",
            "--checkpoint",
            str(vit_t_checkpoint),
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
    assert code == 1 and "nope.png does not exist" in capsys.readouterr().err


def test_weights_list_and_path(offline_home, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "mobile_sam.pt" in out and "sam_vit_h_4b8939.pth" in out and "not downloaded" in out
    assert main(["weights", "path", "vit_t"]) == 1
    assert "no vit_t weights found" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "mobilesam"
    assert exe.exists() or shutil.which("mobilesam"), "console script `mobilesam` is not installed"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "segment" in result.stdout
