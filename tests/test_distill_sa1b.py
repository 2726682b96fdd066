"""Distillation at SA-1B scale on tiny synthetic SA-1B-like tar shards (JPEG images + JSON with COCO
RLE masks, 128 px, random vit_t teacher): tar reading, the chunked store, torchrun-sharded
embed-teacher that survives a killed rank, training from shards == from a folder, SIGTERM
checkpoints that resume exactly, and evaluation on SA-1B annotations. CPU and gloo only."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from mobilesam.amg_utils import mask_to_coco_rle
from mobilesam.cli import main
from mobilesam.distill.data import TeacherEmbeddingStore
from mobilesam.distill.sources import ImageFolder, TarShards, annotation_masks, open_source
from mobilesam.errors import MobileSamError
from mobilesam.testing import save_random_checkpoint

SIZE = 128
SHARDS, PER_SHARD, DISKS = 4, 6, 3
EMBED = ("--image-size", SIZE, "--chunk-size", 2, "--batch-size", 2)  # 12 chunks of 2 images
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def cli(*args) -> int:
    return main([str(a) for a in args])


def sa1b_image(rng: np.random.Generator, index: int) -> tuple[bytes, dict]:
    """A JPEG of DISKS coloured disks and its SA-1B JSON: one COCO-RLE annotation per disk."""
    h, w = (96, 128) if index % 3 else (128, 80)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(0, 255, 3)
    annotations = []
    for k in range(DISKS):
        cy, cx, r = rng.uniform(20, h - 20), rng.uniform(20, w - 20), rng.uniform(8, 18)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[disk] = rng.uniform(0, 255, 3)
        ys, xs = np.nonzero(disk)
        annotations.append(
            {
                "id": k,
                "segmentation": mask_to_coco_rle(disk),
                "area": int(disk.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "point_coords": [[cx, cy]],
            }
        )
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=90)
    meta = {
        "image": {"image_id": index, "width": w, "height": h, "file_name": f"sa_{index}.jpg"},
        "annotations": annotations,
    }
    return buffer.getvalue(), meta


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path) -> tuple[Path, Path]:
    """SHARDS tar files as SA-1B ships them, and the same files unpacked into a folder."""
    rng = np.random.default_rng(0)
    shards, unpacked = root / "shards", root / "unpacked"
    shards.mkdir()
    for s in range(SHARDS):
        stem = f"sa_{s:06d}"
        (unpacked / stem).mkdir(parents=True)
        with tarfile.open(shards / f"{stem}.tar", "w") as tar:
            for i in range(PER_SHARD):
                index = s * PER_SHARD + i + 1
                jpeg, meta = sa1b_image(rng, index)
                data = json.dumps(meta).encode()
                # the first shard's members are named "./sa_K.jpg", as some tar tools write them
                prefix = "./" if s == 0 else ""
                add_member(tar, f"{prefix}sa_{index}.jpg", jpeg)
                add_member(tar, f"{prefix}sa_{index}.json", data)
                (unpacked / stem / f"sa_{index}.jpg").write_bytes(jpeg)
                (unpacked / stem / f"sa_{index}.json").write_bytes(data)
    return shards, unpacked


@pytest.fixture
def one_thread():
    """One intra-op thread, as in test_distill.py: bit-exact comparisons need one summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sa1b(tmp_path_factory):
    """Shards, their unpacked copy, a random 128 px vit_t teacher, and its single-process store of the shards."""
    root = tmp_path_factory.mktemp("sa1b")
    shards, unpacked = make_shards(root)
    teacher = save_random_checkpoint(root / "teacher.pt", "vit_t", seed=1234, image_size=SIZE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            cli(
                "distill",
                "embed-teacher",
                "--teacher",
                "vit_t",
                "--teacher-checkpoint",
                teacher,
                "--images",
                shards,
                "--out",
                root / "emb_single",
                *EMBED,
                "--num-workers",
                0,
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    return root, shards, unpacked, teacher, root / "emb_single"


def chunk_arrays(store: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted((store / "chunks").glob("*.npy"))}


def test_tar_shards_read_in_place(sa1b, capsys):
    root, shards, unpacked, teacher, _ = sa1b
    source = open_source(shards)
    assert isinstance(source, TarShards) and len(source.names) == SHARDS * PER_SHARD
    assert source.names[:2] == ["sa_000000/sa_1.jpg", "sa_000000/sa_2.jpg"]  # "./" dropped
    folder = open_source(unpacked)
    assert isinstance(folder, ImageFolder) and folder.names == source.names
    for name in (source.names[0], source.names[-1]):
        assert np.array_equal(source.read(name), folder.read(name))
        annotations = source.annotations(name)
        assert annotations == folder.annotations(name) and len(annotations) == DISKS
        image = source.read(name)
        masks = annotation_masks(annotations, *image.shape[:2], name)
        assert [int(m.sum()) for m in masks] == [a["area"] for a in annotations]

    # any subset of shards, given as files
    subset = open_source([shards / "sa_000003.tar", shards / "sa_000001.tar"])
    assert [n.split("/")[0] for n in subset.names[::PER_SHARD]] == ["sa_000001", "sa_000003"]

    # bad input: clear errors
    with pytest.raises(MobileSamError, match="is 5x5 but the image is"):
        annotation_masks([{"segmentation": mask_to_coco_rle(np.ones((5, 5), bool))}], 96, 128, "x")
    (root / "broken.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(MobileSamError, match="cannot read tar shard"):
        open_source([root / "broken.tar"])
    with pytest.raises(FileNotFoundError, match="shard .*sa_000009.tar does not exist"):
        open_source([shards / "sa_000000.tar", shards / "sa_000009.tar"])
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            teacher,
            "--images",
            shards,
            "--out",
            root / "emb_bf16",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            *EMBED,
        )
        == 1
    )
    assert "--precision bf16 needs a CUDA device" in capsys.readouterr().err


def run_torchrun(args, env) -> subprocess.Popen:
    return subprocess.Popen(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "mobilesam", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_torchrun_embed_teacher_survives_a_killed_rank(sa1b, tmp_path):
    """2 gloo ranks; rank 1 is killed after its first chunk; the rerun computes only the rest, and the
    store holds each image exactly once, equal to the single-process store bit for bit."""
    _, shards, _, teacher, single = sa1b
    out = tmp_path / "emb"
    args = [
        "distill",
        "embed-teacher",
        "--teacher",
        "vit_t",
        "--teacher-checkpoint",
        teacher,
        "--images",
        shards,
        "--out",
        out,
        *EMBED,
        "--device",
        "cpu",
        "--num-workers",
        1,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = run_torchrun(args, env)
    # chunks are dealt round-robin: rank 1 has the 2nd, 4th, ... of the 12
    rank1_first = out / "chunks" / "sa_000000-000001.json"
    deadline = time.monotonic() + 240
    while not rank1_first.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.002)
    ranks = [p for p in psutil.Process(proc.pid).children() if p.environ().get("RANK") == "1"]
    assert len(ranks) == 1
    ranks[0].kill()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0

    finished = {
        p.stem: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (out / "chunks").glob("*.npy")
        if p.with_suffix(".json").exists()
    }
    assert 1 <= len(finished) < 12, f"the kill came too late to interrupt anything: {sorted(finished)}"
    proc = run_torchrun(args, env)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{SHARDS * PER_SHARD} images: {2 * (12 - len(finished))} embedded" in stdout
    assert f"({12 - len(finished)} of 12 chunks computed by 2 process(es))" in stdout
    for chunk, stamp in finished.items():  # not rewritten
        path = out / "chunks" / f"{chunk}.npy"
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp

    names = [n for p in sorted((out / "chunks").glob("*.json")) for n in json.loads(p.read_text())["names"]]
    assert sorted(names) == open_source(shards).names  # each image exactly once
    assert not list((out / "chunks").glob(".*"))  # no temporary files left behind
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (single / "manifest.json").read_text()
    )
    distributed, reference = chunk_arrays(out), chunk_arrays(single)
    assert distributed.keys() == reference.keys() and len(reference) == 12
    assert all(np.array_equal(distributed[k], reference[k]) for k in reference)


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
        "--seed",
        3,
        *extra,
    ]


