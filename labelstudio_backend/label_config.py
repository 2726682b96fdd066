"""Which tags of a project's label config the backend reads prompts from and writes masks to.

Parsing is label-studio-sdk's `LabelInterface`; this module only picks, for an Image tag, the
BrushLabels (or PolygonLabels) control whose results Label Studio will show on it.
"""

import functools
from dataclasses import dataclass

from .errors import UnsupportedConfig

OUTPUT_TAGS = {"brush": ("BrushLabels", "brushlabels"), "polygon": ("PolygonLabels", "polygonlabels")}


@dataclass(frozen=True)
class OutputTarget:
    """Where a mask for the Image tag `to_name` goes.

    data_key: the task data field holding the image URL (`$image` -> "image").
    from_name / result_type / labels: the output control, e.g. ("brush", "brushlabels", ("Object",)).
    """

    to_name: str
    data_key: str
    from_name: str
    result_type: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ParsedConfig:
    images: dict  # Image tag name -> data key
    outputs: dict  # Image tag name -> {"brush": (name, labels), "polygon": (name, labels)}

    def target(self, to_name: str | None, mode: str = "auto") -> OutputTarget:
        """The output for prompts on `to_name` (None: the only/first Image tag).

        mode "brush" / "polygon" prefers that kind and falls back to the other; "auto" prefers brush.
        Raises UnsupportedConfig naming what is missing.
        """
        if not self.images:
            raise UnsupportedConfig("the label config has no <Image> tag; MobileSAM segments images only")
        if to_name is None:
            to_name = next(iter(self.images))
        if to_name not in self.images:
            raise UnsupportedConfig(
                f"the prompt targets {to_name!r}, which is not an <Image> tag of the label "
                f"config (Image tags: {', '.join(self.images)})"
            )
        available = self.outputs.get(to_name, {})
        order = ("polygon", "brush") if mode == "polygon" else ("brush", "polygon")
        for kind in order:
            if kind in available:
                from_name, labels = available[kind]
                return OutputTarget(to_name, self.images[to_name], from_name, OUTPUT_TAGS[kind][1], labels)
        raise UnsupportedConfig(
            f'the label config has no <BrushLabels> or <PolygonLabels> with toName="{to_name}" '
            'to hold MobileSAM\'s masks; add one (e.g. <BrushLabels name="mask" '
            f'toName="{to_name}"> with the same labels as the smart tools)'
        )


@functools.lru_cache(maxsize=32)
def parse_label_config(config: str) -> ParsedConfig:
    """Parse a label config (cached: Label Studio sends the same one with every request)."""
    from label_studio_sdk.label_interface import LabelInterface

    if not config or not config.strip():
        raise UnsupportedConfig("the label config is empty")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # noqa: BLE001 - the SDK raises plain Exception subclasses for bad XML
        raise UnsupportedConfig(f"the label config is not valid: {exc}") from None
    images = {}
    for obj in interface.objects:
        value = obj.value or ""
        if obj.tag == "Image" and value.startswith("$"):
            images[obj.name] = value[1:]
    outputs: dict = {}
    for control in interface.controls:
        for kind, (tag, _) in OUTPUT_TAGS.items():
            if control.tag == tag:
                for to_name in control.to_name:
                    outputs.setdefault(to_name, {}).setdefault(
                        kind, (control.name, tuple(control.labels or ()))
                    )
    return ParsedConfig(images, outputs)
