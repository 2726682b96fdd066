"""Fixtures for the napari plugin tests: the dock widget in a real viewer, and a stand-in predictor
for tests about the UI wiring (exact, predictable masks without running the encoder)."""

import pytest

pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")


@pytest.fixture
def plugin_widget(make_napari_viewer):
    """(viewer, widget): the MobileSAM dock widget opened through napari's plugin machinery."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    return viewer, widget


@pytest.fixture(autouse=True)
def private_cache_folder(tmp_path_factory, monkeypatch):
    """Embeddings of volumes are saved in the cache folder by default: never the user's real one."""
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path_factory.mktemp("mobilesam_home")))


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    """(viewer, widget) in a shown 1366x768 window, the size of a small laptop screen."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    qtbot.wait(20)
    return viewer, widget