def same_weights(a: Path, b: Path) -> bool:
    x, y = (torch.load(p / "ckpt.pt", weights_only=True)["encoder"] for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def write_legacy_store(chunked: Path, out: Path) -> None:
    """The same embeddings in store format 1 (one .npy per image), as earlier versions wrote it."""
    store = TeacherEmbeddingStore(chunked)
    for name in store.locations():
        path = out / "embeddings" / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, store.load(name).numpy().astype(np.float16))
    manifest = json.loads((chunked / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))


def test_training_from_shards_equals_training_from_folder(sa1b, tmp_path, one_thread):
    _, shards, unpacked, teacher, single = sa1b
    folder_store = tmp_path / "emb_folder"
    assert (
        cli(
            "distill",
            "embed-teacher",
            "--teacher",
            "vit_t",
            "--teacher-checkpoint",
            teacher,
            "--images",
            unpacked,
            "--out",
            folder_store,
            *EMBED,
            "--num-workers",
            0,
        )
        == 0
    )
    a, b = chunk_arrays(single), chunk_arrays(folder_store)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    write_legacy_store(folder_store, tmp_path / "emb_legacy")
    runs = {
        "shards": (shards, single),
        "folder": (unpacked, folder_store),
        "legacy": (unpacked, tmp_path / "emb_legacy"),
    }
    for label, (images, store) in runs.items():
        assert (
            cli(
                *train_args(
                    images,
                    store,
                    tmp_path / label,
                    "--epochs",
                    1,
                    "--eval-interval",
                    2,
                    "--num-workers",
                    1 if label == "shards" else 0,
                )
            )
            == 0
        )
    ckpt = torch.load(tmp_path / "shards" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["val_images"]) == 6  # 18 training images, batches of 4
    assert same_weights(tmp_path / "shards", tmp_path / "folder")
    assert same_weights(tmp_path / "shards", tmp_path / "legacy")
    with open(tmp_path / "shards" / "metrics.csv", newline="") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r["images_per_s"]]
    assert len(rates) == 4 and all(rate > 0 for rate in rates)

    # a damaged chunk is an error naming it, never silently wrong embeddings
    chunk = folder_store / "chunks" / "sa_000002-000001.npy"
    chunk.write_bytes(chunk.read_bytes()[:-1000])
    store = TeacherEmbeddingStore(folder_store)
    with pytest.raises(MobileSamError, match="damaged embedding chunk .*sa_000002-000001.npy"):
        store.load(json.loads(chunk.with_suffix(".json").read_text())["names"][0])


