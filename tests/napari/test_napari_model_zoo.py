"""The Model combo offers every model of the core registry, and picking one in the Qt combo is the
model the widget will load."""

from mobilesam.model_zoo import MODEL_TYPES


def test_model_combo_offers_and_accepts_every_registry_name(plugin_widget, qtbot):
    _, widget = plugin_widget
    combo = widget.model_type.native  # the QComboBox the user clicks
    assert [combo.itemText(i) for i in range(combo.count())] == list(MODEL_TYPES)
    for name in ("tinysam", "vit_t_lm", "vit_t_em_organelles", "vit_t"):
        combo.setCurrentIndex(combo.findText(name))
        qtbot.waitUntil(lambda n=name: widget.model_type.value == n, timeout=2000)
        assert widget._wanted_model_key()[0] == name
