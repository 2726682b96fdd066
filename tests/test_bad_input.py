"""Bad input at the core API and the CLI: a clear error naming the problem, never a traceback,
never silent garbage (NaN or None scores, masks from nothing).

Prompts are checked once, in `mobilesam.transforms.model_input_prompts`, which the torch
predictor, the ONNX backend and the torch-free `StandalonePredictor` all call: every bad prompt
is tried on all three. Property-based tests (hypothesis) cover prompt validation and the
coordinate transforms. Models are vit_t built for a 256-pixel input (random weights)."""

import re

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mobilesam
from mobilesam.automatic_mask_generator import MAX_CROP_LAYERS, MAX_POINTS_PER_SIDE
from mobilesam.cli import build_parser, join_negative_values, main
from mobilesam.image import to_rgb_uint8
from mobilesam.io import read_image_with_channel_axis
from mobilesam.transforms import MAX_POINTS_PER_PROMPT, ResizeLongestSide, model_input_prompts

IMAGE_SIZE = 256
LOW_RES = IMAGE_SIZE // 4
NAN, INF = float("nan"), float("inf")
ONE_POINT = {"point_coords": np.array([[60.0, 40.0]]), "point_labels": np.array([1])}


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)
    img[30:90, 40:120] = [220, 180, 40]
    return img


@pytest.fixture(scope="module")
def onnx_dir(small_model, tmp_path_factory):
    from mobilesam.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    export_onnx(small_model, out)
    return out


@pytest.fixture(scope="module", params=["torch", "onnx", "standalone"])
def predictor(request, small_model, image):
    if request.param == "torch":
        predictor = mobilesam.SamPredictor(small_model)
    else:
        onnx_dir = request.getfixturevalue("onnx_dir")
        if request.param == "onnx":
            predictor = mobilesam.SamPredictor(small_model, backend="onnx", onnx_dir=onnx_dir)
        else:
            from mobilesam.onnx import StandalonePredictor

            predictor = StandalonePredictor(onnx_dir)
    predictor.set_image(image)
    return predictor


BAD_PROMPTS = [
    # (prompt arguments, the message must match)
    ({"point_coords": [[NAN, 3.0]], "point_labels": [1]}, r"point_coords .*not finite"),
    ({"point_coords": [[5.0, INF]], "point_labels": [1]}, r"point_coords .*not finite"),
    ({"point_coords": [[5.0, 3.0]], "point_labels": [7]}, r"point_labels must be 1 .*got 7"),
    ({"point_coords": [[5.0, 3.0]], "point_labels": [0.5]}, r"point_labels must be 1 .*got 0.5"),
    ({"point_coords": [[5.0, 3.0]], "point_labels": [NAN]}, r"point_labels .*not finite"),
    ({"point_coords": [["a", "b"]], "point_labels": [1]}, r"point_coords must be numbers"),
    ({"point_coords": [[5.0, 3.0, 1.0]], "point_labels": [1]}, r"point_coords must be \(N, 2\)"),
    ({"point_coords": [[5.0, 3.0]], "point_labels": [1, 0]}, r"point_coords must be \(N, 2\) with N labels"),
    ({"point_coords": [[5.0, 3.0]]}, r"point_labels must be supplied"),
    (
        {
            "point_coords": np.zeros((MAX_POINTS_PER_PROMPT + 1, 2)),
            "point_labels": np.ones(MAX_POINTS_PER_PROMPT + 1),
        },
        rf"point_coords has {MAX_POINTS_PER_PROMPT + 1} points; at most {MAX_POINTS_PER_PROMPT}",
    ),
    (
        {"point_coords": np.zeros((10_000, 2)), "point_labels": np.ones(10_000)},
        r"point_coords has 10000 points",
    ),
    ({"box": [NAN, 0, 10, 10]}, r"box .*not finite"),
    ({"box": [0, 0, INF, 10]}, r"box .*not finite"),
    ({"box": [50, 10, 20, 40]}, r"box \(50, 10, 20, 40\) is inverted"),
    ({"box": [10, 40, 50, 20]}, r"box .* is inverted"),
    ({"box": [1, 2, 3]}, r"box must have 4 numbers"),
    ({**ONE_POINT, "mask_input": np.full((1, LOW_RES, LOW_RES), NAN)}, r"mask_input .*not finite"),
    ({**ONE_POINT, "mask_input": np.full((1, LOW_RES, LOW_RES), -INF)}, r"mask_input .*not finite"),
    ({**ONE_POINT, "mask_input": np.zeros((1, 100, 100))}, rf"mask_input must be \({LOW_RES}, {LOW_RES}\)"),
    ({**ONE_POINT, "mask_input": np.zeros((3, LOW_RES, LOW_RES))}, r"mask_input must be"),
]


