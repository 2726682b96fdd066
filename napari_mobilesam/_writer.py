"""napari writer for Labels layers that keeps the geometry (File > Save Selected Layers).

The format follows the name: `.tif` (ImageJ), `.ome.tif`, `.nii` / `.nii.gz`, `.zarr` / `.ome.zarr`
(see `mobilesam.volume.segmentation_io`). layer.scale is written as the spacing, layer.translate as
the origin, layer.units as the unit (µm where napari says "pixel"), and a
`layer.metadata["mobilesam"]` sidecar (prompts, model, settings; set by the dock or by the reader)
as `<name>.mobilesam.json` next to the file. Writes are atomic: a failed save leaves the previous
file as it was.
"""

import numpy as np

from mobilesam.errors import MobileSamError


class LabelsNotSaved(MobileSamError):
    """A failed save. Not a ValueError on purpose: napari's save turns a writer's ValueError into
    "not a valid writer" and drops the message, which must reach the user."""


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: returns the written path."""
    from mobilesam.volume import SegmentationFileError, save_segmentation

    if meta.get("multiscale"):
        data = data[0]  # full resolution; the other levels are derived
    sidecar = (meta.get("metadata") or {}).get("mobilesam")
    try:
        save_segmentation(
            path,
            np.asarray(data),
            spacing=meta.get("scale"),
            origin=meta.get("translate"),
            sidecar=sidecar if isinstance(sidecar, dict) else None,
            unit=length_unit(meta.get("units")),
        )
    except SegmentationFileError as exc:
        raise LabelsNotSaved(str(exc)) from None
    return [path]


def length_unit(units) -> str | None:
    """The layer's x unit as text ('micrometer'); None for napari's default 'pixel' (saved as µm)."""
    if units is None:
        return None
    last = units[-1] if isinstance(units, (list, tuple)) else units
    return None if str(last) == "pixel" else str(last)
