"""Large 2-D images in napari: prompts decoded through the core's tiling (`mobilesam.tiling`).

Above `DEFAULT_TILE_ABOVE` pixels on the long side (and while "Tile large images" is on in the
dock) a 2-D image is not shrunk into one 1024 px embedding: it is cut into tiles
(`TiledEmbeddings`), a tile is encoded only when a prompt first needs it (in the background
worker, with progress and Cancel), and `TiledPredictor` returns the object's mask for its
bounding region only, which is pasted into the current-object layer. Nothing image-sized is
allocated per click. Multiscale layers are tiled on level 0, read lazily region by region.
*Segment everything* on such an image runs the core's `segment_everything_tiled` over the same
tile embeddings (tiles already clicked in are not encoded again, new ones are kept for clicks).

No model logic here: the core's `TiledEmbeddings`/`TiledPredictor` do the work; this module turns
the dock's settings into them and paints their regions.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilesam.prompt import Prompt
from mobilesam.tiling import (
    LazyImage,
    RegionMask,
    TiledEmbeddings,
    TiledPredictor,
    open_image,
    segment_everything_tiled,
)
from mobilesam.tiling.grid import DEFAULT_HALO, DEFAULT_TILE_SHAPE, TileGrid

from ._layers import ImageInfo
from ._prompts import GroupedPrompts
from ._session import ImageSession, SegmenterKey
from ._tasks import BackgroundTask, cancel_checks_inside

DEFAULT_TILE_ABOVE = 2048  # long side (pixels) above which 2-D images are tiled


@dataclass(frozen=True)
class Tiling:
    """tile_shape: interior side in pixels; halo: context per side (tile_shape + 2 halo is encoded)."""

    tile_shape: int = DEFAULT_TILE_SHAPE
    halo: int = DEFAULT_HALO


def level0(layer):
    """The layer's full-resolution array: level 0 of a multiscale layer (not loaded), else its data."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def tiling_for(
    info: ImageInfo, enabled: bool, tile_shape: int, threshold: int = DEFAULT_TILE_ABOVE
) -> Tiling | None:
    """The tiling to use for an image, or None for the ordinary (whole-image) path."""
    if not enabled or info.is_volume or max(info.spatial_shape) <= threshold:
        return None
    return Tiling(int(tile_shape), DEFAULT_HALO)


def describe_tiling(
    info: ImageInfo | None, tiling: Tiling | None, enabled: bool, threshold: int = DEFAULT_TILE_ABOVE
) -> str:
    """The dock's one-line answer to "is this image tiled, and how"."""
    if info is None or info.is_volume:
        return "-"
    height, width = info.spatial_shape
    if tiling is not None:
        return (
            f"Tiled: {tiling.tile_shape} px tiles + {tiling.halo} halo "
            f"(image {width} x {height}; tiles encoded where you click)"
        )
    if max(height, width) > threshold:
        return f"off: the {width} x {height} image is shrunk to 1024 px for one embedding"
    return f"not needed ({width} x {height} is at most {threshold} px)"


