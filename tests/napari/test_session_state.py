"""`_session.py` without a viewer: each image's state is its own, and masks come from its own embedding."""

import numpy as np
from standins import ContentPredictor, bright_image, disk

from napari_mobilesam._layers import ImageInfo
from napari_mobilesam._prompts import group_prompts
from napari_mobilesam._segmenter import ImageSegmenter
from napari_mobilesam._session import SegmenterKey, Sessions, next_candidate


def _grouped(points_yx, shape, boxes=()):
    coords = np.array(points_yx, dtype=float).reshape(-1, 2)
    return group_prompts(coords, np.ones(len(coords), np.int64), [np.array(b, float) for b in boxes], shape)


def _segmenter(predictor, data):
    info = ImageInfo(data.shape, None, (0, 1))
    segmenter = ImageSegmenter(predictor, data, info)
    segmenter.compute_embeddings([0])
    return segmenter, info


def test_each_image_decodes_from_its_own_embedding_and_keeps_its_state():
    predictor = ContentPredictor()  # one predictor shared by both images, as in the widget
    a, b = bright_image((40, 50), 1), bright_image((40, 50), 2)
    sessions = Sessions()
    session_a, session_b = sessions.get(a, lambda: "a"), sessions.get(b, lambda: "b")
    assert sessions.get(a) is session_a and len(sessions) == 2
    for session, data in ((session_a, a), (session_b, b)):
        segmenter, info = _segmenter(predictor, data)
        key = SegmenterKey(("vit_t", "", "torch"), info, None)
        session.use_segmenter(segmenter, key, data)
        assert session.segmenter_for(key, data) is segmenter
        assert session.segmenter_for(key, data.copy()) is None  # other data: never these embeddings
    grouped = _grouped([[20.0, 25.0]], (40, 50))
    # b was encoded last; a's mask must still come from a's embedding.
    shown_a = session_a.segment(grouped, "best")[0]
    shown_b = session_b.segment(grouped, "best")[0]
    np.testing.assert_array_equal(shown_a > 0, disk((40, 50), (20, 25), 5) & (a > 127))
    np.testing.assert_array_equal(shown_b > 0, disk((40, 50), (20, 25), 5) & (b > 127))
    assert session_a.changed_slices(grouped) == []  # nothing to decode again

    objects = np.zeros((40, 50), np.int32)
    assert session_a.commit(shown_a, objects, grouped) == [1]
    assert session_a.committed_with_prompts(objects) == [1] and session_b.object_prompts == {}
    session_a.point_label = "negative"
    session_a.commit(shown_a, np.zeros_like(objects), grouped)
    assert session_a.point_label == "positive"
    assert sessions.drop(a) is session_a and a not in sessions and b in sessions


def test_extra_boxes_are_objects_of_their_own():
    predictor = ContentPredictor()
    data = np.full((40, 50), 200, np.uint8)
    segmenter, info = _segmenter(predictor, data)
    session = Sessions().get(data)
    session.use_segmenter(segmenter, SegmenterKey("m", info, None), data)
    grouped = _grouped([], (40, 50), boxes=[[[2, 3], [10, 12]], [[20, 30], [30, 45]]])
    labels = session.segment(grouped, "best")[0]
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[25, 35] == 1 and labels[5, 5] == 2  # the last box goes with the points
    objects = np.zeros((40, 50), np.int32)
    assert session.commit(labels, objects, grouped) == [1, 2]


def test_candidate_cycle_returns_to_best():
    seen = ["best"]
    for _ in range(4):
        seen.append(next_candidate(seen[-1]))
    assert seen == ["best", "1", "2", "3", "best"]


def test_commit_writes_only_the_object_box_with_ids_after_the_whole_layer():
    """The commit works on the current object's bounding box, yet new ids follow the largest id of
    the whole layer and committed objects (inside or outside the box) are never overwritten."""
    session = Sessions().get(object(), lambda: "image")
    objects = np.zeros((60, 80), np.int32)
    objects[50:55, 70:75] = 9  # far outside the object's box: sets the next id
    objects[12:15, 12:15] = 4  # inside the box: kept
    current = np.zeros((60, 80), np.uint8)
    current[10:20, 10:20] = 1
    current[30:32, 5:7] = 2  # an extra box's object
    before = objects.copy()
    assert session.commit(current, objects, _grouped([(15, 15)], (60, 80))) == [10, 11]
    assert (objects[50:55, 70:75] == 9).all() and (objects[12:15, 12:15] == 4).all()
    assert np.array_equal(objects == 10, (current == 1) & (before == 0))
    assert np.array_equal(objects == 11, current == 2)
    assert session.commit(np.zeros_like(current), objects, _grouped([], (60, 80))) == []
