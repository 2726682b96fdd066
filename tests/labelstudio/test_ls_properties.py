"""Property-based tests (hypothesis) of what the backend writes and reads: brush RLE and polygon
round trips, and label-config parsing (issue 13)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from ls_requests import CONFIG_BRUSH, CONFIG_POLYGON, decode_brush

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _target(config):
    from labelstudio_backend.label_config import parse_label_config

    return parse_label_config(config).target(None)


@FAST
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 32))))
def test_brush_rle_round_trip(mask):
    """Any mask, including empty, full and one-pixel ones, comes back exactly from its RLE."""
    from labelstudio_backend.results import brush_result

    item = brush_result(mask, _target(CONFIG_BRUSH), "Object")
    assert (item["original_height"], item["original_width"]) == mask.shape
    assert all(isinstance(v, int) for v in item["value"]["rle"])
    np.testing.assert_array_equal(decode_brush(item), mask)


def _rasterize(item):
    """The pixels (centres) inside a polygonlabels item, as Label Studio would fill it."""
    from skimage.draw import polygon2mask

    height, width = item["original_height"], item["original_width"]
    points = np.asarray(item["value"]["points"], dtype=np.float64)
    rows = points[:, 1] / 100 * height - 0.5
    cols = points[:, 0] / 100 * width - 0.5
    return polygon2mask((height, width), np.stack([rows, cols], axis=1))


@st.composite
def blob_masks(draw):
    """1-3 disjoint filled ellipses or rectangles (at least 4 px across) on an image up to 64 x 64."""
    height, width = draw(st.integers(16, 64)), draw(st.integers(16, 64))
    mask = np.zeros((height, width), bool)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(draw(st.integers(1, 3))):
        h, w = draw(st.integers(4, height // 2)), draw(st.integers(4, width // 2))
        top, left = draw(st.integers(0, height - h)), draw(st.integers(0, width - w))
        if draw(st.booleans()):
            shape = np.zeros_like(mask)
            shape[top : top + h, left : left + w] = True
        else:
            cy, cx = top + (h - 1) / 2, left + (w - 1) / 2
            shape = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        mask |= shape
    return mask


@FAST
@given(blob_masks(), st.sampled_from([0.5, 1.0, 2.0]))
def test_polygon_round_trip(mask, tolerance):
    """Polygons lie inside the image (percent 0..100), one per connected component, and filled they give
    back the mask (holes filled: Label Studio polygons have none) except within the simplification
    tolerance + 1 pixel of its outline."""
    from scipy import ndimage
    from skimage.measure import label as label_components

    from labelstudio_backend.results import polygon_results

    items = polygon_results(mask, _target(CONFIG_POLYGON), "Object", tolerance=tolerance)
    assert len(items) == label_components(mask, connectivity=2).max()
    filled = np.zeros_like(mask)
    for item in items:
        points = np.asarray(item["value"]["points"])
        assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
        assert np.isfinite(points).all() and (points >= 0).all() and (points <= 100).all()
        assert item["type"] == "polygonlabels" and item["value"]["polygonlabels"] == ["Object"]
        filled |= _rasterize(item)
    expected = ndimage.binary_fill_holes(mask)
    outline = expected ^ ndimage.binary_erosion(expected)
    distance = ndimage.distance_transform_edt(~outline)
    wrong = filled ^ expected
    assert not wrong.any() or distance[wrong].max() <= tolerance + 1, distance[wrong].max()
    assert (filled & expected).sum() >= 0.5 * expected.sum()


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12).filter(
    lambda s: s[0].isalpha()
)
LABEL = (
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghij-", min_size=1, max_size=10)
    .map(str.strip)
    .filter(bool)
)


@FAST
@given(
    image=NAME,
    key=NAME,
    output=NAME,
    smart=NAME,
    kind=st.sampled_from(["BrushLabels", "PolygonLabels", None]),
    labels=st.lists(LABEL, min_size=1, max_size=4, unique=True),
    extra_text=st.booleans(),
)
def test_label_config_parsing(image, key, output, smart, kind, labels, extra_text):
    """Generated configs give the right Image name, data key, output control and labels, or an
    UnsupportedConfig naming what is missing; never another exception."""
    from labelstudio_backend.errors import UnsupportedConfig
    from labelstudio_backend.label_config import parse_label_config

    if len({image, output, smart, "txt"}) < 4:
        return  # names of tags must differ
    label_tags = "".join(f'<Label value="{label}"/>' for label in labels)
    parts = [
        f'<Image name="{image}" value="${key}"/>',
        f'<KeyPointLabels name="{smart}" toName="{image}" smart="true">{label_tags}</KeyPointLabels>',
    ]
    if kind:
        parts.append(f'<{kind} name="{output}" toName="{image}">{label_tags}</{kind}>')
    if extra_text:
        parts.insert(0, '<Text name="txt" value="$text"/>')
    config = "<View>" + "".join(parts) + "</View>"
    parsed = parse_label_config(config)
    if kind is None:
        with pytest.raises(UnsupportedConfig, match="no <BrushLabels> or <PolygonLabels>"):
            parsed.target(None)
        return
    target = parsed.target(None)
    assert (target.to_name, target.data_key, target.from_name) == (image, key, output)
    assert target.result_type == kind.lower() and target.labels == tuple(labels)
    with pytest.raises(UnsupportedConfig, match="not an <Image> tag"):
        parsed.target(image + "_other")


@FAST
@given(st.one_of(st.text(max_size=200), st.text(alphabet="<>/=\"' abcdefgViewImagename$", max_size=200)))
def test_label_config_garbage_is_a_clear_error(config):
    from labelstudio_backend.errors import UnsupportedConfig
    from labelstudio_backend.label_config import parse_label_config

    try:
        parse_label_config(config).target(None)
    except UnsupportedConfig as exc:
        assert str(exc)