class TiledSegmenter:
    """The plugin's handle on one tiled 2-D image: lazily encoded tiles, one region mask per prompt.

    data: the (H, W) or (H, W, C) array as napari holds it (numpy, dask, zarr; multiscale: level 0).
    """

    is_volume = False
    is_tiled = True

    def __init__(
        self, predictor, data, info: ImageInfo, tiling: Tiling, cache_dir=None, model_id: str | None = None
    ) -> None:
        self.predictor = predictor
        self.info = info
        self.tiling = tiling
        image = LazyImage(data, channel_axis=info.channel_axis)
        self.embeddings = TiledEmbeddings(
            image, predictor, tiling.tile_shape, tiling.halo, cache_dir=cache_dir, model_id=model_id
        )
        self.tiled = TiledPredictor(self.embeddings)
        self.pasted: list[tuple[int, int, int, int]] = []  # (y0, x0, y1, x1) regions painted in the layer

    def has_embedding(self, z: int) -> bool:
        return True  # tiles are encoded on demand by `segment`

    def start_tiles(self, prompt: Prompt) -> list[int]:
        """Tiles a prompt is decoded in first (encoded up front, so that the progress bar shows it)."""
        grid = self.embeddings.grid
        box = prompt.box_array()
        if box is not None:
            return [t.index for t in grid.tiles_in_box((box[1], box[0], box[3], box[2]))]
        coords, labels = prompt.point_arrays()
        if coords is None:
            return []
        return sorted({grid.tile_at(y, x).index for (x, y), label in zip(coords, labels) if label == 1})

    def segment(self, prompts: list[Prompt], progress=None, cancel=None) -> list[RegionMask]:
        """Region masks of each prompt's object (worker thread): tiles encoded as needed."""
        needed = sorted({t for prompt in prompts for t in self.start_tiles(prompt)})
        self.embeddings.embed_all(needed, progress=progress, cancel=cancel)
        regions = []
        for prompt in prompts:
            coords, labels = prompt.point_arrays()
            regions.append(self.tiled.predict(coords, labels, prompt.box_array()))
        return regions

    def paint(self, target: np.ndarray, regions: list[RegionMask]) -> None:
        """Clear what this segmenter painted before, then paint region i with label i + 1 (GUI thread)."""
        for y0, x0, y1, x1 in self.pasted:
            target[y0:y1, x0:x1] = 0
        self.pasted = []
        for value, region in enumerate(regions, start=1):
            if region.area:
                y0, x0, y1, x1 = region.box
                window = target[y0:y1, x0:x1]
                window[region.mask & (window == 0)] = value  # an extra box never covers the first object
                self.pasted.append(region.box)


def segment_tiled(
    widget,
    layers,
    image_layer,
    info: ImageInfo,
    grouped: GroupedPrompts,
    session: ImageSession,
    tiling: Tiling,
) -> None:
    """The tiled counterpart of `MobileSamWidget.segment_prompts`: encode the needed tiles and decode
    in the background worker, then paste the region masks into the current-object layer."""
    segmenter = _current_segmenter(widget, image_layer, info, session, tiling)[2]
    if segmenter is not None and not session.changed_slices(grouped):
        return
    prompt = grouped.by_slice.get(0)
    extra_boxes = grouped.extra_boxes.get(0, ())
    if prompt is None:  # prompts removed: nothing to decode
        current = layers.existing("current")  # not made just to be erased
        if segmenter is not None and current is not None:
            segmenter.paint(current.data, [])
            current.refresh()
        session.shown.pop(0, None)
        session.shown_boxes.pop(0, None)
        widget.scores.value = "-"
        return
    prompts = [prompt, *(Prompt(box=tuple(box)) for box in extra_boxes)]

    def show(segmenter_, regions):
        if layers is widget._layers:
            segmenter_.paint(layers.current.data, regions)
            layers.current.refresh()
        session.shown[0], session.shown_boxes[0] = prompt, extra_boxes
        tiles = sorted({t for region in regions for t in region.tiles})
        widget.scores.value = f"{regions[0].score:.2f} (tiled: {len(tiles)} tile(s))"

    _run(
        widget,
        image_layer,
        info,
        session,
        tiling,
        "MobileSAM: segmenting (tiled)",
        lambda segmenter_, progress, cancel: segmenter_.segment(prompts, progress, cancel),
        show,
        layers,
    )


def embed_all_tiled(widget, image_layer, info: ImageInfo, session: ImageSession, tiling: Tiling) -> None:
    """Compute embeddings: every tile of the image, in the worker, with progress and Cancel."""

    def show(segmenter_, encoded):
        widget._notify(
            "info",
            f"MobileSAM: {len(segmenter_.embeddings.grid)} tile embeddings ready "
            f"({encoded} encoded now); click to segment",
        )

    _run(
        widget,
        image_layer,
        info,
        session,
        tiling,
        "MobileSAM: computing tile embeddings",
        lambda segmenter_, progress, cancel: segmenter_.embeddings.embed_all(
            progress=progress, cancel=cancel
        ),
        show,
        None,
    )