def test_sigterm_during_torchrun_training_checkpoints_and_resumes_exactly(sa1b, tmp_path):
    """SIGTERM to every process of a 2-rank gloo run (as a cluster preempting a job step): both ranks stop
    after the same step with a checkpoint, and the rerun ends with the weights of an uninterrupted run."""
    _, shards, _, _, single = sa1b
    args = (
        "--epochs",
        2,
        "--eval-interval",
        3,
        "--checkpoint-interval",
        1000,
        "--num-workers",
        1,
        "--device",
        "cpu",
    )  # 8 steps
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run, whole = tmp_path / "preempted", tmp_path / "whole"
    # a session of its own: the signal goes to the whole process group (torchrun, ranks, loader workers)
    proc = subprocess.Popen(
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mobilesam",
            *map(str, train_args(shards, single, run, *args)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and "\n2," in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    step = torch.load(run / "ckpt.pt", weights_only=True)["step"]
    assert 2 <= step < 8, stderr[-3000:]
    assert stderr.count(f"stopped (SIGTERM) at step {step}/8") == 2, stderr[-3000:]  # both ranks, same step

    logs = {}
    for out in (run, whole):  # resume; and the same run uninterrupted
        proc = subprocess.run(
            [
                TORCHRUN,
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "mobilesam",
                *map(str, train_args(shards, single, out, *args)),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[out] = proc.stdout + proc.stderr
    assert f"resuming {run} at step {step}/8" in logs[run]
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 8
    assert same_weights(run, whole)
    with open(run / "metrics.csv", newline="") as f, open(whole / "metrics.csv", newline="") as g:
        val = [[r["val_mse"] for r in csv.DictReader(h) if r["val_mse"]] for h in (f, g)]
    assert val[0] == val[1] and len(val[0]) == 4  # steps 0, 3, 6, 8


def test_evaluate_on_sa1b_annotations(sa1b, tmp_path):
    _, shards, _, teacher, _ = sa1b
    student = save_random_checkpoint(tmp_path / "student.pt", "vit_t", seed=99, image_size=SIZE)
    results = {}
    for prompt, label, model in (
        ("point", "self", teacher),
        ("point", "student", student),
        ("box", "student", student),
    ):
        out = tmp_path / f"{prompt}_{label}.json"
        assert (
            cli(
                "evaluate",
                "--model",
                model,
                "--reference",
                teacher,
                "--images",
                shards / "sa_000003.tar",
                "--prompt",
                prompt,
                "--n",
                5,
                "--max-images",
                2,
                "--image-size",
                SIZE,
                "--json",
                out,
            )
            == 0
        )
        results[prompt, label] = json.loads(out.read_text())
    for result in results.values():
        # every annotated disk (3 per image, fewer than --n 5) and nothing else is an object
        assert result["objects_from"] == "annotations" and result["images"] == 2
        assert result["objects"] == 2 * DISKS
        assert result["model"]["encoder_params"] == result["reference"]["encoder_params"]
    assert results["point", "self"]["miou"] == 1.0  # both models prompted alike, from the annotations
    assert 0 <= results["point", "student"]["miou"] < 1 and 0 <= results["box", "student"]["miou"] < 1
