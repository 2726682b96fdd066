"""Opening a task prewarms its embedding; stale draft keypoints; automatic masks as a background job;
the allocator and threads set by the backend under any server (Flask test client and subprocesses)."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from ls_requests import (
    CONFIG_BRUSH,
    CONFIG_POLYGON,
    MemoryImages,
    decode_brush,
    keypoint,
    predict_body,
    reference_mask,
)

A = "/data/upload/1/a.png"  # 48 x 64
B = "/data/upload/1/b.png"  # 60 x 40
C = "/data/local-files/?d=images/c.png"  # 72 x 96
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(make_backend, ls_images, vit_t_model):
    """A backend of its own (empty caches, own fetch counts) on the session's model."""
    from labelstudio_backend.api import create_app

    images = MemoryImages(ls_images)
    backend = make_backend(image_loader=images, model_loader=lambda: vit_t_model)
    yield backend, create_app(backend).test_client(), images
    backend.close()


# ----------------------------------------------------------------------------- prewarm on task open
def test_opening_a_task_prewarms_so_the_first_click_is_cached(fresh, ls_images, reference_predictor):
    backend, client, images = fresh
    with ThreadPoolExecutor(2) as pool:  # Label Studio often sends two prelabel calls per opened task
        answers = list(pool.map(lambda _: client.post("/predict", json=predict_body(None, C)), range(2)))
    assert [(a.status_code, a.get_json()) for a in answers] == [(200, {"results": []})] * 2
    assert backend.prewarmer.wait_idle(120)
    assert images.fetches[C] == 1 and (C, backend.model_version) in backend.cache

    response = client.post("/predict", json=predict_body([keypoint(50, 30, 96, 72)], C))
    assert response.status_code == 200
    expected, _, _ = reference_mask(reference_predictor, ls_images[C], [[50, 30]], [1])
    np.testing.assert_array_equal(decode_brush(response.get_json()["results"][0]["result"][0]), expected)
    metrics = client.get("/metrics").get_json()
    latency = metrics["interactive_latency_s"]
    assert (latency["cached"]["count"], latency["uncached"]["count"]) == (1, 0)
    assert metrics["counters"]["prewarm.encoded"] == 1
    assert metrics["prewarm"]["duplicates"] + metrics["prewarm"]["done"] == 2
    assert images.fetches[C] == 1


def test_prewarm_off_encodes_on_the_first_click(make_backend, ls_images, vit_t_model):
    from labelstudio_backend.api import create_app

    images = MemoryImages(ls_images)
    backend = make_backend(image_loader=images, model_loader=lambda: vit_t_model, prewarm=False)
    client = create_app(backend).test_client()
    assert client.post("/predict", json=predict_body(None, A)).get_json() == {"results": []}
    assert backend.prewarmer.stats()["queued"] == 0 and A not in images.fetches
    backend.close()


def test_prewarm_queue_is_deduplicated_bounded_newest_first_and_cancellable():
    from labelstudio_backend.prewarm import Prewarmer

    started, release, order = threading.Event(), threading.Event(), []

    def work(key, payload):
        order.append(key)
        if key == "first":
            started.set()
            release.wait(30)

    queue = Prewarmer(work, max_pending=2)
    assert queue.submit("first")
    assert started.wait(30)
    assert not queue.submit("first")  # running: not queued twice
    for key in ("a", "b", "c"):
        assert queue.submit(key)
    assert not queue.submit("c")  # pending: not queued twice
    assert queue.stats()["dropped"] == 1  # "a", the oldest, made room
    assert queue.cancel("b") and not queue.cancel("b")
    assert queue.submit("d")
    release.set()
    assert queue.wait_idle(30)
    assert order == ["first", "d", "c"]  # the most recently opened task first
    stats = queue.stats()
    assert (stats["done"], stats["duplicates"], stats["cancelled"], stats["pending"]) == (3, 2, 1, 0)
    queue.close()
    assert not queue.submit("e")


def test_failed_prewarm_is_logged_and_the_click_reports_the_error(fresh, caplog):
    backend, client, _ = fresh
    missing = "/data/upload/1/missing.png"
    with caplog.at_level(logging.WARNING, logger="labelstudio_backend.prewarm"):
        assert client.post("/predict", json=predict_body(None, missing)).get_json() == {"results": []}
        assert backend.prewarmer.wait_idle(60)
    assert "missing.png" in caplog.text and backend.prewarmer.stats()["failed"] == 1
    response = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], missing))
    assert response.status_code == 502 and "missing.png" in response.get_json()["error"]