def segment_everything_in_tiles(
    widget, image_layer, info: ImageInfo, session: ImageSession, tiling: Tiling, settings: dict, show
) -> None:
    """The tiled counterpart of `MobileSamWidget.segment_everything`: automatic masks per tile from
    the image's tile embeddings, objects joined across tile borders (in the worker, progress per tile
    step, Cancel); then `show(labels)` with the (H, W) label image in the GUI thread."""

    def everything(segmenter_, progress, cancel):
        generator = mask_generator(segmenter_.predictor, settings)
        embeddings = segmenter_.embeddings
        with (
            cancel_checks_inside(getattr(generator.predictor, "model", None), cancel, "segment everything"),
            tempfile.TemporaryDirectory(prefix="mobilesam-everything-") as folder,
        ):
            output = Path(folder) / "labels.zarr"  # written tile by tile by the core, read back once
            segment_everything_tiled(
                embeddings.image,
                lambda: generator,
                output,
                tiling.tile_shape,
                tiling.halo,
                progress=progress,
                cancel=cancel,
                embeddings=embeddings,
            )
            return open_image(output).read((0, 0, *embeddings.shape))

    tiles = len(TileGrid(info.spatial_shape, tiling.tile_shape, tiling.halo))
    _run(
        widget,
        image_layer,
        info,
        session,
        tiling,
        f"MobileSAM: segmenting everything ({tiles} tiles)",
        everything,
        lambda segmenter_, labels: show(labels),
        None,
    )


def mask_generator(predictor, settings: dict):
    """The automatic mask generator run on each tile (the predictor's model, as untiled)."""
    from mobilesam import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(predictor.model, **settings)


def _current_segmenter(widget, image_layer, info, session, tiling):
    """(segmenter key, level-0 data, the session's tiled segmenter if it is still valid, else None)."""
    model_key = widget._wanted_model_key()
    key = SegmenterKey((model_key, tiling), info, widget._cache_dir(info))
    data = level0(image_layer)
    ready = widget._predictor is not None and widget._model_key == model_key
    return key, data, session.segmenter_for(key, data) if ready else None


def _run(widget, image_layer, info, session, tiling, description: str, job, show, layers) -> None:
    """In the worker: load the model if needed, build the tiled segmenter if needed, run
    `job(segmenter, progress, cancel)`; then `show(segmenter, result)` in the GUI thread."""
    from ._model import _model_id, build_predictor

    key, data, segmenter = _current_segmenter(widget, image_layer, info, session, tiling)
    model_key = key.model[0]
    predictor = widget._predictor if widget._model_key == model_key else None
    same_weights = widget._model_key is not None and widget._model_key[:2] == model_key[:2]
    model = getattr(widget._predictor, "model", None) if same_weights else None

    def work(progress, cancel):
        nonlocal predictor, segmenter
        if predictor is None:
            predictor = build_predictor(model_key, model)
        if segmenter is None:
            segmenter = TiledSegmenter(
                predictor, data, info, tiling, key.cache_dir, _model_id(predictor, model_key)
            )
        return predictor, segmenter, job(segmenter, progress, cancel)

    def done(outcome):
        predictor_, segmenter_, result = outcome
        widget._end_task()
        if widget._predictor is not predictor_:
            for other in widget._all_sessions():  # their embeddings belong to the old predictor's model
                if other is not session:
                    other.drop_segmenter()
        widget._predictor, widget._model_key = predictor_, model_key
        current = layers.existing("current") if layers is not None else None
        if session.segmenter is not segmenter_ and current is not None:
            current.data[...] = 0  # once per new segmenter: what is shown came from other embeddings
        session.use_segmenter(segmenter_, key, data)
        try:
            show(segmenter_, result)
        except Exception as exc:  # noqa: BLE001 - shown to the user, layers untouched
            widget._report_error(exc)
        widget._run_pending()

    def failed(exc):
        widget._end_task()
        widget._pending_segment = False
        widget._report_error(exc)

    widget._start_task(
        BackgroundTask(work, description, on_done=done, on_error=failed, on_progress=widget._show_progress)
    )
