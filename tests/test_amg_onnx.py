"""Segment everything on any predictor: `SamAutomaticMaskGenerator(SamPredictor(model,
backend="onnx"))` gives the torch generator's records (within the ONNX parity bounds), with the
same IoU-first filtering (only masks above pred_iou_thresh are upscaled) and coarse-to-fine
skipping. Runs on the stand-in model of tests/test_amg.py, whose masks follow its image's regions."""

import numpy as np
import pytest
from test_amg import STRUCTURED_CASES, blobs_image, structured_pair

from mobilesam import SamAutomaticMaskGenerator, SamPredictor

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
TOL = 1e-3  # the ONNX backend's parity bound (tests/test_onnx.py)


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    encoder_seed, settings = STRUCTURED_CASES["no crops"]
    _, model = structured_pair(encoder_seed)
    model.set_exact(False)
    onnx = SamPredictor(model, backend="onnx", onnx_dir=tmp_path_factory.mktemp("onnx"))
    return model, onnx, settings


def _assert_records_close(ours, expected) -> float:
    assert len(ours) == len(expected) and expected
    worst = 1.0
    for a, b in zip(ours, expected):
        union = (a["segmentation"] | b["segmentation"]).sum()
        worst = min(worst, (a["segmentation"] & b["segmentation"]).sum() / union)
        assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
        assert np.allclose(a["bbox"], b["bbox"], atol=1)
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= TOL
        assert abs(a["stability_score"] - b["stability_score"]) <= 0.01
    assert worst >= 0.99
    return worst


def test_onnx_predictor_gives_the_torch_records_with_iou_filtering(predictors):
    model, onnx, settings = predictors
    image = blobs_image()
    everything = SamAutomaticMaskGenerator(model, **settings).generate(image)
    _assert_records_close(SamAutomaticMaskGenerator(onnx, **settings).generate(image), everything)
    # A threshold that rejects about half: the confident masks only, the same on both backends.
    settings = dict(settings, pred_iou_thresh=float(np.median([r["predicted_iou"] for r in everything])))
    generator = SamAutomaticMaskGenerator(onnx, **settings)
    assert generator.predictor is onnx
    records = generator.generate(image)
    worst = _assert_records_close(records, SamAutomaticMaskGenerator(model, **settings).generate(image))
    assert 1 <= len(records) < len(everything)
    print(f"\n[onnx everything] {len(records)} of {len(everything)} records; worst mask IoU {worst:.4f}")


def test_onnx_predictor_decodes_fewer_points_coarse_to_fine(predictors):
    model, onnx, settings = predictors
    image = blobs_image()
    settings = dict(settings, points_per_side=16)
    fast = SamAutomaticMaskGenerator(onnx, coarse_to_fine=True, **settings)
    got = fast.generate(image)
    assert fast.decoded_points < 256 / 2 and got  # of the 16 x 16 grid
    torch_fast = SamAutomaticMaskGenerator(model, coarse_to_fine=True, **settings)
    _assert_records_close(got, torch_fast.generate(image))
    assert torch_fast.decoded_points == fast.decoded_points
    print(f"\n[onnx coarse to fine] {fast.decoded_points} of 256 points decoded, {len(got)} records")


def test_onnx_decoder_parts_upscale_only_the_confident_prompts(predictors, monkeypatch):
    # The exported decoder's two parts (transformer + IoU head, then upscaling) give exactly the
    # one-piece decoder's confident masks, and the upscaling runs on the confident prompts only.
    import torch

    from mobilesam.modeling.mask_decoder import select_confident

    model, onnx, _ = predictors
    onnx.set_image(blobs_image())
    backend = onnx.runtime
    head, upscale = backend._decoder_parts()
    upscaled = []
    run = upscale.run
    monkeypatch.setattr(
        backend,
        "_parts",
        (head, type("Spy", (), {"run": lambda _, o, i: upscaled.append(len(i["keys"])) or run(o, i)})()),
    )
    rng = np.random.default_rng(0)
    coords = torch.as_tensor(rng.uniform(0, 200, (12, 1, 2)), dtype=torch.float)
    points = (coords, torch.ones(12, 1, dtype=torch.int))
    full = onnx.decode(points, None, None, True)
    threshold = float(np.median(full[1].max(dim=1).values.numpy()))  # about half the prompts keep none
    masks, iou, index = onnx.decode_confident(points, None, None, True, threshold)
    expected = select_confident(*full, threshold)
    assert torch.equal(index, expected[2]) and 0 < len(index) < 36
    assert torch.allclose(masks, expected[0], atol=1e-5) and torch.allclose(iou, expected[1])
    assert upscaled == [len(torch.unique(index // 3))] and upscaled[0] < 12
    assert onnx.decode_confident(points, None, None, True, 10.0)[0].shape == (0, *full[0].shape[-2:])
    assert upscaled == [upscaled[0]]  # nothing confident: no upscaling at all