@pytest.mark.parametrize(
    "prompt, message", BAD_PROMPTS, ids=[f"{i}-{'-'.join(p)}" for i, (p, _) in enumerate(BAD_PROMPTS)]
)
def test_bad_prompt_is_a_clear_error_naming_the_argument(predictor, prompt, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompt)


def test_good_prompts_still_work_with_finite_scores(predictor):
    _, _, low_res = predictor.predict(**ONE_POINT, multimask_output=False)
    for prompt in (
        ONE_POINT,
        {"box": [40, 30, 120, 90]},
        {"box": [40, 30, 40, 90]},  # zero width is allowed
        {**ONE_POINT, "mask_input": low_res},
        {**ONE_POINT, "mask_input": low_res[0]},
        {"point_coords": [[-10, -10], [500, 500]], "point_labels": [1, -1]},
    ):  # outside: as SAM
        masks, scores, _ = predictor.predict(**prompt)
        assert masks.shape[1:] == (120, 160) and np.isfinite(scores).all()


def test_nan_embedding_is_refused(small_model, image):
    from mobilesam.predictor import EmbeddingState

    state = _embedding(small_model, image)
    features = state.features.clone()
    features[0, 0, 0, 0] = NAN
    with pytest.raises(ValueError, match="embedding has values that are not finite"):
        mobilesam.SamPredictor(small_model).set_embedding(
            EmbeddingState(features, state.original_size, state.input_size)
        )


# ---- property-based: prompt validation and coordinate transforms ------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
sizes = st.integers(1, 5000)


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(st.tuples(floats, floats), min_size=1, max_size=6),
    labels=st.lists(st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 7, 0.5]), min_size=1, max_size=6),
    box=st.one_of(st.none(), st.tuples(floats, floats, floats, floats)),
    height=sizes,
    width=sizes,
)
def test_prompt_validation_accepts_exactly_the_valid_prompts(points, labels, box, height, width):
    """Either a ValueError naming an argument, or finite model-input prompts of the right shapes."""
    points_ok = len(points) == len(labels) and np.isfinite(points).all() and set(labels) <= {-1, 0, 1, 2, 3}
    box_ok = box is None or (np.isfinite(box).all() and box[2] >= box[0] and box[3] >= box[1])
    transform = ResizeLongestSide(IMAGE_SIZE)
    try:
        coords, out_labels, out_box, _ = model_input_prompts(
            transform, (height, width), np.array(points), np.array(labels), box
        )
    except ValueError as exc:
        # Finite numbers so large that scaling them to the model input overflows may be refused.
        overflow = any(
            v is not None and np.isfinite(v).all() and np.abs(v).max() > 1e300 for v in (points, box)
        )
        assert not (points_ok and box_ok) or overflow, f"valid prompt refused: {exc}"
        assert re.match(r"(point_coords|point_labels|box)\b", str(exc)), str(exc)
        return
    assert points_ok and box_ok, "an invalid prompt was accepted"
    assert coords.shape == (1, len(points), 2) and out_labels.shape == (1, len(points))
    assert np.isfinite(coords).all()
    if box is not None:
        assert out_box.shape == (1, 4) and np.isfinite(out_box).all()


