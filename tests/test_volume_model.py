"""Volumes with the real model (random weights): the embedding cache on disk, cache invalidation,
readers and the `mobilesam embed` / `mobilesam volume` commands.

Encoder calls are counted by wrapping the image encoder's forward. A vit_t encoder call at the
official 1024 input takes a second or more on a shared CPU, so the model tests use vit_t built
for a 256-pixel input (same code, 16x fewer tokens), and the CLI tests, whose models are built
at 1024 from the checkpoint, replace the encoder's forward by a cheap counting stand-in: they
test the caching and plumbing, which do not depend on what the encoder computes."""

import numpy as np
import pytest
import tifffile
import torch

import mobilesam
from mobilesam.cli import main
from mobilesam.modeling import TinyViT
from mobilesam.testing import save_random_checkpoint
from mobilesam.volume import (
    SlicePrompt,
    VolumeEmbeddings,
    model_fingerprint,
    propagate_object,
    read_volume,
    weights_fingerprint,
    write_labels,
)


def small_volume(num_slices=3, size=64, seed=0):
    """uint16 (Z, Y, X) with a bright disk, so intensities go through the per-volume stretch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    vol = rng.normal(1000, 50, size=(num_slices, size, size))
    for z in range(num_slices):
        vol[z][(yy - 30) ** 2 + (xx - 32 - z) ** 2 < 15**2] += 3000
    return vol.astype(np.uint16)


SMALL_INPUT = 256


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_random_checkpoint(
        tmp_path_factory.mktemp("w") / "small.pt", "vit_t", seed=0, image_size=SMALL_INPUT
    )


@pytest.fixture
def small_model(small_checkpoint):
    return mobilesam.build_sam("vit_t", small_checkpoint, image_size=SMALL_INPUT)


@pytest.fixture
def counted_predictor(small_model):
    """A SamPredictor (vit_t, 256-pixel input) whose encoder counts its calls."""
    predictor = mobilesam.SamPredictor(small_model)
    encoder = small_model.image_encoder
    original = encoder.forward
    calls = []

    def counting_forward(x):
        calls.append(tuple(x.shape))
        return original(x)

    encoder.forward = counting_forward
    yield predictor, calls
    del encoder.forward  # back to the class's method


def test_disk_cache_reused_and_invalidated(tmp_path, small_checkpoint, counted_predictor):
    predictor, calls = counted_predictor
    volume = small_volume()
    model_id = model_fingerprint("vit_t", small_checkpoint)
    assert (
        model_id == f"vit_t-{mobilesam.weights.sha256sum(small_checkpoint)}-in1024"
    )  # model_identity's format
    cache = tmp_path / "cache.zarr"

    first = VolumeEmbeddings(volume, predictor, cache_dir=cache, model_id=model_id)
    assert not first.is_cached(0)
    assert first.embed_all() == 3 and len(calls) == 3
    states = [first.get(z) for z in range(3)]
    assert len(calls) == 3 and first.memory_hits == 3

    # Reopening the same data with the same weights: no encoder call, identical embeddings.
    second = VolumeEmbeddings(volume, predictor, cache_dir=cache, model_id=model_id)
    assert all(second.is_cached(z) for z in range(3))
    for z in range(3):
        state = second.get(z)
        assert torch.equal(state.features, states[z].features)
        assert state.original_size == (64, 64) and state.input_size == (SMALL_INPUT, SMALL_INPUT)
    assert len(calls) == 3 and second.disk_hits == 3 and second.encoder_calls == 0
    second.set_slice(1)
    assert torch.equal(predictor.features, states[1].features)

    # The cached embedding is what the encoder gives for that slice.
    predictor.set_image(second.slice_image(2))
    assert torch.equal(predictor.get_embedding_state().features, states[2].features)
    del calls[:]

    # Changed data: only the changed slice is encoded again.
    changed = volume.copy()
    changed[1, :8, :8] += 2000
    third = VolumeEmbeddings(changed, predictor, cache_dir=cache, model_id=model_id)
    assert third.value_range == second.value_range  # the stretch did not change ...
    assert [third.is_cached(z) for z in range(3)] == [True, False, True]  # ... but slice 1 did
    third.get(1)
    assert len(calls) == 1

    # A different checkpoint: different identity, nothing served from the old cache.
    other = save_random_checkpoint(tmp_path / "other.pt", "vit_t", seed=1, image_size=SMALL_INPUT)
    other_id = model_fingerprint("vit_t", other)
    assert other_id != model_id
    other_model = mobilesam.build_sam("vit_t", other, image_size=SMALL_INPUT)
    fourth = VolumeEmbeddings(volume, mobilesam.SamPredictor(other_model), cache_dir=cache, model_id=other_id)
    assert not any(fourth.is_cached(z) for z in range(3))


def test_unfinished_cache_entry_is_never_read(tmp_path, counted_predictor):
    """An array left without its 'complete' mark (a crash mid-write) counts as missing."""
    import zarr

    predictor, calls = counted_predictor
    cache = tmp_path / "cache.zarr"
    embeddings = VolumeEmbeddings(small_volume(1), predictor, cache_dir=cache, model_id="m")
    embeddings.get(0)
    group = zarr.open_group(str(cache), mode="a")
    (array,) = [a for _, a in group[embeddings._model_key()].arrays()]
    array.attrs["complete"] = False
    again = VolumeEmbeddings(small_volume(1), predictor, cache_dir=cache, model_id="m")
    assert not again.is_cached(0)
    again.get(0)
    assert len(calls) == 2


def test_default_model_id_follows_the_weights(small_model, small_checkpoint, tmp_path):
    same = mobilesam.build_sam("vit_t", small_checkpoint, image_size=SMALL_INPUT)
    other = mobilesam.build_sam("vit_t", image_size=SMALL_INPUT)
    assert weights_fingerprint(small_model) == weights_fingerprint(same)
    assert weights_fingerprint(small_model) != weights_fingerprint(other)
    # Without model_id, the cache is keyed by the weights: other weights never see these entries.
    volume = small_volume(1)
    VolumeEmbeddings(volume, mobilesam.SamPredictor(small_model), cache_dir=tmp_path / "c").get(0)
    assert VolumeEmbeddings(volume, mobilesam.SamPredictor(same), cache_dir=tmp_path / "c").is_cached(0)
    assert not VolumeEmbeddings(volume, mobilesam.SamPredictor(other), cache_dir=tmp_path / "c").is_cached(0)


def test_memory_bounded_200_slice_memmap_real_predictor(tmp_path, small_model, monkeypatch):
    """embed_all over 200 memmapped slices with the real predictor (the encoder replaced by a
    cheap stand-in, as the real one takes a second per slice): slices are read one at a time and
    at most max_in_memory embeddings are held."""
    data = np.lib.format.open_memmap(tmp_path / "vol.npy", mode="w+", dtype=np.float32, shape=(200, 32, 32))
    data[:] = np.arange(200, dtype=np.float32)[:, None, None]
    data.flush()
    volume = np.load(tmp_path / "vol.npy", mmap_mode="r")
    reads = []

    class Tracked:
        shape, dtype, ndim = volume.shape, volume.dtype, 3

        def __getitem__(self, index):
            reads.append(index[0])
            assert isinstance(index[0], int)
            return volume[index]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole volume was loaded")

    def cheap_encoder(x):
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(x.shape[0], 256, 16, 16).clone()

    monkeypatch.setattr(small_model.image_encoder, "forward", cheap_encoder)
    embeddings = VolumeEmbeddings(Tracked(), mobilesam.SamPredictor(small_model), max_in_memory=5)
    sizes = []
    assert embeddings.embed_all(progress=lambda d, t: sizes.append(len(embeddings.in_memory))) == 200
    assert max(sizes) == 5 and embeddings.in_memory == (195, 196, 197, 198, 199)
    assert len(reads) <= 16 + 200  # intensity sample + one read per slice
    # Contrast is per volume: slice 0 is dark, slice 199 bright.
    assert embeddings.slice_image(0).max() < 10 and embeddings.slice_image(199).min() > 245


def test_read_volume_tiff_and_nifti_keep_spacing(tmp_path):
    import nibabel as nib

    vol = small_volume(4, 32)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(
        tif, vol, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"spacing": 2.0, "axes": "ZYX"}
    )
    data, spacing = read_volume(tif)
    assert spacing == pytest.approx((2.0, 0.25, 0.5))
    assert np.array_equal(np.asarray(data[2]), vol[2])

    compressed = tmp_path / "compressed.tif"
    tifffile.imwrite(compressed, vol, compression="zlib")
    data, spacing = read_volume(compressed)
    assert spacing == (1.0, 1.0, 1.0) and np.array_equal(np.asarray(data[3]), vol[3])

    nii = tmp_path / "vol.nii.gz"
    xyz = np.ascontiguousarray(vol.transpose(2, 1, 0))  # NIfTI stores (i, j, k) = (x, y, z)
    nib.save(nib.Nifti1Image(xyz, np.diag([0.8, 0.9, 3.0, 1.0])), nii)
    data, spacing = read_volume(nii)
    assert data.shape == vol.shape and spacing == pytest.approx((3.0, 0.9, 0.8))
    assert np.array_equal(np.asarray(data[1]), vol[1])

    out = write_labels(tmp_path / "labels.nii.gz", (vol > 2000).astype(np.int32) * 3, (3.0, 0.9, 0.8))
    back, back_spacing = read_volume(out)
    assert np.array_equal(np.asarray(back), (vol > 2000) * 3) and back_spacing == pytest.approx(
        (3.0, 0.9, 0.8)
    )

    for name, image in (("flat.tif", vol[0]), ("rgb.tif", np.zeros((32, 32, 3), np.uint8))):
        tifffile.imwrite(tmp_path / name, image)
        with pytest.raises(ValueError, match="not a stack"):
            read_volume(tmp_path / name)
    with pytest.raises(ValueError, match="must be a TIFF stack"):
        (tmp_path / "x.png").write_bytes(b"")
        read_volume(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "missing.tif")


def test_propagation_runs_with_the_real_model(counted_predictor):
    """Random weights give arbitrary masks, but the whole path runs on the real predictor."""
    predictor, calls = counted_predictor
    embeddings = VolumeEmbeddings(small_volume(2), predictor)
    result = propagate_object(embeddings, [SlicePrompt(0, box=[15, 15, 50, 45])], iou_threshold=0.0)
    assert result.shape == (2, 64, 64) and result.dtype == bool
    assert len(calls) <= 2


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, small_volume(3), imagej=True, metadata={"spacing": 2.5, "axes": "ZYX"})
    return path


@pytest.fixture
def class_encoder_calls(monkeypatch):
    """Counts TinyViT encoder calls in models the CLI builds itself; the encoder is replaced by a
    cheap function of its input (see the module docstring)."""
    calls = []

    def counting(self, x):
        calls.append(1)
        return x.mean(dim=1, keepdim=True)[:, :, ::16, ::16].repeat(1, 256, 1, 1).contiguous()

    monkeypatch.setattr(TinyViT, "forward", counting)
    return calls


def test_cli_embed_then_volume_uses_the_cache(
    tmp_path, stack_file, vit_t_checkpoint, class_encoder_calls, capsys
):
    cache = tmp_path / "emb"
    common = ["--checkpoint", str(vit_t_checkpoint), "--no-download"]
    assert main(["embed", str(stack_file), "--cache", str(cache), *common]) == 0
    assert len(class_encoder_calls) == 3
    assert "3 encoded, 0 already cached" in capsys.readouterr().out

    out = tmp_path / "labels.tif"
    code = main(
        [
            "volume",
            str(stack_file),
            "--cache",
            str(cache),
            "-o",
            str(out),
            *common,
            "--prompt",
            "z=1:point=33,30",
            "--prompt",
            "object=3:z=2:box=2,2,20,20:point=5,5,1",
            "--iou-threshold",
            "0",
        ]
    )
    assert code == 0
    assert len(class_encoder_calls) == 3, "volume must reuse the embeddings from `embed`"
    printed = capsys.readouterr().out
    assert "0 slices encoded" in printed and "2 object(s)" in printed
    labels, spacing = read_volume(out)
    labels = np.asarray(labels)
    assert labels.shape == (3, 64, 64) and set(np.unique(labels)) <= {0, 1, 3}
    assert spacing[0] == pytest.approx(2.5)

    # embed again: everything is cached already
    assert main(["embed", str(stack_file), "--cache", str(cache), *common]) == 0
    assert len(class_encoder_calls) == 3 and "0 encoded, 3 already cached" in capsys.readouterr().out


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("z=3:point=10,10", r"z=3 is outside the volume \(slices 0..2\)"),
        ("z=-1:point=10,10", r"z=-1 is outside the volume"),
        ("z=1:point=64,10", r"point \(64, 10\) on slice z=1 is outside the 64x64"),
        ("z=1:box=70,70,90,90", "does not overlap"),
        ("point=10,10", "has no slice: add z=Z"),
        ("z=1:point=10", "bad value"),
        ("z=1:circle=3", "unknown key 'circle'"),
        ("z=1", "needs points or a box"),
        ("z=1:box=5,5,1,1", "x1 > x0"),
    ],
)
def test_cli_volume_bad_prompts_are_usage_errors(
    tmp_path, stack_file, prompt, message, capsys, class_encoder_calls
):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "volume",
                str(stack_file),
                "--prompt",
                prompt,
                "-o",
                str(tmp_path / "o.tif"),
                "--checkpoint",
                "/nonexistent.pt",
            ]
        )
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "o.tif").exists() and not class_encoder_calls


def test_cli_volume_other_errors(tmp_path, stack_file, capsys):
    assert (
        main(
            [
                "volume",
                str(tmp_path / "missing.tif"),
                "--prompt",
                "z=0:point=1,1",
                "-o",
                str(tmp_path / "o.tif"),
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["volume", str(stack_file), "-o", str(tmp_path / "o.tif")])
    assert "at least one --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "volume",
                str(stack_file),
                "--prompt",
                "z=0:point=1,1",
                "--axis",
                "5",
                "-o",
                str(tmp_path / "o.tif"),
            ]
        )
    assert "--axis 5 is out of range" in capsys.readouterr().err
