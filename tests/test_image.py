"""Preprocessing of scientific images into the RGB uint8 the model needs."""

import numpy as np
import pytest

from mobilesam.image import intensity_range, to_rgb_uint8


def test_uint8_rgb_passes_through_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_grayscale_is_stretched_robustly(dtype):
    img = np.linspace(0, 1000, 40 * 50).reshape(40, 50).astype(dtype)
    img[0, 0] = 60000 if dtype != np.float32 else 1e9  # one hot pixel must not squash the rest
    out = to_rgb_uint8(img)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert out[20, 25, 0] in range(120, 136)  # the middle of the ramp maps to mid-gray
    assert out[-1, -1, 0] == 255 and out[0, 1, 0] == 0  # the 0.5 and 99.5 percentiles clip


def test_channel_first_and_two_channels():
    img = np.zeros((2, 16, 16), np.uint16)
    img[0] = 100
    img[1, :8] = 4000
    out = to_rgb_uint8(img)
    assert out.shape == (16, 16, 3)
    assert (out[..., 2] == 0).all()  # two channels become R and G
    assert out[0, 0, 1] > out[15, 0, 1]


def test_rgba_drops_alpha_and_explicit_range_is_used():
    img = np.full((8, 8, 4), 50, np.uint8)
    assert to_rgb_uint8(img).shape == (8, 8, 3)
    out = to_rgb_uint8(np.full((4, 4), 300, np.uint16), value_range=(0, 600))
    assert (out == 128).all()


def test_nan_pixels_become_zero_but_image_is_kept():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    img[0, :5] = np.nan
    out = to_rgb_uint8(img)
    assert (out[0, :5] == 0).all() and out[9, 9, 0] == 255


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros((2, 3, 4, 5)), "must be 2-D"),
        (np.full((4, 4), np.nan), "no finite values"),
        (np.array([["a", "b"]]), "not numeric"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(image)


def test_absurdly_large_image_is_refused_without_allocating():
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(20000, 20000), strides=(0, 0))
    with pytest.raises(ValueError, match="pixel limit"):
        to_rgb_uint8(huge)


def test_intensity_range_samples_large_arrays():
    data = np.arange(10_000_000, dtype=np.float32)
    lo, hi = intensity_range(data)
    assert lo == pytest.approx(50_000, rel=0.01) and hi == pytest.approx(9_950_000, rel=0.01)