# ----------------------------------------------------------------------------- stale draft keypoints
def test_stale_draft_keypoint_without_is_positive_is_ignored(client, ls_images, reference_predictor, caplog):
    stale = keypoint(10, 40, 64, 48, positive=None, region_id="E8LAYb2UHE")  # a point left in a draft
    new = keypoint(28, 21, 64, 48, positive=True, region_id="XEh2Eig-n3")
    with caplog.at_level(logging.INFO, logger="labelstudio_backend.model"):
        response = client.post("/predict", json=predict_body([stale, new], A))
    assert response.status_code == 200, response.get_json()
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    both, _, _ = reference_mask(reference_predictor, ls_images[A], [[10, 40], [28, 21]], [1, 1])
    assert not np.array_equal(expected, both), "the test needs the stale point to change the mask"
    np.testing.assert_array_equal(decode_brush(response.get_json()["results"][0]["result"][0]), expected)
    assert "E8LAYb2UHE" in caplog.text and "stale" in caplog.text


def test_parse_context_separates_stale_points():
    from labelstudio_backend.prompts import parse_context

    items = [
        keypoint(10, 40, 64, 48, positive=None, region_id="old"),
        keypoint(28, 21, 64, 48, region_id="p"),
        keypoint(5, 5, 64, 48, positive=False, region_id="n"),
    ]
    prompt = parse_context({"result": items})
    assert prompt.stale_ids == ("old",) and prompt.region_ids == ("p", "n")
    np.testing.assert_array_equal(prompt.point_labels, [1, 0])
    unflagged = parse_context({"result": [keypoint(10, 40, 64, 48, positive=None)]})
    assert unflagged.stale_ids == () and unflagged.point_labels.tolist() == [1]


# ----------------------------------------------------------------------------- automatic masks
def test_automatic_masks_one_prediction_per_task_with_real_generator(make_backend, ls_images, vit_t_model):
    """Real segment-everything masks (a small prompt grid), one region per object, the config's first
    label; the embedding it computed serves the annotator's clicks afterwards."""
    from label_studio_sdk.converter.brush import decode_rle

    from labelstudio_backend.api import create_app

    images = MemoryImages(ls_images)
    backend = make_backend(
        image_loader=images,
        model_loader=lambda: vit_t_model,
        auto_masks=True,
        auto_masks_points_per_side=4,
        auto_masks_min_iou=0.0,
        auto_masks_min_stability=0.0,
    )
    client = create_app(backend).test_client()
    body = predict_body(None, A)
    body["tasks"] += [
        {"id": 2, "data": {"image": "/data/upload/1/missing.png"}},
        {"id": 3, "data": {"image": B}},
    ]
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    first, missing, third = response.get_json()["results"]
    assert missing == []
    for prediction, (height, width) in ((first, (48, 64)), (third, (60, 40))):
        assert prediction["model_version"] == backend.model_version and prediction["result"]
        for item in prediction["result"]:
            assert item["type"] == "brushlabels" and item["value"]["brushlabels"] == ["Object"]
            alpha = decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
            assert set(np.unique(alpha)) <= {0, 255} and alpha.any()
    # The images were fetched once each and their embeddings are cached for the clicks.
    assert images.fetches[A] == 1 and (A, backend.model_version) in backend.cache
    click = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    assert click.status_code == 200 and images.fetches[A] == 1
    # Handed over once: Label Studio stores it and never asks again; a new request computes anew.
    assert backend._auto_results == {}
    backend.close()


