"""Automatic mask generation: ours vs the official `mobile_sam.SamAutomaticMaskGenerator`.

Same random-weight vit_t weights, same image, same settings, in one process. Both sides encode
the image with the reference encoder's embedding (ours replays it through `EmbeddingState`), so
the comparison times mask generation itself and checks record equality exactly. Prints the
times, the ratio ours/reference (goal: <= 0.3) and whether the records are equal.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592 \\
        .venv/bin/python benchmarks/bench_amg.py [--points-per-side 16] [--size 480x640]
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--size", default="480x640", help="image HxW")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-score-thresh", type=float, default=0.0)
    parser.add_argument("--crop-layers", type=int, default=0)
    args = parser.parse_args()

    import mobile_sam
    from test_amg import assert_records_equal, blobs_image, record_embeddings, replay_embeddings

    import mobilesam

    torch.manual_seed(0)
    reference_model = mobile_sam.sam_model_registry["vit_t"]().eval()
    path = Path("/tmp/bench_amg_vit_t.pt")
    torch.save(reference_model.state_dict(), path)
    our_model = mobilesam.build_sam("vit_t", path)
    height, width = (int(v) for v in args.size.split("x"))
    image = blobs_image(height, width)
    settings = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_layers,
    )

    reference = mobile_sam.SamAutomaticMaskGenerator(reference_model, **settings)
    embeddings = record_embeddings(reference.predictor)
    for crop_image in crops(image, args.crop_layers, reference):  # encode outside the timed runs
        reference.predictor.set_image(crop_image)
    replay_reference = list(embeddings)
    reference.predictor.set_image = lambda _: reference.predictor.set_embedding_(replay_reference.pop(0))
    reference.predictor.set_embedding_ = lambda state: _restore_reference(reference.predictor, state)

    ours = mobilesam.SamAutomaticMaskGenerator(our_model, **settings)
    replay_embeddings(ours, embeddings)

    start = time.perf_counter()
    expected = reference.generate(image)
    reference_s = time.perf_counter() - start
    start = time.perf_counter()
    records = ours.generate(image)
    ours_s = time.perf_counter() - start
    try:
        diff = assert_records_equal(records, expected)
        equal = f"equal ({len(records)} records, score max|diff| {diff:.3g})"
    except AssertionError as exc:
        equal = f"NOT equal: {exc}"
    print(
        f"image {height}x{width}, {args.points_per_side}**2 points, crop layers {args.crop_layers}, "
        f"pred_iou_thresh {args.pred_iou_thresh}, stability_score_thresh {args.stability_score_thresh}"
    )
    print(
        f"reference {reference_s:.2f} s, ours {ours_s:.2f} s, ratio ours/reference {ours_s / reference_s:.3f}"
    )
    print(f"records {equal}")
    return 0


def crops(image, crop_layers, generator):
    from mobilesam.amg_utils import generate_crop_boxes

    boxes, _ = generate_crop_boxes(image.shape[:2], crop_layers, generator.crop_overlap_ratio)
    return [image[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]


def _restore_reference(predictor, state) -> None:
    predictor.reset_image()
    predictor.features = state.features
    predictor.original_size, predictor.input_size = state.original_size, state.input_size
    predictor.is_image_set = True


if __name__ == "__main__":
    sys.exit(main())
