"""Write docs/screenshot.png: napari with the MobileSAM widget and a segmented object.

Usage (needs a display; on a headless machine use a virtual one):
    xvfb-run -a .venv/bin/python scripts/napari_screenshot.py [--out docs/screenshot.png]

Uses the official vit_t weights when they are already on this machine (MOBILESAM_CHECKPOINT or
the cache folder; nothing is downloaded), otherwise random weights, and says which on the canvas,
so the picture never passes random-weight masks off as real ones.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _checkpoint(tmp: Path) -> tuple[str, str]:
    from mobilesam.errors import MissingWeightsError
    from mobilesam.testing import save_random_checkpoint
    from mobilesam.weights import resolve_checkpoint

    try:
        return str(resolve_checkpoint("vit_t", allow_download=False)), "official vit_t weights"
    except MissingWeightsError:
        return str(save_random_checkpoint(tmp / "random_vit_t.pt", "vit_t", seed=0)), "random weights"


def _wait(app, widget, timeout=300.0) -> None:
    start = time.monotonic()
    while widget.busy:
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("segmentation did not finish")
    for _ in range(20):
        app.processEvents()


def _close_toasts(viewer) -> None:
    """Close notification pop-ups (e.g. napari's Qt-binding notices) so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"))
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mobilesam._sample_data import cell_2d

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, weights = _checkpoint(Path(tmp))
        viewer = napari.Viewer(title=f"napari-mobilesam ({weights})")
        viewer.window._qt_window.resize(1400, 850)
        _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
        widget.checkpoint.value = checkpoint
        data, meta, _ = cell_2d()[0]
        viewer.add_image(data, **meta)
        app = QApplication.instance()
        for _ in range(20):
            app.processEvents()

        points = viewer.layers["cell prompts"]
        # One object committed, then a second one in progress with a positive and a negative point.
        points.add(np.array([[330.0, 280.0]]))
        _wait(app, widget)
        widget.commit()
        points.add(np.array([[150.0, 150.0]]))
        _wait(app, widget)
        widget.toggle_point_label()
        points.add(np.array([[180.0, 120.0]]))
        _wait(app, widget)

        viewer.text_overlay.visible = True
        viewer.text_overlay.text = f"MobileSAM with {weights}" + (
            " (masks are meaningless)" if weights == "random weights" else ""
        )
        _close_toasts(viewer)
        for _ in range(20):
            app.processEvents()

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.stem + ".part.png")
        viewer.screenshot(str(partial), canvas_only=False)
        partial.replace(out)  # never leave a half-written picture behind
        print(f"wrote {out} ({weights})")
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
