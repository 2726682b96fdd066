"""The torch-free ONNX predictor: same answers as the torch predictor, and torch never imported."""

import json
import subprocess
import sys

import numpy as np
import pytest

import mobilesam
from mobilesam.errors import MobileSamError
from mobilesam.onnx import StandalonePredictor, export_onnx

IMAGE_SIZE = 256  # a small model keeps the export to seconds; the code path is the same


@pytest.fixture(scope="module")
def exported(tmp_path_factory, vit_t_checkpoint):
    model = mobilesam.build_sam("vit_t", vit_t_checkpoint, image_size=IMAGE_SIZE)
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, out)
    return model, out


def _image(h=150, w=230):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[40:110, 60:170] = [220, 180, 40]
    return img


PROMPTS = [
    dict(point_coords=np.array([[100, 70]]), point_labels=np.array([1])),
    dict(box=np.array([50, 30, 180, 120]), multimask_output=False),
    dict(
        point_coords=np.array([[100, 70], [10, 10]]),
        point_labels=np.array([1, 0]),
        box=np.array([50, 30, 180, 120]),
    ),
]


def test_matches_the_torch_predictor(exported):
    model, onnx_dir = exported
    image = _image()
    torch_predictor = mobilesam.SamPredictor(model)
    torch_predictor.set_image(image)
    standalone = StandalonePredictor(onnx_dir)
    standalone.set_image(image)
    assert np.abs(standalone.features - torch_predictor.features.numpy()).max() <= 1e-3
    for prompt in PROMPTS:
        masks, iou, low = standalone.predict(**prompt)
        t_masks, t_iou, t_low = torch_predictor.predict(**prompt)
        assert masks.shape == t_masks.shape and masks.dtype == bool
        assert np.abs(low - t_low).max() <= 1e-3 and np.abs(iou - t_iou).max() <= 1e-3
        assert (masks != t_masks).mean() <= 1e-3
    previous = torch_predictor.predict(**PROMPTS[0])[2][:1]
    refined = standalone.predict(**PROMPTS[0], mask_input=previous)[2]
    assert np.abs(refined - torch_predictor.predict(**PROMPTS[0], mask_input=previous)[2]).max() <= 1e-3


def test_runs_without_importing_torch(exported):
    _, onnx_dir = exported
    script = (
        "import json, sys, numpy as np\n"
        "from mobilesam.onnx.standalone import StandalonePredictor\n"
        f"p = StandalonePredictor({str(onnx_dir)!r})\n"
        "p.set_image(np.zeros((90, 120, 3), np.uint8))\n"
        "masks, iou, low = p.predict(np.array([[60, 45]]), np.array([1]))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'shape': list(masks.shape)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "shape": [3, 90, 120]}


def test_clear_errors(exported, tmp_path):
    with pytest.raises(MobileSamError, match="export-onnx"):
        StandalonePredictor(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        StandalonePredictor(exported[1], precision="fp16")
    predictor = StandalonePredictor(exported[1])
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(ValueError, match="uint8"):
        predictor.set_image(np.zeros((10, 10), np.float32))
