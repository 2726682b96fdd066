"""`mobilesam.Prompt`: the one type for one object's prompts on one plane, and its validation,
shared by the napari plugin, the Label Studio backend, the CLI and the volume code."""

import numpy as np
import pytest

from mobilesam import Prompt
from mobilesam.volume import SlicePrompt


def test_arrays_and_sequences_give_equal_hashable_prompts():
    a = Prompt(np.array([[3, 4.5]]), np.array([1]), np.array([1, 2, 30, 40]))
    b = Prompt([(3.0, 4.5)], [1], (1, 2, 30, 40))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.points == ((3.0, 4.5),) and a.labels == (1,) and a.box == (1.0, 2.0, 30.0, 40.0)
    assert Prompt([(3, 4.5)]) == Prompt([(3, 4.5)], [1])  # points without labels are on the object
    assert Prompt([(3, 4.5)], [0]) != b


def test_predict_kwargs_are_what_the_predictor_takes():
    kwargs = Prompt([(3, 4), (5, 6)], [1, 0], mask=np.zeros((8, 8))).predict_kwargs()
    assert kwargs["point_coords"].dtype == np.float64 and kwargs["point_coords"].shape == (2, 2)
    assert kwargs["point_labels"].tolist() == [1, 0] and kwargs["box"] is None
    assert kwargs["mask_input"].shape == (1, 8, 8)
    assert Prompt(box=(0, 0, 2, 2)).predict_kwargs()["point_coords"] is None
    assert Prompt([(1, 1)]).multimask and not Prompt([(1, 1)], box=(0, 0, 2, 2)).multimask


def test_scaling_maps_percent_to_pixels():
    scaled = Prompt([(50, 25)], [1], (10, 20, 30, 40)).scaled(2.0, 4.0)
    assert scaled.points == ((100.0, 100.0),) and scaled.box == (20.0, 80.0, 60.0, 160.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points=[(1, np.nan)]), "points has values that are not finite"),
        (dict(points=[(1, 2, 3)]), r"points must be \(N, 2\)"),
        (dict(points=[(1, 2)], labels=[1, 0]), "1 points but 2 labels"),
        (dict(points=[(1, 2)], labels=[2]), r"labels must be 1 \(object\) or 0 \(background\), got 2"),
        (dict(box=(5, 0, 1, 3)), r"box \(5, 0, 1, 3\) is inverted"),
        (dict(box=(0, 0, 1)), "box must have 4 numbers"),
        (dict(box=(0, 0, np.inf, 1)), "box has values that are not finite"),
        (dict(mask=np.full((4, 4), np.nan)), "mask has values that are not finite"),
        (dict(mask=np.zeros((2, 4, 4))), r"mask must be \(1, h, w\)"),
        (dict(points=np.zeros((300, 2))), "at most 256"),
    ],
)
def test_bad_prompts_are_refused_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Prompt(**kwargs)


def test_slice_prompt_is_a_prompt_on_a_slice():
    prompt = Prompt([(3, 4)], [1], (1, 1, 9, 9))
    on_slice = SlicePrompt.from_prompt(7, prompt)
    assert on_slice.z == 7 and on_slice.prompt == prompt
    with pytest.raises(ValueError, match="slice 2: points has values that are not finite"):
        SlicePrompt(2, points=[[np.nan, 1]])


def test_label_studio_click_scales_to_the_core_prompt():
    from labelstudio_backend.prompts import parse_context

    context = {
        "result": [
            {
                "id": "k1",
                "type": "keypointlabels",
                "original_width": 200,
                "original_height": 100,
                "value": {"x": 50, "y": 20, "width": 1, "keypointlabels": ["cat"]},
            }
        ]
    }
    click = parse_context(context)
    assert click.pixel_prompt(100, 200) == Prompt([(100.0, 20.0)], [1])
