"""Automatic mask generation ("segment everything"): records equal the official generators', the
batched helpers equal the official/torchvision ones, label images, COCO JSON and the CLI.

Random weights give speckled, near-whole-image masks that NMS collapses to one record, which
would make a parity test say little. The `structured` models therefore use, on both sides, the
same deterministic stand-in encoder (a random 1x1 projection of 16x16-pixel mean colours) and a
mask decoder whose upscaling kernels are constant over their 2x2 footprint: masks then follow the
colour regions of the test image, so several distinct masks survive and NMS, the crop-edge filter
and the stability filter all have work to do. Real random-weight vit_t / vit_b models are tested
too, end to end and through a shared embedding. Each case prints its figures (run with -s).
"""

import json
import threading

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

import mobilesam
from mobilesam import EmbeddingState, SamAutomaticMaskGenerator
from mobilesam.amg_utils import (
    box_nms,
    mask_to_uncompressed_rle,
    masks_to_boxes,
    remove_small_regions,
    uncompressed_rle_to_mask,
)
from mobilesam.cli import main
from mobilesam.errors import Cancelled
from mobilesam.mask_outputs import record_mask, records_to_coco_json, records_to_label_image

SCORE_TOL = 1e-4


class ColourEncoder(torch.nn.Module):
    """Stand-in image encoder: (1, 3, S, S) -> (1, 256, S/16, S/16), tanh of a random projection
    of the 16x16 mean colours."""

    def __init__(self, img_size: int = 1024, seed: int = 0):
        super().__init__()
        self.img_size = img_size
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(256, 3, 1, 1, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.conv2d(F.avg_pool2d(x, 16), self.projection))


def blobs_image(h: int = 240, w: int = 320) -> np.ndarray:
    """Flat background with four coloured objects."""
    img = np.full((h, w, 3), 60, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 120) ** 2 + (xx - 160) ** 2 < 50**2] = [230, 230, 230]
    img[(yy - 50) ** 2 + (xx - 60) ** 2 < 30**2] = [20, 200, 20]
    img[150:210, 230:300] = [200, 40, 40]
    img[20:70, 220:300] = [40, 40, 220]
    return img


def reference_generators():
    import mobile_sam
    import segment_anything

    return {
        "mobile_sam": mobile_sam.SamAutomaticMaskGenerator,
        "segment_anything": segment_anything.SamAutomaticMaskGenerator,
    }


def structured_pair(encoder_seed: int = 0, seed: int = 0, img_size: int = 256):
    """(reference model, our model) with identical weights and the stand-in encoder.

    A 256-px model input (16x16 embedding) keeps the decoder ~16x cheaper than the official
    1024 px; the prompt encoder and mask decoder are the official architecture at that size.
    """
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    side = img_size // 16
    reference = Sam(
        image_encoder=ColourEncoder(img_size, encoder_seed),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(side, side),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        ),
    ).eval()
    with torch.no_grad():
        for conv in (reference.mask_decoder.output_upscaling[0], reference.mask_decoder.output_upscaling[3]):
            conv.weight[:] = conv.weight[:, :, :1, :1]
    ours = mobilesam.build_sam("vit_t", image_size=img_size, exact=True)
    ours.image_encoder = ColourEncoder(img_size)
    ours.load_state_dict(reference.state_dict())  # strict: every weight comes from the reference
    return reference, ours.eval()


@pytest.fixture(scope="module")
def structured():
    return structured_pair()


def assert_records_equal(ours, ref) -> float:
    """Same count, order, segmentations, boxes, areas, points, crops; returns max score |diff|."""
    assert len(ours) == len(ref)
    max_diff = 0.0
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert set(a) == set(b)
        if isinstance(b["segmentation"], np.ndarray):
            assert a["segmentation"].shape == b["segmentation"].shape
            assert np.array_equal(a["segmentation"], b["segmentation"]), f"record {i}: masks differ"
        else:
            assert a["segmentation"] == b["segmentation"], f"record {i}: RLEs differ"
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert a[key] == b[key], f"record {i}: {key} {a[key]} != {b[key]}"
        for key in ("predicted_iou", "stability_score"):
            if not (np.isnan(a[key]) and np.isnan(b[key])):
                max_diff = max(max_diff, abs(a[key] - b[key]))
    assert max_diff <= SCORE_TOL
    return max_diff


