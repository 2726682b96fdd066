"""Segment everything, coarse to fine (`SamAutomaticMaskGenerator(coarse_to_fine=True)`): fewer
decoded points, the same records format, nearly the full grid's objects. Runs on the stand-in
model of tests/test_amg.py, whose masks follow the colour regions of its test image."""

import numpy as np
import pytest
from test_amg import STRUCTURED_CASES, blobs_image, structured_pair

from mobilesam import SamAutomaticMaskGenerator
from mobilesam.amg_utils import build_all_layer_point_grids
from mobilesam.automatic_mask_generator import grid_levels

SETTINGS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.01, stability_score_offset=0.02)


@pytest.fixture(scope="module")
def stand_in():
    _, ours = structured_pair(encoder_seed=STRUCTURED_CASES["no crops"][0])
    return ours.set_exact(False)


def _recall(full, fast, min_iou):
    a = np.stack([r["segmentation"].ravel() for r in full]).astype(np.float32)
    b = np.stack([r["segmentation"].ravel() for r in fast]).astype(np.float32)
    inter = a @ b.T
    return float(((inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter)).max(1) >= min_iou).mean())


def test_grid_levels_split_a_regular_grid():
    grid = build_all_layer_point_grids(32, 0, 1)[0]
    levels, ix, iy = grid_levels(grid)
    assert np.bincount(levels).tolist() == [64, 256, 704]
    coarse = grid[levels == 0]
    assert np.allclose(np.unique(coarse[:, 0]), (np.arange(2, 32, 4) + 0.5) / 32)  # every 4th, centred
    assert (ix.max(), iy.max()) == (31, 31)


def test_coarse_to_fine_finds_the_full_grids_objects_with_fewer_points(stand_in):
    image = blobs_image()
    full = SamAutomaticMaskGenerator(stand_in, points_per_side=16, **SETTINGS)
    fast = SamAutomaticMaskGenerator(stand_in, points_per_side=16, coarse_to_fine=True, **SETTINGS)
    calls = []
    expected = full.generate(image)
    got = fast.generate(image, progress=lambda done, total: calls.append((done, total)))
    print(
        f"full grid: {full.decoded_points} points, {len(expected)} records; coarse to fine: "
        f"{fast.decoded_points} points, {len(got)} records, recall@0.5 {_recall(expected, got, 0.5):.3f}"
    )
    assert full.decoded_points == 256 and fast.decoded_points < 256 / 2
    assert len(expected) >= 3 and got
    assert _recall(expected, got, 0.5) >= 0.95
    assert [set(r) for r in got] == [set(expected[0])] * len(got)  # the same records format
    assert all(r["segmentation"].shape == image.shape[:2] for r in got)
    assert calls[-1] == (calls[-1][1], calls[-1][1])  # progress ends at its total


def test_coarse_to_fine_with_crops_and_nothing_confident(stand_in):
    image = blobs_image(120, 160)
    crops = SamAutomaticMaskGenerator(
        stand_in, points_per_side=8, crop_n_layers=1, coarse_to_fine=True, **SETTINGS
    )
    assert crops.generate(image) and crops.decoded_points < 5 * 64
    # Nothing passes SAM's default thresholds on the stand-in: no records, and uniform regions
    # are not refined point by point.
    strict = SamAutomaticMaskGenerator(stand_in, points_per_side=16, coarse_to_fine=True)
    assert strict.generate(image) == [] and strict.decoded_points < 256
