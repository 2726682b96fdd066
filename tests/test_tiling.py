"""Large images: tile grid, tiled embeddings and their cache, tiled prompts, tiled segment
everything (seams, duplicates, memory), dask scale-out and the CLI.

Behaviour is tested with stand-ins whose masks follow the objects (`mobilesam.tiling.testing`:
connected regions of the image each tile sees, cut at the tile's edge like a real model's view),
so Dice against the truth measures what tiling adds or loses. The real model (random weights)
checks that decoding inside one tile is exactly untiled decoding of that tile.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mobilesam import SamPredictor
from mobilesam.errors import Cancelled
from mobilesam.tiling import (
    LazyImage,
    TiledEmbeddings,
    TiledPredictor,
    TileGrid,
    open_image,
    segment_everything_tiled,
)
from mobilesam.tiling.testing import ComponentPredictor, component_generator

TILE, HALO = 64, 16


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def disks(shape, centres, radius, value=200) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W, 3) uint8 image of disks on black, and each disk's truth mask."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros((*shape, 3), np.uint8)
    truths = []
    for k, (cx, cy) in enumerate(centres):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[disk] = [value, 100 + 10 * (k % 10), 50]
        truths.append(disk)
    return image, truths


def full_mask(region, shape) -> np.ndarray:
    return region.paste(np.zeros(shape, bool))


# ---- grid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(256, 256), (200, 130), (50, 300)])
def test_grid_interiors_partition_the_image_and_outer_boxes_share_one_size(shape):
    grid = TileGrid(shape, TILE, HALO)
    cover = np.zeros(shape, int)
    for tile in grid:
        y0, x0, y1, x1 = tile.interior
        cover[y0:y1, x0:x1] += 1
        oy0, ox0, oy1, ox1 = tile.outer
        assert (oy1 - oy0, ox1 - ox0) == grid.outer_shape
        assert 0 <= oy0 <= y0 and y1 <= oy1 <= shape[0] and 0 <= ox0 <= x0 and x1 <= ox1 <= shape[1]
        # At least the halo of context wherever the image has it.
        assert y0 - oy0 >= min(HALO, y0) and oy1 - y1 >= min(HALO, shape[0] - y1)
        assert grid.tile_at(y0, x0) == tile and grid.tile_at(y1 - 1, x1 - 1) == tile
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="outside"):
        grid.tile_at(shape[0], 0)
    with pytest.raises(ValueError, match="tile_shape"):
        TileGrid(shape, "a,b")


# ---- prompts ------------------------------------------------------------------------------------


def corner_image():
    """256 x 256, 4 x 4 tiles of 64: a disk of radius 40 centred on the corner (128, 128), wider than the halo."""
    return disks((256, 256), [(128, 128)], 40)


def test_point_on_a_tile_corner_object_is_one_seamless_object():
    image, (truth,) = corner_image()
    predictor = TiledPredictor(TiledEmbeddings(image, ComponentPredictor(), TILE, HALO))
    region = predictor.predict(np.array([[120.0, 121.0]]), np.array([1]))
    assert dice(full_mask(region, truth.shape), truth) >= 0.98
    rows, cols = np.nonzero(truth)
    # Full resolution only over the object's bounding region, not the image.
    assert region.box == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    assert region.mask.shape == (81, 81)
    assert set(region.tiles) >= {5, 6, 9, 10}  # the four tiles meeting at the corner


def test_box_and_points_spanning_tiles_merge_without_seams():
    image, (truth,) = corner_image()
    embeddings = TiledEmbeddings(image, ComponentPredictor(), TILE, HALO)
    predictor = TiledPredictor(embeddings)
    region = predictor.predict(box=np.array([85, 85, 172, 172]))
    assert dice(full_mask(region, truth.shape), truth) >= 0.98
    assert set(region.tiles) == {5, 6, 9, 10}
    # Points in two different tiles: still one object.
    region = predictor.predict(np.array([[100.0, 100.0], [150.0, 155.0]]), np.array([1, 1]))
    assert dice(full_mask(region, truth.shape), truth) >= 0.98
    # Only the tiles the object touches were ever encoded (lazy), each once.
    assert embeddings.encoder_calls == len({5, 6, 9, 10} | set(region.tiles)) <= 9


def test_prompt_errors_name_the_problem():
    image, _ = corner_image()
    predictor = TiledPredictor(TiledEmbeddings(image, ComponentPredictor(), TILE, HALO))
    with pytest.raises(ValueError, match="outside"):
        predictor.predict(np.array([[300.0, 10.0]]), np.array([1]))
    with pytest.raises(ValueError, match="foreground point"):
        predictor.predict(np.array([[10.0, 10.0]]), np.array([0]))
    with pytest.raises(ValueError, match="x1 > x0"):
        predictor.predict(box=np.array([50, 50, 40, 60]))


# ---- embeddings cache ---------------------------------------------------------------------------


def test_tile_embeddings_lazy_cached_on_disk_with_progress_and_cancel(tmp_path):
    image, _ = corner_image()
    # uint16 (one intensity range for all tiles) with a ramp, so that no two tiles hold the same pixels.
    image16 = (
        image[..., 0].astype(np.uint16) * 100 + np.arange(256 * 256, dtype=np.uint16).reshape(256, 256) % 4000
    )
    first = TiledEmbeddings(
        image16, ComponentPredictor(), TILE, HALO, cache_dir=tmp_path, model_id="stand-in"
    )
    first.get(0)  # lazily: one tile
    assert first.encoder_calls == 1
    cancel, seen = threading.Event(), []

    def progress(done, total):
        seen.append((done, total))
        if done == 5:
            cancel.set()

    with pytest.raises(Cancelled):
        first.embed_all(progress=progress, cancel=cancel)
    assert seen[-1] == (5, 16) and first.encoder_calls == 5  # tile 0 came from memory
    again = TiledEmbeddings(
        image16, ComponentPredictor(), TILE, HALO, cache_dir=tmp_path, model_id="stand-in"
    )
    assert again.embed_all() == 11 and again.disk_hits == 5  # finished tiles were kept
    changed = image16.copy()
    changed[0, 0] = 20000
    # Same contrast range as before (a changed range would rightly change every tile's key).
    changed = LazyImage(changed, value_range=again.image.intensity_range)
    other = TiledEmbeddings(
        changed, ComponentPredictor(), TILE, HALO, cache_dir=tmp_path, model_id="stand-in"
    )
    assert other.embed_all() == 1  # only tile 0 holds the changed pixel
    assert np.array_equal(other.tile_image(5), again.tile_image(5))


def test_lazy_sources_tiff_ome_zarr_levels_and_dask(tmp_path):
    import dask.array as da
    import zarr

    data = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200) % 997
    tifffile.imwrite(tmp_path / "tiled.tif", data, tile=(64, 64))
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tif:
        tif.write(data, tile=(64, 64), subifds=1)
        tif.write(data[::2, ::2], tile=(64, 64), subfiletype=1)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    for level in (0, 1):
        group.create_array(
            str(level), data=data[:: 2**level, :: 2**level][None], chunks=(1, 64, 64)
        )  # (c, y, x)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}],
    }
    box = (70, 30, 150, 190)
    for source, level, expected in [
        (tmp_path / "tiled.tif", 0, data),
        (tmp_path / "pyramid.tif", 1, data[::2, ::2]),
        (tmp_path / "img.ome.zarr", 0, data),
        (tmp_path / "img.ome.zarr", 1, data[::2, ::2]),
        (da.from_array(data, chunks=64), 0, data),
    ]:
        image = open_image(source, level=level)
        assert image.shape == expected.shape
        region = image.read(box)
        assert np.array_equal(region.reshape(region.shape[:2]), expected[70:150, 30:190])
    with pytest.raises(ValueError, match="levels 0..1"):
        open_image(tmp_path / "img.ome.zarr", level=2)


# ---- segment everything -------------------------------------------------------------------------


def border_objects():
    """256 x 256 in 4 x 4 tiles of 64: disks on every interior border and corner, and inside tiles."""
    centres = [(x, y) for y in (64, 128, 192) for x in (64, 128, 192)]  # corners
    centres += [(x, y) for y in (32, 96, 160, 224) for x in (64, 128, 192)]  # on vertical borders
    centres += [(x, y) for y in (64, 128, 192) for x in (32, 96, 160, 224)]  # on horizontal borders
    centres = [c for c in centres if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 > 24**2 for o in [])]
    kept = []
    for c in centres:  # disks of radius 9 need 2 px of background between them
        if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 >= 20**2 for o in kept):
            kept.append(c)
    return disks((256, 256), kept, 9)


def assert_one_label_per_object(labels: np.ndarray, truths: list[np.ndarray]) -> float:
    worst = 1.0
    for truth in truths:
        values, counts = np.unique(labels[truth], return_counts=True)
        assert values[0] != 0 or len(values) > 1
        main = values[np.argmax(counts)]
        assert main != 0
        worst = min(worst, dice(labels == main, truth))
    assert len(np.unique(labels)) - 1 == len(truths)  # no object split in two, no duplicates
    assert worst >= 0.98
    return worst


def test_segment_everything_no_seams_on_a_4x4_tile_image(tmp_path):
    image, truths = border_objects()
    assert len(truths) >= 25
    count = segment_everything_tiled(image, component_generator, tmp_path / "labels.tif", TILE, HALO)
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == image.shape[:2] and count == len(truths)
    worst = assert_one_label_per_object(labels, truths)
    print(f"\n{count} objects on borders of 16 tiles: each one label, worst Dice {worst:.4f}")
    assert sorted(os.listdir(tmp_path)) == ["labels.tif"]  # no leftovers


def test_segment_everything_corner_object_ome_zarr_output_and_cancel(tmp_path):
    image, truths = corner_image()
    count = segment_everything_tiled(image, component_generator, tmp_path / "labels.zarr", TILE, HALO)
    labels = open_image(tmp_path / "labels.zarr").read((0, 0, 256, 256))
    assert count == 1 and dice(labels == 1, truths[0]) >= 0.98
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        segment_everything_tiled(
            image,
            component_generator,
            tmp_path / "other.tif",
            TILE,
            HALO,
            progress=lambda done, total: cancel.set() if done == 3 else None,
            cancel=cancel,
        )
    assert sorted(os.listdir(tmp_path)) == ["labels.zarr"]  # nothing half-written


def test_segment_everything_reuses_cached_tile_embeddings(tmp_path):
    from mobilesam.tiling import embed_tiles
    from mobilesam.tiling.testing import ComponentGenerator

    image, truths = border_objects()
    assert embed_tiles(image, ComponentPredictor, tmp_path / "cache", "stand-in", TILE, HALO) == (16, 16)
    assert embed_tiles(image, ComponentPredictor, tmp_path / "cache", "stand-in", TILE, HALO) == (0, 16)
    generator = ComponentGenerator(predictor=ComponentPredictor())
    count = segment_everything_tiled(
        image,
        lambda: generator,
        tmp_path / "labels.tif",
        TILE,
        HALO,
        cache_dir=tmp_path / "cache",
        model_id="stand-in",
    )
    assert generator.predictor.set_image_calls == 0  # every tile's embedding came from the cache
    assert count == len(truths)
    assert_one_label_per_object(tifffile.imread(tmp_path / "labels.tif"), truths)

    # Embeddings held in this process (a viewer's, after clicks in tiles 0 and 5): those tiles are
    # not encoded again, the others are encoded by them once and kept for later prompts.
    shared = TiledEmbeddings(image, ComponentPredictor(), TILE, HALO)
    assert shared.embed_all([0, 5]) == 2
    generator = ComponentGenerator(predictor=ComponentPredictor())
    count = segment_everything_tiled(
        shared.image, lambda: generator, tmp_path / "shared.tif", TILE, HALO, embeddings=shared
    )
    assert shared.encoder_calls == 16 and generator.predictor.set_image_calls == 0
    assert count == len(truths)
    assert_one_label_per_object(tifffile.imread(tmp_path / "shared.tif"), truths)
    with pytest.raises(ValueError, match="not the tiles asked for"):
        segment_everything_tiled(
            shared.image, lambda: generator, tmp_path / "other.tif", TILE * 2, HALO, embeddings=shared
        )


def test_20000_square_ome_zarr_segmented_with_memory_bounded_by_tiles(tmp_path):
    probe = Path(__file__).with_name("tiling_memory_probe.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, str(probe), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    growth = result["peak"] - result["baseline"]
    tile_bytes = result["tile_outer_pixels"] * (3 + 4)  # RGB tile + int32 labels of one tile
    full_labels = result["image_pixels"] * 4
    print(
        f"\n20000^2 OME-Zarr in {result['seconds']:.1f} s: peak RSS growth {growth / 2**20:.0f} MiB "
        f"= {growth / tile_bytes:.1f} tiles' RGB+labels = {growth / full_labels:.3f} of the full label image"
    )
    assert result["count"] == 7
    assert all(
        len(a) == 2 and a[1] == result["areas"][0][1] for a in result["areas"]
    )  # one label per disk, whole
    assert growth < 10 * tile_bytes and growth < full_labels / 4


def test_two_worker_local_cluster_gives_the_same_labels_even_when_a_worker_dies(tmp_path):
    import functools

    from mobilesam.tiling import local_cluster_client
    from mobilesam.tiling.testing import dying_once_generator

    image, truths = border_objects()
    here = segment_everything_tiled(image, component_generator, tmp_path / "here.tif", TILE, HALO)
    marker = tmp_path / "a worker died"
    client = local_cluster_client(2)
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        # The first worker to reach its 2nd tile exits mid-task; Dask reruns its tiles elsewhere.
        there = segment_everything_tiled(
            image,
            functools.partial(dying_once_generator, str(marker)),
            tmp_path / "cluster.tif",
            TILE,
            HALO,
            client=client,
        )
    finally:
        client.close()
        client.cluster.close()
    assert marker.exists()  # a worker really was lost
    assert here == there == len(truths)
    assert np.array_equal(tifffile.imread(tmp_path / "here.tif"), tifffile.imread(tmp_path / "cluster.tif"))


# ---- real model ---------------------------------------------------------------------------------


def test_real_model_tiled_equals_untiled_inside_one_tile(small_model):
    """Random-weight vit_t at 256 px input: a point inside one tile's interior gives, inside that
    interior, exactly the mask of decoding that tile's outer box on its own."""
    rng = np.random.default_rng(0)
    image = (rng.random((200, 200, 3)) * 255).astype(np.uint8)
    embeddings = TiledEmbeddings(image, SamPredictor(small_model), tile_shape=64, halo=16)
    point = np.array([[90.0, 100.0]])
    tile = embeddings.grid.tile_at(100, 90)
    assert tile.interior == (64, 64, 128, 128) and tile.outer == (48, 48, 144, 144)
    region = TiledPredictor(embeddings, max_tiles=2).predict(point, np.array([1]))
    tiled = full_mask(region, image.shape[:2])

    y0, x0, y1, x1 = tile.outer
    untiled_predictor = SamPredictor(small_model)
    untiled_predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
    masks, scores, _ = untiled_predictor.predict(point - [x0, y0], np.array([1]), multimask_output=True)
    untiled = np.zeros(image.shape[:2], bool)
    untiled[y0:y1, x0:x1] = masks[int(np.argmax(scores))]
    iy0, ix0, iy1, ix1 = tile.interior
    assert np.array_equal(tiled[iy0:iy1, ix0:ix1], untiled[iy0:iy1, ix0:ix1])
    assert tiled[iy0:iy1, ix0:ix1].any()  # the comparison is not between two empty masks


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_everything_and_embed_tiled(tmp_path, monkeypatch, capsys):
    import mobilesam.tiling as tiling
    from mobilesam.cli import main
    from mobilesam.tiling.testing import ComponentGenerator

    image, truths = border_objects()
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64))
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"stand-in weights")  # hashed for the cache key, never loaded here
    monkeypatch.setattr(tiling, "build_generator", lambda *args, **kwargs: ComponentGenerator())
    monkeypatch.setattr(tiling, "build_predictor", lambda *args, **kwargs: ComponentPredictor())
    common = ["--tile-shape", "64", "--halo", "16", "--workers", "0", "--checkpoint", str(checkpoint)]
    assert main(["everything", str(tmp_path / "big.tif"), "-o", str(tmp_path / "labels.tif"), *common]) == 0
    assert_one_label_per_object(tifffile.imread(tmp_path / "labels.tif"), truths)
    assert main(["embed", str(tmp_path / "big.tif"), "--cache", str(tmp_path / "cache"), *common]) == 0
    assert main(["embed", str(tmp_path / "big.tif"), "--cache", str(tmp_path / "cache"), *common]) == 0
    out = capsys.readouterr().out
    assert "16 tiles: 16 encoded, 0 already cached" in out and "16 tiles: 0 encoded, 16 already cached" in out
    with pytest.raises(SystemExit):
        main(["everything", str(tmp_path / "big.tif"), "-o", str(tmp_path / "labels.png"), *common])
    assert "must end in .tif, .tiff or .zarr" in capsys.readouterr().err
    # A folder of images: one label image each, in the output folder.
    folder = tmp_path / "slides"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image, tile=(64, 64))
    tifffile.imwrite(folder / "b.tif", image[:128, :192])
    assert main(["everything", str(folder), "-o", str(tmp_path / "out"), *common]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a.tif", "b.tif"]
    assert np.array_equal(
        tifffile.imread(tmp_path / "out" / "a.tif"), tifffile.imread(tmp_path / "labels.tif")
    )
    assert tifffile.imread(tmp_path / "out" / "b.tif").shape == (128, 192)
    capsys.readouterr()
    assert main(["embed", str(folder), "--cache", str(tmp_path / "cache"), *common]) == 0
    # a.tif is big.tif again: all its tiles come from the cache. Of b.tif's 2 x 3 tiles, the first
    # two see exactly the pixels of big.tif's first two (content keys): 4 are encoded.
    cache = str(tmp_path / "cache")
    assert capsys.readouterr().out.splitlines() == [
        f"16 tiles: 0 encoded, 16 already cached -> {cache}",
        f"6 tiles: 4 encoded, 2 already cached -> {cache}",
    ]