STRUCTURED_CASES = {  # (stand-in encoder seed, generator settings)
    "no crops": (
        7,
        dict(
            points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.01, stability_score_offset=0.02
        ),
    ),
    "one crop layer": (
        5,
        dict(
            points_per_side=6,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.01,
            stability_score_offset=0.02,
            crop_n_layers=1,
            crop_nms_thresh=0.6,
            crop_n_points_downscale_factor=2,
            points_per_batch=7,
        ),
    ),
}


@pytest.mark.parametrize("reference_name", ["mobile_sam", "segment_anything"])
@pytest.mark.parametrize("case", list(STRUCTURED_CASES))
def test_records_equal_reference(reference_name, case):
    encoder_seed, settings = STRUCTURED_CASES[case]
    reference, ours = structured_pair(encoder_seed)
    image = blobs_image()
    expected = reference_generators()[reference_name](reference, **settings).generate(image)
    records = SamAutomaticMaskGenerator(ours, **settings).generate(image)
    diff = assert_records_equal(records, expected)
    print(f"\n[{reference_name}, {case}] {len(records)} records equal; score max|diff| = {diff:.3g}")
    assert len(records) >= 5  # the comparison means something
    if settings.get("crop_n_layers"):
        assert len({tuple(r["crop_box"]) for r in records}) > 1  # masks from crops survived


@pytest.mark.parametrize("output_mode", ["uncompressed_rle", "coco_rle"])
def test_output_modes_and_small_region_cleanup_equal_reference(output_mode):
    reference, ours = structured_pair(encoder_seed=6)
    settings = dict(
        points_per_side=8,
        pred_iou_thresh=0.001,
        stability_score_thresh=0.0,
        stability_score_offset=0.02,
        min_mask_region_area=300,
        output_mode=output_mode,
    )
    image = blobs_image()
    image[100:104, 150:154] = 60  # a small hole in the disk
    expected = reference_generators()["mobile_sam"](reference, **settings).generate(image)
    records = SamAutomaticMaskGenerator(ours, **settings).generate(image)
    diff = assert_records_equal(records, expected)
    print(f"\n[{output_mode}, min area 300] {len(records)} records equal; score max|diff| = {diff:.3g}")
    assert len(records) >= 3


@pytest.fixture(scope="module")
def random_vit_t(tmp_path_factory):
    import mobile_sam

    torch.manual_seed(3)
    reference = mobile_sam.sam_model_registry["vit_t"]().eval()
    path = tmp_path_factory.mktemp("amg") / "vit_t.pt"
    torch.save(reference.state_dict(), path)
    return reference, mobilesam.build_sam("vit_t", path, exact=True)


# Random-weight masks all span the image, so NMS is off (1.0) or it would keep one of them.
RANDOM_SETTINGS = dict(
    points_per_side=3,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    stability_score_offset=0.05,
    box_nms_thresh=1.0,
)


def record_embeddings(predictor) -> list:
    """Wrap `predictor.set_image` so that each embedding it computes is also kept in the list."""
    states, set_image = [], predictor.set_image

    def recording_set_image(image):
        set_image(image)
        states.append(EmbeddingState(predictor.features, predictor.original_size, predictor.input_size))

    predictor.set_image = recording_set_image
    return states


def replay_embeddings(generator, states: list) -> None:
    """Make `generator` use the given embeddings, in order, instead of encoding its crops."""
    queue = list(states)
    generator.predictor.set_image = lambda image: generator.predictor.set_embedding(queue.pop(0))


def test_random_vit_t_end_to_end_and_shared_embedding(random_vit_t):
    """Our encoder + decoder against the official ones, and our decoding of the official embedding."""
    import mobile_sam

    reference, ours = random_vit_t
    image = blobs_image(200, 260)
    reference_generator = mobile_sam.SamAutomaticMaskGenerator(reference, **RANDOM_SETTINGS)
    reference_embeddings = record_embeddings(reference_generator.predictor)
    expected = reference_generator.generate(image)
    diff_e2e = assert_records_equal(
        SamAutomaticMaskGenerator(ours, **RANDOM_SETTINGS).generate(image), expected
    )
    shared = SamAutomaticMaskGenerator(ours, **RANDOM_SETTINGS)
    replay_embeddings(shared, reference_embeddings)
    diff_shared = assert_records_equal(shared.generate(image), expected)
    print(
        f"\n[vit_t random] {len(expected)} records equal; score max|diff| end to end = {diff_e2e:.3g}, "
        f"shared embedding = {diff_shared:.3g}"
    )
    assert len(expected) >= 9


