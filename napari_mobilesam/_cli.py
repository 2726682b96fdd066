"""`mobilesam napari [IMAGE ...]`: napari with the MobileSAM dock open and the images loaded.

Registered into the core's CLI through the `mobilesam.commands` entry-point group (pyproject.toml);
napari is imported only when the command runs, so `mobilesam --help` never needs a GUI.
"""

import argparse
from pathlib import Path

from mobilesam.errors import MobileSamError

PLUGIN_NAME = "napari-mobilesam"  # napari.yaml `name`
WIDGET_NAME = "MobileSAM"  # napari.yaml widget `display_name`


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "napari",
        help="open napari with the MobileSAM dock",
        description="Open napari with the MobileSAM segmentation dock and the given images "
        "(whatever napari reads, plus NIfTI volumes).",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to open")
    p.set_defaults(func=run)


def open_viewer(images: list[str]):
    """A napari viewer with `images` open and the MobileSAM dock; returns (viewer, dock widget)."""
    import napari

    viewer = napari.Viewer()
    for image in images:
        viewer.open(image)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    return viewer, widget


def run(args: argparse.Namespace) -> int:
    for image in args.images:  # before a window opens, not as a dialog after
        if not Path(image).exists():
            raise FileNotFoundError(f"no such image: {image}")
    try:
        import napari
    except ModuleNotFoundError as exc:
        raise MobileSamError(
            f"the napari plugin needs {exc.name!r}: pip install 'napari-mobilesam[napari]'"
        ) from None
    open_viewer(args.images)
    napari.run()
    return 0
