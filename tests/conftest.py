"""Shared fixtures: random-weight checkpoints in the official format (the real weights cannot be
downloaded in CI), written once per test session."""

import numpy as np
import pytest

from mobilesam.testing import save_random_checkpoint


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory):
    """A random-weight vit_t checkpoint in `mobile_sam.pt` format, built by our own code."""
    return save_random_checkpoint(
        tmp_path_factory.mktemp("weights") / "mobile_sam_random.pt", "vit_t", seed=0
    )


@pytest.fixture(scope="session")
def vit_t_model(vit_t_checkpoint):
    import mobilesam

    return mobilesam.build_sam("vit_t", vit_t_checkpoint)


@pytest.fixture
def sample_image():
    """A non-square (H=240, W=320) RGB uint8 image with a bright disk on a gradient."""
    yy, xx = np.mgrid[:240, :320]
    img = np.stack([xx * 0.5, yy * 0.8, (xx + yy) * 0.3], axis=-1)
    img[(yy - 120) ** 2 + (xx - 160) ** 2 < 50**2] = 230
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def small_model():
    """A 256-pixel vit_t with random weights, for tests that export or encode many times (ONNX)."""
    import torch

    import mobilesam

    torch.manual_seed(11)
    return mobilesam.build_sam("vit_t", image_size=256).eval()