@settings(max_examples=300, deadline=None)
@given(
    height=sizes,
    width=st.integers(1, 200_000),
    target=st.sampled_from([64, 256, 1024]),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_coordinate_transform_properties(height, width, target, fx, fy):
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, target)
    assert max(new_h, new_w) == target and min(new_h, new_w) >= 1  # never a 0-pixel side
    transform = ResizeLongestSide(target)
    point = np.array([[fx * width, fy * height]])
    mapped = transform.apply_coords(point, (height, width))
    # Inside the image maps inside the resized image, scaled per axis, and back again exactly.
    assert 0 <= mapped[0, 0] <= new_w * (1 + 1e-9) and 0 <= mapped[0, 1] <= new_h * (1 + 1e-9)
    back = mapped[0] * np.array([width / new_w, height / new_h])
    np.testing.assert_allclose(back, point[0], rtol=1e-9, atol=1e-9)
    box = np.array([0.0, 0.0, fx * width, fy * height])
    np.testing.assert_allclose(
        transform.apply_boxes(box, (height, width))[0],
        transform.apply_coords(box.reshape(2, 2), (height, width)).reshape(4),
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_valid_random_prompts_never_give_nan_scores(small_model, image, data):
    predictor = _predictor_with_embedding(small_model, image)
    n = data.draw(st.integers(1, 8))
    coords = data.draw(st.lists(st.tuples(st.floats(-50, 250), st.floats(-50, 200)), min_size=n, max_size=n))
    labels = data.draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
    _, scores, low_res = predictor.predict(np.array(coords), np.array(labels))
    assert np.isfinite(scores).all() and np.isfinite(low_res).all()


_EMBEDDINGS = {}
_PREDICTORS = {}


def _predictor_with_embedding(model, image):
    if id(model) not in _PREDICTORS:
        _PREDICTORS[id(model)] = mobilesam.SamPredictor(model)
        _PREDICTORS[id(model)].set_embedding(_embedding(model, image))
    return _PREDICTORS[id(model)]


def _embedding(model, image):
    if id(model) not in _EMBEDDINGS:
        predictor = mobilesam.SamPredictor(model)
        predictor.set_image(image)
        _EMBEDDINGS[id(model)] = predictor.get_embedding_state()
    return _EMBEDDINGS[id(model)]


# ---- SamAutomaticMaskGenerator settings --------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            {"points_per_side": 100_000},
            rf"points_per_side must be between 1 and {MAX_POINTS_PER_SIDE}, got 100000",
        ),
        ({"points_per_side": 0}, r"points_per_side must be between 1"),
        ({"points_per_side": 2.5}, r"points_per_side must be an integer"),
        ({"crop_n_layers": 30}, rf"crop_n_layers must be between 0 and {MAX_CROP_LAYERS}, got 30"),
        ({"crop_n_layers": -1}, r"crop_n_layers must be between 0 and .*got -1"),
        ({"crop_n_points_downscale_factor": 0}, r"crop_n_points_downscale_factor must be at least 1, got 0"),
        ({"pred_iou_thresh": NAN}, r"pred_iou_thresh must be a finite number"),
        ({"stability_score_thresh": NAN}, r"stability_score_thresh must be a finite number"),
        ({"stability_score_thresh": 1.5}, r"stability_score_thresh .*at most 1"),
        ({"stability_score_offset": -1.0}, r"stability_score_offset .*at least 0"),
        ({"box_nms_thresh": INF}, r"box_nms_thresh must be a finite number"),
        ({"crop_nms_thresh": -0.1}, r"crop_nms_thresh"),
        ({"crop_overlap_ratio": 2.0}, r"crop_overlap_ratio"),
        ({"min_mask_region_area": NAN}, r"min_mask_region_area"),
        ({"points_per_batch": 0}, r"points_per_batch must be at least 1"),
    ],
)
def test_generator_settings_are_checked_in_the_constructor(small_model, setting, message):
    with pytest.raises(ValueError, match=message):
        mobilesam.SamAutomaticMaskGenerator(small_model, **setting)


