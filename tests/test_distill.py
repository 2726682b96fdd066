"""Decoupled distillation end to end at 128 px on tiny synthetic image sets, with a random teacher:
embed-teacher -> train -> export -> evaluate through the CLI, learning, exact resume, torchrun/DDP
(gloo on CPU), and the official checkpoint layout."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilesam
from mobilesam.cli import main
from mobilesam.testing import save_random_checkpoint
from mobilesam.weights import sha256sum

SIZE = 128  # 8x8 embeddings: every step of the pipeline runs in seconds on CPU


def synthetic_images(folder: Path, count: int, seed: int) -> Path:
    """Disks of random colours on a noisy background; landscape, portrait, and one grayscale image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (96, 128) if i % 3 else (128, 80)
        yy, xx = np.mgrid[:h, :w]
        img = np.zeros((h, w, 3), np.float32) + rng.uniform(0, 255, 3)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img[..., 0] if i == 5 else img).save(folder / f"img_{i:02d}.png")
    return folder


def cli(*args) -> int:
    return main([str(a) for a in args])


def train_args(images, embeddings, out, *extra):
    return [
        "distill",
        "train",
        "--images",
        images,
        "--embeddings",
        embeddings,
        "--out",
        out,
        "--batch-size",
        4,
        "--lr",
        2e-3,
        "--val-fraction",
        0.25,
        "--num-workers",
        0,
        "--log-interval",
        1,
        *extra,
    ]


@pytest.fixture(scope="module")
def teacher_set(tmp_path_factory):
    """16 images, a random vit_t teacher at 128 px, and its stored embeddings."""
    root = tmp_path_factory.mktemp("distill")
    images = synthetic_images(root / "images", 16, seed=0)
    # seed != the student's (--seed 0): an identical random start would make the test meaningless
    teacher = save_random_checkpoint(root / "teacher.pt", "vit_t", seed=1234, image_size=SIZE)
    embeddings = root / "embeddings"
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            teacher,
            "--images",
            images,
            "--out",
            embeddings,
            "--image-size",
            SIZE,
            "--chunk-size",
            4,
            "--num-workers",
            0,
        )
        == 0
    )
    return root, images, teacher, embeddings


def val_mse_rows(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row["val_mse"]) for row in csv.DictReader(f) if row["val_mse"]]


def test_embed_teacher_manifest_and_resume(teacher_set, capsys):
    root, images, teacher, embeddings = teacher_set
    manifest = json.loads((embeddings / "manifest.json").read_text())
    assert manifest["teacher"]["model_type"] == "vit_t"
    assert manifest["teacher"]["sha256"] == sha256sum(teacher)
    assert manifest["image_size"] == SIZE and manifest["dtype"] == "float16"
    assert manifest["preprocessing"]["resize_longest_side"] == SIZE and manifest["chunk_size"] == 4
    # 16 images -> 4 chunk files of 4 embeddings, each with its index
    chunk = embeddings / "chunks" / "_root-000000"
    assert sorted(p.name for p in chunk.parent.iterdir()) == [
        f"_root-{k:06d}.{s}" for k in range(4) for s in ("json", "npy")
    ]
    index = json.loads(chunk.with_suffix(".json").read_text())
    assert index["names"] == [f"img_{i:02d}.png" for i in range(4)] and index["precision"] == "fp32"
    array = np.load(chunk.with_suffix(".npy"))
    assert array.dtype == np.float16 and array.shape == (4, 256, 8, 8)
    stored = array[3]

    # the stored embedding is the teacher's, as the predictor computes it
    predictor = mobilesam.SamPredictor(mobilesam.build_sam("vit_t", teacher, image_size=SIZE))
    predictor.set_image(np.array(Image.open(images / "img_03.png")))
    expected = predictor.features[0].numpy()
    assert np.abs(stored.astype(np.float32) - expected).max() < 1e-2

    # rerun: nothing recomputed; a deleted chunk is recomputed identically
    chunk.with_suffix(".json").unlink()
    capsys.readouterr()
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            teacher,
            "--images",
            images,
            "--out",
            embeddings,
            "--image-size",
            SIZE,
            "--chunk-size",
            4,
            "--num-workers",
            0,
        )
        == 0
    )
    assert "16 images: 4 embedded, 12 already done (1 of 4 chunks" in capsys.readouterr().out
    assert np.array_equal(np.load(chunk.with_suffix(".npy")), array)

    # another teacher must not be mixed into the same store
    other = save_random_checkpoint(root / "other_teacher.pt", "vit_t", seed=5, image_size=SIZE)
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            other,
            "--images",
            images,
            "--out",
            embeddings,
            "--image-size",
            SIZE,
            "--chunk-size",
            4,
        )
        == 1
    )
    assert "another teacher checkpoint" in capsys.readouterr().err