def test_automatic_polygons_label_and_time_bound(make_backend, ls_images, vit_t_model, caplog):
    from labelstudio_backend.api import create_app

    images = MemoryImages({"/data/upload/1/a.png": ls_images[A]})
    backend = make_backend(
        image_loader=images,
        model_loader=lambda: vit_t_model,
        auto_masks=True,
        auto_masks_points_per_side=4,
        auto_masks_label="Cell",
        auto_masks_min_iou=0.0,
        auto_masks_min_stability=0.0,
    )
    client = create_app(backend).test_client()
    assert client.post("/setup", json={"project": "1.1", "schema": CONFIG_POLYGON}).status_code == 200
    answer = client.post(
        "/predict", json=predict_body(None, A, config=CONFIG_POLYGON, data_key="picture")
    ).get_json()
    (prediction,) = answer["results"]
    assert prediction["result"] and all(
        item["type"] == "polygonlabels" and item["value"]["polygonlabels"] == ["Cell"]
        for item in prediction["result"]
    )
    backend.close()

    wrong_label = make_backend(
        image_loader=images, model_loader=lambda: vit_t_model, auto_masks=True, auto_masks_label="Nucleus"
    )
    response = (
        create_app(wrong_label).test_client().post("/setup", json={"project": "1.1", "schema": CONFIG_BRUSH})
    )
    assert response.status_code == 422 and "Nucleus" in response.get_json()["error"]
    wrong_label.close()

    slow = make_backend(
        image_loader=images,
        model_loader=lambda: vit_t_model,
        auto_masks=True,
        auto_masks_points_per_side=64,
        auto_masks_task_timeout=0.05,
    )
    with caplog.at_level(logging.ERROR, logger="labelstudio_backend.precompute"):
        response = create_app(slow).test_client().post("/predict", json=predict_body(None, A))
    assert response.get_json() == {"results": []}  # skipped: nothing stored, asked again next time
    assert "took longer than 0.05 s" in caplog.text
    slow.close()


def test_automatic_masks_continue_in_the_background_past_the_wait(make_backend, ls_images, vit_t_model):
    """Label Studio gives a /predict 100 s: tasks unfinished after MOBILESAM_AUTO_MASKS_WAIT get no
    prediction now, go on in the background, and are handed over when Label Studio asks again."""
    from labelstudio_backend.api import create_app

    backend = make_backend(
        image_loader=MemoryImages(ls_images),
        model_loader=lambda: vit_t_model,
        auto_masks=True,
        auto_masks_points_per_side=4,
        auto_masks_wait=0.0,
        auto_masks_min_iou=0.0,
        auto_masks_min_stability=0.0,
    )
    client = create_app(backend).test_client()
    body = predict_body(None, A)
    body["tasks"].append({"id": 2, "data": {"image": B}})
    assert client.post("/predict", json=body).get_json() == {"results": []}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(f.done() for f in list(backend._auto_results.values())):
        time.sleep(0.1)
    results = client.post("/predict", json=body).get_json()["results"]
    assert len(results) == 2 and all(r["model_version"] == backend.model_version for r in results)
    backend.close()


def test_task_job_reports_failures_goes_on_and_can_be_cancelled():
    from labelstudio_backend.precompute import TaskImage, TaskJob
    from mobilesam.errors import MobileSamError

    cancel = threading.Event()

    def work(task, stop):
        if task.task_id == 2:
            raise MobileSamError("could not fetch image b.png: HTTP 404")
        if task.task_id == 3:
            cancel.set()
        return task.task_id * 10

    tasks = [TaskImage(i, f"/data/upload/1/{i}.png") for i in range(1, 6)]
    seen = []
    report = TaskJob("test", work).run(
        tasks,
        cancel=cancel,
        on_result=lambda t, r, e: seen.append((t.task_id, r, e)),
        progress=lambda done, total: None,
    )
    assert report.results == {1: 10, 3: 30} and report.cancelled
    assert report.failed == ["task 2: could not fetch image b.png: HTTP 404"]
    assert [s[0] for s in seen] == [1, 2, 3]


# ----------------------------------------------------------------------------- allocator, threads, warm-up
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("server", ["gunicorn", "label-studio-ml"])
def test_backend_sets_allocator_and_threads_under_any_server(server, vit_t_checkpoint, tmp_path):
    """Without MALLOC_* in the environment (as under a plain gunicorn), the backend tunes the allocator
    and torch's threads itself, and warms up the encoder before it reports ready."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(
        MOBILESAM_CHECKPOINT=str(vit_t_checkpoint),
        MOBILESAM_EMBEDDING_DIR="off",
        PYTHONPATH=os.pathsep.join([str(REPO / "core"), str(REPO)]),
    )
    command = (
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "--threads",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "labelstudio_backend._wsgi:app",
        ]
        if server == "gunicorn"
        else [sys.executable, str(REPO / "labelstudio_backend" / "_wsgi.py"), "--port", str(port)]
    )
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline, state = time.monotonic() + 180, None
        while time.monotonic() < deadline and process.poll() is None and state != "ready":
            try:
                state = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["model_state"]
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert state == "ready", log.read_text()
        runtime = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).json()["runtime"]
        from mobilesam.runtime import usable_cpus

        assert runtime["allocator_tuned"] is True, runtime
        assert runtime["torch_threads"] == usable_cpus() and runtime["warm_up_s"] > 0
    finally:
        process.terminate()
        process.wait(30)
