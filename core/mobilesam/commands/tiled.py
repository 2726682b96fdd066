"""Tiled runs of `mobilesam everything` and `mobilesam embed` for large images and folders of them.

    mobilesam everything slide.ome.zarr -o labels.zarr --tile-shape 768 --halo 128
    mobilesam everything FOLDER -o LABELS_FOLDER --tile-shape 768 --scheduler tcp://host:8786
    mobilesam embed slide.tif --cache DIR --tile-shape 768 --workers 4

Tiles are tasks on `dask.distributed`: a LocalCluster of --workers processes by default
(--workers 0 runs them in this process), or the cluster at --scheduler ADDRESS.
"""

import argparse
import contextlib
import functools
from pathlib import Path

from ..errors import UsageError
from ._common import progress_bar

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")


def add_tiling_arguments(parser: argparse.ArgumentParser, cache: bool = False) -> None:
    g = parser.add_argument_group("large images (tiling; needs napari-mobilesam[volume], dask.distributed)")
    if cache:
        g.add_argument(
            "--cache", metavar="DIR", help="tile embedding cache (see `mobilesam embed --tile-shape`)"
        )
    g.add_argument(
        "--tile-shape",
        metavar="N|ROWS,COLS",
        default=None,
        help="segment / embed tile by tile with this interior size (e.g. 768: with the halo of 128 "
        "each tile is exactly the encoder's 1024 px); a folder or an OME-Zarr input is always "
        "tiled (768 then)",
    )
    g.add_argument("--halo", metavar="N|ROWS,COLS", default="128", help="context around each tile (128)")
    g.add_argument("--level", type=int, default=0, help="pyramid level of an OME-Zarr / pyramidal TIFF (0)")
    g.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="processes of the local dask cluster (2); 0 runs the tiles in this process",
    )
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler instead")


def wants_tiling(args: argparse.Namespace, source: str) -> bool:
    path = Path(source)
    return bool(args.tile_shape) or path.suffix.lower() == ".zarr" or (path.is_dir() and source != "sample")


@contextlib.contextmanager
def dask_client(args: argparse.Namespace):
    """The client tiles run on: --scheduler's, a LocalCluster of --workers, or None (this process)."""
    if args.scheduler:
        from distributed import Client

        with Client(args.scheduler) as client:
            yield client
    elif args.workers > 0:
        from ..tiling import local_cluster_client

        client = local_cluster_client(args.workers)
        try:
            yield client
        finally:
            client.close()
            client.cluster.close()
    elif args.workers == 0:
        yield None
    else:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")


def tiling_shapes(args: argparse.Namespace):
    from ..tiling.grid import DEFAULT_TILE_SHAPE, parse_shape

    try:
        return parse_shape(args.tile_shape or DEFAULT_TILE_SHAPE, "--tile-shape"), parse_shape(
            args.halo, "--halo"
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def checkpoint_and_type(args: argparse.Namespace):
    """(model type or None to detect, checkpoint path, model identity), resolved once before any worker starts."""
    from ..volume import model_fingerprint
    from ..weights import resolve_checkpoint

    checkpoint = resolve_checkpoint(
        args.model_type or "vit_t", args.checkpoint, allow_download=not args.no_download
    )
    # The checkpoint's sha256 identifies the weights; the type only names them.
    return args.model_type, str(checkpoint), model_fingerprint(args.model_type or "auto", checkpoint)


def folder_images(source: str) -> list[Path]:
    """The images of a folder (not an OME-Zarr folder), sorted; [] for anything else."""
    path = Path(source)
    if not path.is_dir() or path.suffix.lower() == ".zarr":
        return []
    images = sorted(
        p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise UsageError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def image_jobs(source: str, output: str) -> list[tuple[str, Path]]:
    """(input, output) pairs: one image, or every image of a folder into the output folder."""
    images = folder_images(source)
    if images:
        out = Path(output)
        if out.suffix:
            raise UsageError(f"for a folder of images, -o must be a folder, not {output}")
        return [
            (str(p), out / (p.name.removesuffix(".zarr").removesuffix(".ome").rsplit(".", 1)[0] + ".tif"))
            for p in images
        ]
    if Path(output).suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise UsageError(f"tiled output {output} must end in .tif, .tiff or .zarr")
    return [(source, Path(output))]


def run_everything_tiled(args: argparse.Namespace) -> int:
    from ..tiling import build_generator, segment_everything_tiled

    if args.json is not None:
        raise UsageError("--json is not available with tiling (the label image is written tile by tile)")
    tile_shape, halo = tiling_shapes(args)
    jobs = image_jobs(args.image, args.output)
    model_type, checkpoint, model_id = checkpoint_and_type(args)
    factory = functools.partial(
        build_generator,
        model_type,
        checkpoint,
        args.device,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_layers,
        min_mask_region_area=args.min_region_area,
    )
    with dask_client(args) as client:
        for source, output in jobs:
            with progress_bar(f"segment everything {Path(source).name}", "tile") as (update, _):
                count = segment_everything_tiled(
                    source,
                    factory,
                    output,
                    tile_shape,
                    halo,
                    client=client,
                    level=args.level,
                    channel_axis=args.channel_axis,
                    progress=update,
                    cache_dir=args.cache,
                    model_id=model_id,
                )
            print(f"{count} objects -> {output}")
    return 0


def run_embed_tiled(args: argparse.Namespace) -> int:
    from ..tiling import build_predictor, embed_tiles

    tile_shape, halo = tiling_shapes(args)
    model_type, checkpoint, model_id = checkpoint_and_type(args)
    factory = functools.partial(build_predictor, model_type, checkpoint, args.device)
    sources = [str(p) for p in folder_images(args.volume)] or [args.volume]
    with dask_client(args) as client:
        for source in sources:
            with progress_bar(f"embedding tiles of {Path(source).name}", "tile") as (update, _):
                encoded, total = embed_tiles(
                    source,
                    factory,
                    args.cache,
                    model_id,
                    tile_shape,
                    halo,
                    client=client,
                    level=args.level,
                    channel_axis=args.channel_axis,
                    progress=update,
                )
            print(f"{total} tiles: {encoded} encoded, {total - encoded} already cached -> {args.cache}")
    return 0