def test_random_vit_b_equals_segment_anything():
    """Official ViT-B architecture (at a 256-px input to keep the encoder quick), end to end."""
    from functools import partial

    from segment_anything import SamAutomaticMaskGenerator as ReferenceGenerator
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size = 256
    torch.manual_seed(1)
    reference = Sam(
        image_encoder=ImageEncoderViT(
            depth=12,
            embed_dim=768,
            img_size=size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=12,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(size // 16, size // 16),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        ),
    ).eval()
    ours = mobilesam.build_sam("vit_b", image_size=size, exact=True)
    ours.load_state_dict(reference.state_dict())
    image = blobs_image(160, 120)
    expected = ReferenceGenerator(reference, **RANDOM_SETTINGS).generate(image)
    diff = assert_records_equal(SamAutomaticMaskGenerator(ours, **RANDOM_SETTINGS).generate(image), expected)
    print(f"\n[vit_b random] {len(expected)} records equal; score max|diff| = {diff:.3g}")
    assert len(expected) >= 9


# --- helpers against their official counterparts -------------------------------------------------


def random_boxes(n, rng, ties):
    xy = rng.integers(0, 60, size=(n, 2))
    wh = rng.integers(1, 40, size=(n, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + wh], axis=1))
    scores = torch.as_tensor(rng.integers(0, 5, n) if ties else rng.random(n), dtype=torch.float32)
    return boxes, scores


@pytest.mark.parametrize("n", [0, 1, 300, 1200])  # > 1000 boxes takes torchvision's other code path
@pytest.mark.parametrize("ties", [False, True])
def test_box_nms_equals_torchvision_batched_nms(n, ties):
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(n + ties)
    boxes, scores = random_boxes(n, rng, ties)
    for threshold in (0.3, 0.7, 1 / 3):
        expected = batched_nms(boxes.float(), scores, torch.zeros(n), threshold)
        assert torch.equal(box_nms(boxes, scores, threshold), expected)


def test_masks_to_boxes_and_rle_equal_reference():
    from segment_anything.utils import amg

    rng = np.random.default_rng(0)
    masks = torch.as_tensor(rng.random((6, 17, 23)) > 0.97)
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0] = True
    assert torch.equal(masks_to_boxes(masks), amg.batched_mask_to_box(masks))
    for mask, rle in zip(masks, amg.mask_to_rle_pytorch(masks)):
        assert mask_to_uncompressed_rle(mask.numpy()) == rle
        assert np.array_equal(uncompressed_rle_to_mask(rle), mask.numpy())


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_reference(mode):
    from segment_anything.utils import amg

    rng = np.random.default_rng(1)
    mask = np.zeros((40, 50), bool)
    mask[5:30, 5:40] = True
    mask[10:12, 10:13] = False  # small hole
    mask[35:37, 45:48] = True  # small island
    mask[33, 0] = True  # diagonal neighbours: one 8-connected island
    mask[34, 1] = True
    noisy = mask ^ (rng.random(mask.shape) > 0.98)
    for candidate, area in ((mask, 10), (noisy, 5), (np.zeros_like(mask), 10), (mask, 10_000)):
        ours, changed = remove_small_regions(candidate, area, mode)
        expected, expected_changed = amg.remove_small_regions(candidate, area, mode)
        assert changed == expected_changed and np.array_equal(ours, expected)


# --- outputs ------------------------------------------------------------------------------------


def square_record(y0, x0, size, iou, shape=(30, 40)):
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return {
        "segmentation": mask,
        "area": int(mask.sum()),
        "bbox": [x0, y0, size, size],
        "predicted_iou": iou,
        "point_coords": [[x0 + 0.5, y0 + 0.5]],
        "stability_score": 0.9,
        "crop_box": [0, 0, 40, 30],
    }


