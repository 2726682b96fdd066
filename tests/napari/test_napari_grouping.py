"""Grouping prompts by slice (pure logic, no viewer)."""

import numpy as np

from mobilesam.prompt import Prompt
from napari_mobilesam._prompts import group_prompts


def test_points_and_boxes_are_grouped_per_slice_in_xy_order():
    coords = np.array(
        [[2.2, 10.0, 20.0], [0.6, 5.0, 6.0], [2.0, 11.0, 21.0], [9.0, 1.0, 1.0], [0.0, -3.0, 4.0]]
    )
    labels = np.array([1, 1, 0, 1, 1])
    boxes = [np.array([[1.0, 30.0, 40.0], [1.0, 30.0, 70.0], [1.0, 50.0, 70.0], [1.0, 50.0, 40.0]])]
    grouped = group_prompts(coords, labels, boxes, (5, 40, 60))
    assert grouped.outside == 2  # z = 9 beyond the last slice, y = -3 above the image
    assert set(grouped.by_slice) == {1, 2}
    assert grouped.by_slice[2] == Prompt(((20.0, 10.0), (21.0, 11.0)), (1, 0), None)
    # z 2.2 and 2.0 are slice 2, z 0.6 is slice 1; the box overhanging the image is clipped to it.
    assert grouped.by_slice[1] == Prompt(((6.0, 5.0),), (1,), (40.0, 30.0, 59.0, 39.0))
    coords_xy, point_labels = grouped.by_slice[2].point_arrays()
    np.testing.assert_array_equal(coords_xy, [[20.0, 10.0], [21.0, 11.0]])
    np.testing.assert_array_equal(point_labels, [1, 0])


def test_2d_prompts_are_slice_zero_and_boxes_outside_are_counted():
    grouped = group_prompts(
        np.array([[3.0, 4.0]]), np.array([1]), [np.array([[100.0, 100.0], [120.0, 130.0]])], (20, 30)
    )
    assert grouped.outside == 1
    assert grouped.by_slice == {0: Prompt(((4.0, 3.0),), (1,), None)}
    assert grouped.by_slice[0].box_array() is None