def test_vit_b_teacher_embeddings(tmp_path):
    """Any SAM encoder can teach: a (random) vit_b gives the same (256, S/16, S/16) embeddings."""
    images = synthetic_images(tmp_path / "images", 2, seed=3)
    teacher = save_random_checkpoint(tmp_path / "vit_b.pt", "vit_b", seed=0, image_size=SIZE)
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_b",
            "--teacher-checkpoint",
            teacher,
            "--images",
            images,
            "--out",
            tmp_path / "emb",
            "--image-size",
            SIZE,
        )
        == 0
    )
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["teacher"]["model_type"] == "vit_b" and manifest["embedding_shape"] == [256, 8, 8]
    assert np.load(tmp_path / "emb" / "chunks" / "_root-000000.npy").shape == (2, 256, 8, 8)


@pytest.fixture
def one_thread():
    """One intra-op thread. Bit-exact comparisons need one summation order (multi-threaded CPU
    kernels may round the last bit differently from run to run, ~1e-8); and next to a DataLoader
    worker on a shared 2-core machine, one thread is several times faster than oversubscribed two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_export_evaluate_learns(teacher_set, tmp_path, one_thread):
    root, images, teacher, embeddings = teacher_set
    run = tmp_path / "run"
    assert (
        cli(*train_args(images, embeddings, run, "--epochs", 4, "--eval-interval", 4, "--num-workers", 1))
        == 0
    )
    mse = val_mse_rows(run)
    assert len(mse) == 4  # steps 0, 4, 8, 12
    assert mse[-1] <= 0.5 * mse[0], f"validation MSE {mse[0]:.3f} -> {mse[-1]:.3f}"

    untrained = tmp_path / "untrained"  # same seed, stopped before its first step
    assert cli(*train_args(images, embeddings, untrained, "--epochs", 8, "--stop-after", 0)) == 0

    for name, run_dir in (("student.pt", run), ("untrained.pt", untrained)):
        assert cli("distill", "export", run_dir, "--decoder-from", teacher, "-o", tmp_path / name) == 0
    exported = torch.load(tmp_path / "student.pt", weights_only=True)
    assert set(exported) == set(mobilesam.build_sam("vit_t", image_size=SIZE).state_dict())
    teacher_state = torch.load(teacher, weights_only=True)
    assert all(torch.equal(exported[k], teacher_state[k]) for k in exported if k.startswith("mask_decoder."))
    mobilesam.build_sam("vit_t", tmp_path / "student.pt", image_size=SIZE)  # strict load

    held_out = synthetic_images(tmp_path / "held_out", 4, seed=7)
    miou = {}
    for name in ("student", "untrained"):
        out = tmp_path / f"{name}.json"
        assert (
            cli(
                "evaluate",
                "--model",
                tmp_path / f"{name}.pt",
                "--reference",
                teacher,
                "--images",
                held_out,
                "--n",
                4,
                "--image-size",
                SIZE,
                "--json",
                out,
            )
            == 0
        )
        result = json.loads(out.read_text())
        assert (
            result["objects"] >= 8
            and result["model"]["encoder_params"] == result["reference"]["encoder_params"]
        )
        miou[name] = result["miou"]
    print(
        f"validation MSE {mse[0]:.4f} -> {mse[-1]:.4f} ({1 - mse[-1] / mse[0]:.0%} lower); "
        f"mIoU vs teacher: untrained {miou['untrained']:.3f}, trained {miou['student']:.3f}"
    )
    assert miou["student"] >= miou["untrained"] + 0.15, miou


def test_resume_is_exact(teacher_set, tmp_path, one_thread):
    _, images, _, embeddings = teacher_set
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = ("--epochs", 2, "--eval-interval", 2)  # 6 steps of 3 per epoch
    assert cli(*train_args(images, embeddings, whole, *args)) == 0
    assert cli(*train_args(images, embeddings, split, *args, "--stop-after", 4)) == 0  # mid-epoch
    assert torch.load(split / "ckpt.pt", weights_only=True)["step"] == 4
    assert cli(*train_args(images, embeddings, split, *args)) == 0
    a, b = (torch.load(p / "ckpt.pt", weights_only=True) for p in (whole, split))
    assert a["step"] == b["step"] == 6
    assert a["encoder"].keys() == b["encoder"].keys()
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert val_mse_rows(whole) == val_mse_rows(split)

    # resuming with other settings is refused, not silently mixed
    assert cli(*train_args(images, embeddings, split, "--epochs", 2, "--eval-interval", 2, "--lr", 1e-4)) == 1


def test_torchrun_two_processes(teacher_set, tmp_path):
    _, images, teacher, embeddings = teacher_set
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mobilesam",
            *map(
                str,
                train_args(images, embeddings, run, "--epochs", 1, "--eval-interval", 3, "--device", "cpu"),
            ),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == ckpt["max_steps"] == 3
    fresh = mobilesam.build_sam("vit_t", image_size=SIZE).image_encoder.state_dict()
    assert {k: v.shape for k, v in ckpt["encoder"].items()} == {k: v.shape for k, v in fresh.items()}
    assert len(val_mse_rows(run)) == 2
    assert cli("distill", "export", run, "-o", tmp_path / "ddp.pt") == 0  # decoder from the recorded teacher
    mobilesam.build_sam("vit_t", tmp_path / "ddp.pt", image_size=SIZE)


def test_1024_export_loads_strict_into_reference(tmp_path, vit_t_checkpoint):
    """A student at the official 1024 px (untrained: stopped at step 0) exports to a file the
    reference MobileSAM code loads with strict=True."""
    mobile_sam = pytest.importorskip("mobile_sam", reason="reference oracle (dev extra) not installed")
    images = synthetic_images(tmp_path / "images", 1, seed=1)
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            vit_t_checkpoint,
            "--images",
            images,
            "--out",
            tmp_path / "emb",
        )
        == 0
    )
    assert (
        cli(
            "distill",
            "train",
            "--images",
            images,
            "--embeddings",
            tmp_path / "emb",
            "--out",
            tmp_path / "run",
            "--batch-size",
            1,
            "--val-fraction",
            0,
            "--num-workers",
            0,
            "--stop-after",
            0,
        )
        == 0
    )
    assert cli("distill", "export", tmp_path / "run", "-o", tmp_path / "mobile_sam.pt") == 0
    state = torch.load(tmp_path / "mobile_sam.pt", weights_only=True)
    mobile_sam.sam_model_registry["vit_t"]().load_state_dict(state, strict=True)
    mobilesam.build_sam("vit_t", tmp_path / "mobile_sam.pt")


def test_clear_errors(teacher_set, tmp_path, capsys):
    _, images, _, embeddings = teacher_set
    extra = tmp_path / "more"
    shutil.copytree(images, extra)
    synthetic_images(extra / "new", 2, seed=9)  # two images the teacher never saw
    assert cli(*train_args(extra, embeddings, tmp_path / "run", "--epochs", 1)) == 1
    assert "2 of 18 images have no teacher embedding" in capsys.readouterr().err
    assert cli("distill", "export", tmp_path / "nothing", "-o", tmp_path / "x.pt") == 1
    assert "no ckpt.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SystemExit) as exc:
        cli("distill", "embed-teacher", "--images", images, "--out", tmp_path / "e", "--image-size", 100)
    assert exc.value.code == 2


def test_coupled_mode_trains_through_frozen_decoder(teacher_set, tmp_path, one_thread):
    """--mode coupled: mask loss through the teacher's frozen prompt encoder + mask decoder."""
    _, images, teacher, embeddings = teacher_set
    run = tmp_path / "coupled"
    assert (
        cli(
            *train_args(
                images,
                embeddings,
                run,
                "--epochs",
                1,
                "--mode",
                "coupled",
                "--points-per-image",
                2,
                "--eval-interval",
                3,
            )
        )
        == 0
    )
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["mode"] == "coupled" and ckpt["step"] == 3
    with open(run / "metrics.csv", newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f) if row["train_loss"]]
    assert len(losses) == 3 and all(np.isfinite(losses)) and all(loss > 0 for loss in losses)
    torch.manual_seed(0)  # the student's initial weights (--seed 0)
    initial = mobilesam.build_sam("vit_t", image_size=SIZE).image_encoder.state_dict()
    assert not torch.equal(initial["neck.0.weight"], ckpt["encoder"]["neck.0.weight"])
    assert cli("distill", "export", run, "-o", tmp_path / "coupled.pt") == 0
    mobilesam.build_sam("vit_t", tmp_path / "coupled.pt", image_size=SIZE)
