"""The plugin's keys as napari actions, so they are listed in Preferences ▸ Shortcuts
("Viewer key bindings", each described as "MobileSAM: ...") like napari's own.

Actions are registered once per process on the viewer class; each one runs the MobileSAM widget of
the viewer the key was pressed in (a viewer without the widget ignores it). A shortcut the user
sets in Preferences is the one the widget binds (`current_shortcut`), on the viewer and on every
layer, so the active layer's own keymap never swallows it.
"""

import weakref
from collections.abc import Callable

from napari.components import ViewerModel
from napari.utils.action_manager import action_manager

from ._sections import KEY_TABLE, KEYS

_widgets: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # viewer -> its MobileSAM widget


def action_name(name: str) -> str:
    return f"napari_mobilesam:{name}"


def register_actions(viewer, widget) -> None:
    """Register the plugin's actions (once) and route them, for `viewer`, to `widget`; a key
    changed in Preferences is re-bound at once (`widget.rebind_keys()`)."""
    if not _widgets and not getattr(register_actions, "connected", False):
        action_manager.events.shortcut_changed.connect(_on_shortcut_changed)
        register_actions.connected = True
    _widgets[viewer] = widget
    for name, text in KEY_TABLE:
        full = action_name(name)
        if full in action_manager._actions:
            continue
        action_manager.register_action(full, _dispatch(name), f"MobileSAM: {text}", ViewerModel)
        if not action_manager._shortcuts.get(full):
            action_manager.bind_shortcut(full, KEYS[name])


def current_shortcut(name: str) -> str:
    """The key of action `name`: the user's choice in Preferences, else the plugin's default."""
    shortcuts = list(action_manager._shortcuts.get(action_name(name), ()))
    return str(shortcuts[0]) if shortcuts else KEYS[name]


def _dispatch(name: str) -> Callable:
    def run(viewer: ViewerModel) -> None:
        widget = _widgets.get(viewer)
        if widget is not None:
            widget.key_actions()[name]()

    run.__name__ = f"mobilesam_{name}"
    return run


def _on_shortcut_changed(event) -> None:
    if str(getattr(event, "name", "")).startswith("napari_mobilesam:"):
        for widget in list(_widgets.values()):
            widget.rebind_keys()