# ---- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 10, 3), (10, 0, 3)])
def test_empty_image_is_a_clear_error(small_model, shape):
    with pytest.raises(ValueError, match="image is empty"):
        mobilesam.SamPredictor(small_model).set_image(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match="image is empty"):
        to_rgb_uint8(np.zeros(shape[:2], np.uint16))


@pytest.mark.parametrize("shape", [(1, 3000), (3000, 1), (1, 100_000), (2, 5)])
def test_thin_images_are_segmented(small_model, shape):
    """The short side becomes at least one pixel of the (padded) encoder input."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    predictor = mobilesam.SamPredictor(small_model)
    predictor.set_image(image)
    point = np.array([[shape[1] // 2, shape[0] // 2]])
    masks, scores, _ = predictor.predict(point, np.array([1]))
    assert masks.shape == (3, *shape) and np.isfinite(scores).all()


def test_tiff_channels_follow_the_metadata_else_a_warned_guess(tmp_path):
    rng = np.random.default_rng(2)
    planes = rng.integers(0, 4000, (64, 80, 5), dtype=np.uint16)
    # 5 interleaved channels without metadata (tifffile reads the axes as "QYX"): a guess, said aloud
    tifffile.imwrite(tmp_path / "plain.tif", planes)
    data, axis = read_image_with_channel_axis(tmp_path / "plain.tif")
    assert axis is None and data.shape == (64, 80, 5)
    with pytest.warns(
        UserWarning, match=r"shape \(64, 80, 5\): guessed that axis 2 \(5 entries\) holds the channels"
    ):
        assert to_rgb_uint8(data).shape == (64, 80, 3)
    # ImageJ states channels first: no guess, no warning
    tifffile.imwrite(
        tmp_path / "imagej.tif", np.moveaxis(planes, -1, 0), imagej=True, metadata={"axes": "CYX"}
    )
    data, axis = read_image_with_channel_axis(tmp_path / "imagej.tif")
    assert axis == 0 and data.shape == (5, 64, 80)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb_uint8(data, channel_axis=axis)
    assert rgb.shape == (64, 80, 3)
    np.testing.assert_array_equal(rgb, to_rgb_uint8(planes, channel_axis=-1, value_range=None))
    # RGB samples ("YXS") are channels last
    tifffile.imwrite(
        tmp_path / "rgb.tif", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), photometric="rgb"
    )
    assert read_image_with_channel_axis(tmp_path / "rgb.tif")[1] == 2


def test_cli_reads_a_64x80_image_with_5_channels_as_such(tmp_path, capsys):
    """Plain (64, 80, 5) TIFF: segmented as a 64x80 image with a warned guess (it used to become an
    80x5 image with 64 channels); ImageJ CYX (5, 64, 80): 64x80 from the metadata, no guess."""
    import warnings

    plain, imagej = tmp_path / "plain.tif", tmp_path / "cyx.tif"
    tifffile.imwrite(plain, np.zeros((64, 80, 5), np.uint16))
    tifffile.imwrite(imagej, np.zeros((5, 64, 80), np.uint16), imagej=True, metadata={"axes": "CYX"})
    for path, guessed in ((plain, 1), (imagej, 0)):
        argv = [
            "segment",
            str(path),
            "--point",
            "70,10",
            "-o",
            str(tmp_path / "m.png"),
            "--checkpoint",
            "/none.pt",
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(argv)  # the point is inside: it gets as far as looking for the weights
        assert sum("guessed that axis 2 (5 entries)" in str(w.message) for w in caught) == guessed
        assert code == 1 and "/none.pt, which does not exist" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main([*argv[:3], "70,70", *argv[4:]])
        assert "point (70, 70) is outside the 80x64 image" in capsys.readouterr().err


# ---- CLI: negative coordinates, damaged files, impossible paths -----------------------------------


def test_negative_coordinates_are_values_not_options():
    assert join_negative_values(
        ["segment", "x.png", "--point", "-5,3", "--box", "-5,-5,20,20", "-o", "o.png"]
    ) == ["segment", "x.png", "--point=-5,3", "--box=-5,-5,20,20", "-o", "o.png"]
    args = build_parser().parse_args(
        join_negative_values(
            [
                "segment",
                "x.png",
                "--point",
                "-5,3",
                "--point",
                "-.5,-2,0",
                "--box",
                "-5,-5,20,20",
                "-o",
                "o.png",
            ]
        )
    )
    assert args.point == [(-5.0, 3.0, 1), (-0.5, -2.0, 0)] and args.box == (-5.0, -5.0, 20.0, 20.0)
    with pytest.raises(SystemExit):  # a real option after --point is still an option: "expected one argument"
        build_parser().parse_args(join_negative_values(["segment", "x.png", "--point", "-o", "o.png"]))


def test_cli_negative_point_reports_outside_the_image(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "sample", "--point", "-5,3", "-o", "x.png", "--checkpoint", "/none.pt"])
    assert exit_info.value.code == 2
    assert "point (-5, 3) is outside the 384x303 image" in capsys.readouterr().err


def _volumes(tmp_path):
    """Damaged volumes: (path, what the message must say)."""
    import nibabel as nib

    vol = np.random.default_rng(3).integers(0, 60000, (4, 32, 32)).astype(np.uint16)
    cases = []
    for name, write in [
        ("u.tif", lambda p: tifffile.imwrite(p, vol, imagej=True, metadata={"axes": "ZYX"})),
        ("c.tif", lambda p: tifffile.imwrite(p, vol, compression="zlib")),
        ("n.nii", lambda p: nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), p)),
        ("n.nii.gz", lambda p: nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), p)),
    ]:
        good = tmp_path / f"good_{name}"
        write(good)
        data = good.read_bytes()
        for kind, content in [
            ("truncated", data[: len(data) * 2 // 3]),
            ("garbage", bytes(range(256)) * 40),
            ("empty", b""),
        ]:
            path = tmp_path / f"{kind}_{name}"
            path.write_bytes(content)
            cases.append(path)
    return cases


def test_cli_damaged_volumes_are_one_line_errors(tmp_path, capsys):
    cases = _volumes(tmp_path)
    assert len(cases) == 12
    for path in cases:
        for command in (
            ["volume", str(path), "--prompt", "z=0:point=1,1", "-o", str(tmp_path / "o.tif")],
            ["embed", str(path), "--cache", str(tmp_path / "cache")],
        ):
            code = main([*command, "--checkpoint", "/none.pt"])
            err = capsys.readouterr().err
            assert code == 1, (path, err)
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert f"could not read volume {path}" in err, err
    assert not (tmp_path / "o.tif").exists()


def test_cli_cache_on_a_file_and_output_under_a_file(tmp_path, capsys):
    import nibabel as nib

    stack = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.uint16), np.eye(4)), stack)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    common = ["--prompt", "z=0:point=1,1", "--checkpoint", "/none.pt"]
    assert main(["volume", str(stack), *common, "--cache", str(blocker), "-o", str(tmp_path / "o.tif")]) == 1
    assert f"--cache {blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(["embed", str(stack), "--cache", str(blocker), "--checkpoint", "/none.pt"]) == 1
    assert f"--cache {blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(["volume", str(stack), *common, "-o", str(blocker / "o.tif")]) == 1
    assert (
        f"cannot write output {blocker / 'o.tif'}: {blocker} is a file, not a folder"
        in capsys.readouterr().err
    )
    for command in (["segment", "sample", "--point", "5,5"], ["everything", "sample"]):
        assert main([*command, "-o", str(blocker / "sub" / "m.tif"), "--checkpoint", "/none.pt"]) == 1
        err = capsys.readouterr().err
        assert f"{blocker} is a file, not a folder" in err and err.count("\n") == 1