def test_label_image_orders_without_overlaps():
    big, small = square_record(0, 0, 20, iou=0.95), square_record(5, 5, 5, iou=0.5)
    by_area = records_to_label_image([small, big], order="area")
    assert by_area.dtype == np.int32 and by_area.shape == (30, 40)
    assert (by_area[5:10, 5:10] == 2).all()  # the smaller mask stays visible on top
    assert (by_area[big["segmentation"] & ~small["segmentation"]] == 1).all()
    assert (by_area[~big["segmentation"]] == 0).all()
    by_score = records_to_label_image([small, big], order="score")
    assert (by_score[big["segmentation"]] == 1).all()  # the better mask wins its overlap
    assert records_to_label_image([], shape=(3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="order"):
        records_to_label_image([big], order="size")


def test_coco_json_round_trips_masks_from_every_output_mode(structured):
    from pycocotools import mask as mask_utils

    _, ours = structured
    image = blobs_image(120, 160)
    records = {
        mode: SamAutomaticMaskGenerator(
            ours, points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0, output_mode=mode
        ).generate(image)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    }
    masks = [r["segmentation"] for r in records["binary_mask"]]
    assert masks and all(m.shape == (120, 160) for m in masks)
    for recs in records.values():
        assert all(np.array_equal(record_mask(r), m) for r, m in zip(recs, masks, strict=True))
        coco = json.loads(json.dumps(records_to_coco_json(recs, image_id=7, file_name="x.png")))
        assert coco["images"] == [{"id": 7, "file_name": "x.png", "height": 120, "width": 160}]
        for ann, mask in zip(coco["annotations"], masks, strict=True):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert ann["area"] == mask.sum() and ann["image_id"] == 7 and ann["category_id"] == 1


def test_progress_and_cancel(structured):
    _, ours = structured
    generator = SamAutomaticMaskGenerator(ours, points_per_side=3, points_per_batch=4, crop_n_layers=1)
    calls = []
    generator.generate(blobs_image(64, 80), progress=lambda done, total: calls.append((done, total)))
    total = 5 + 5 * 3  # 5 crop encodings, 9 points in 3 batches per crop
    assert calls == [(i, total) for i in range(1, total + 1)]

    cancel = threading.Event()

    def cancel_after_two(done, total):
        if done == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        generator.generate(blobs_image(64, 80), progress=cancel_after_two, cancel=cancel)


def test_bad_arguments_are_clear(structured):
    _, ours = structured
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="png")
    with pytest.raises(ValueError, match="uint8 RGB"):
        SamAutomaticMaskGenerator(ours).generate(np.zeros((10, 10), np.float32))


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_everything_writes_labels_and_json(vit_t_checkpoint, tmp_path, capsys):
    image = blobs_image(96, 128)
    image_path = tmp_path / "blobs.tif"
    tifffile.imwrite(image_path, image)
    out, coco_path = tmp_path / "labels.tif", tmp_path / "masks.json"
    settings = [
        "--points-per-side",
        "3",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--box-nms-thresh",
        "0.95",
    ]
    code = main(
        [
            "everything",
            str(image_path),
            "-o",
            str(out),
            "--json",
            str(coco_path),
            "--checkpoint",
            str(vit_t_checkpoint),
            *settings,
        ]
    )
    assert code == 0
    # The CLI's default precision is "auto" (bf16 on CPUs that have it): the same model here.
    model = mobilesam.load_model("vit_t", vit_t_checkpoint, precision="auto")
    records = SamAutomaticMaskGenerator(
        model, points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=0.95
    ).generate(image)
    labels = tifffile.imread(out)
    assert labels.dtype == np.int32
    assert np.array_equal(labels, records_to_label_image(records, shape=(96, 128)))
    coco = json.loads(coco_path.read_text())
    assert len(coco["annotations"]) == len(records) > 0 and coco["images"][0]["file_name"] == "blobs.tif"
    assert f"{len(records)} masks" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blobs.tif",
        "labels.tif",
        "masks.json",
    ]  # no temp files


def test_cli_everything_rejects_bad_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["everything", "sample", "-o", str(tmp_path / "labels.jpg")])
    assert exit_info.value.code == 2
    assert "must end in .tif, .tiff or .png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["everything", "sample", "-o", "x.tif", "--points-per-side", "0"])
    assert not (tmp_path / "labels.jpg").exists()


def test_fast_path_records_equal_reference_with_iou_filtering():
    """The default fast path (only masks passing pred_iou_thresh are upscaled) gives the official
    records; the threshold is set to the median predicted IoU so the filter really rejects masks."""
    encoder_seed, settings = STRUCTURED_CASES["no crops"]
    reference, ours = structured_pair(encoder_seed)
    image = blobs_image()
    everything = SamAutomaticMaskGenerator(ours, **settings).generate(image)
    settings = dict(settings, pred_iou_thresh=float(np.median([r["predicted_iou"] for r in everything])))
    expected = reference_generators()["mobile_sam"](reference, **settings).generate(image)
    ours.set_exact(False)
    records = SamAutomaticMaskGenerator(ours, **settings).generate(image)
    diff = assert_records_equal(records, expected)
    print(
        f"\n[fast path, pred_iou_thresh={settings['pred_iou_thresh']:.3f}] {len(records)} of "
        f"{len(everything)} records equal; score max|diff| = {diff:.3g}"
    )
    assert 3 <= len(records) < len(everything)
