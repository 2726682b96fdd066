"""MobileSAM core: models, predictor, automatic masks, volumes, weights.

Drop-in for segment_anything: `build_sam`, `sam_model_registry`, `SamPredictor`,
`SamAutomaticMaskGenerator`.
"""

import sys
import types

from ._lazy import lazy_attributes

# Attributes load on first use (PEP 562), so `import mobilesam` stays light and the torch-free
# ONNX predictor (`mobilesam.onnx.standalone`) never pulls in torch.
_LAZY = {
    "build_sam": "build_sam",
    "build_sam_vit_b": "build_sam",
    "build_sam_vit_h": "build_sam",
    "build_sam_vit_l": "build_sam",
    "build_sam_vit_t": "build_sam",
    "sam_model_registry": "build_sam",
    "load_model": "build_sam",
    "SamAutomaticMaskGenerator": "automatic_mask_generator",
    "Cancelled": "errors",
    "CheckpointError": "errors",
    "MissingWeightsError": "errors",
    "MobileSamError": "errors",
    "EmbeddingState": "predictor",
    "SamPredictor": "predictor",
    "Prompt": "prompt",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__():
    return sorted([*globals(), *_LAZY])


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # The import system binds every loaded submodule as an attribute of the package; where a
        # submodule is named after the function it defines (build_sam), the function keeps the name.
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


from ._version import __version__ as __version__  # noqa: E402  (re-exported)

__all__ = [
    "build_sam",
    "build_sam_vit_t",
    "build_sam_vit_b",
    "build_sam_vit_l",
    "build_sam_vit_h",
    "sam_model_registry",
    "SamPredictor",
    "EmbeddingState",
    "Prompt",
    "SamAutomaticMaskGenerator",
    "CheckpointError",
    "MissingWeightsError",
    "MobileSamError",
    "Cancelled",
    "load_model",
]
