"""`mobilesam napari IMAGE`: the command the napari package adds to the core's CLI (entry point
`mobilesam.commands`), run through `mobilesam.cli.main` as a user's shell would."""

import napari
import numpy as np
import pytest
from PIL import Image

from mobilesam.cli import main


def test_mobilesam_napari_opens_the_image_with_the_dock(make_napari_viewer, tmp_path, monkeypatch):
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "cells.png")
    viewers, event_loops = [], []
    monkeypatch.setattr(napari, "Viewer", lambda: viewers.append(make_napari_viewer()) or viewers[-1])
    monkeypatch.setattr(napari, "run", lambda: event_loops.append(True))

    assert main(["napari", str(tmp_path / "cells.png")]) == 0

    (viewer,) = viewers
    np.testing.assert_array_equal(viewer.layers["cells"].data, image)
    # the dock took the image up: its objects / prompts layers are there, named after it
    assert (
        viewer.layers[0].name == "cells" and "cells prompts" in viewer.layers
    )  # result layers come on first use
    assert list(viewer.window._dock_widgets) == ["MobileSAM (napari-mobilesam)"]
    assert event_loops == [True]


def test_a_missing_image_fails_before_a_window_opens(monkeypatch, capsys):
    monkeypatch.setattr(napari, "Viewer", lambda: pytest.fail("a window opened"))
    assert main(["napari", "no-such-image.png"]) == 1
    assert "no such image: no-such-image.png" in capsys.readouterr().err
