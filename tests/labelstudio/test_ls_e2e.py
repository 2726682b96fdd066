"""End to end with a real Label Studio 1.23.2 (the session's, see conftest.py) and our backend
started by `mobilesam serve`, both on 127.0.0.1: the masks Label Studio relays for a smart keypoint
and a smart rectangle equal the core predictor's for the same prompt.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import requests
from ls_requests import CONFIG_BRUSH, decode_brush, keypoint, make_test_image, rectangle, reference_mask
from ls_server import REPO, TOKEN, ServerError, free_port, png_bytes, stop, tail, wait_until

IMAGE = make_test_image(60, 80, seed=5)  # uploaded: /data/upload/...
LOCAL_IMAGE = make_test_image(50, 70, seed=6)  # from a local storage: /data/local-files/?d=...


@pytest.fixture(scope="module")
def backend_server(label_studio, vit_t_checkpoint, tmp_path_factory):
    """`mobilesam serve` in a subprocess, on the random-weight checkpoint."""
    work = tmp_path_factory.mktemp("backend")
    port = free_port()
    env = dict(
        os.environ,
        MOBILESAM_CHECKPOINT=str(vit_t_checkpoint),
        MOBILESAM_ALLOW_DOWNLOAD="0",
        MOBILESAM_EMBEDDING_DIR=str(work / "embeddings"),
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=TOKEN,
        XDG_CACHE_HOME=str(work / "cache"),
    )
    log_path = work / "backend.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mobilesam", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: requests.get(url + "/health", timeout=2).json()["model_state"] == "ready",
                180,
                process,
                log_path,
                "mobilesam serve",
            )
        except ServerError as exc:
            pytest.fail(str(exc))
        yield url, work / "embeddings", log_path
    finally:
        stop(process)


def test_label_studio_relays_our_masks(
    label_studio, backend_server, vit_t_checkpoint, server_reference_predictor
):
    backend_url, embedding_dir, backend_log = backend_server
    ls = label_studio
    project = ls.call("POST", "/api/projects", json={"title": "MobileSAM e2e", "label_config": CONFIG_BRUSH})
    ls.call(
        "POST",
        f"/api/projects/{project['id']}/import",
        files={"file": ("cells.png", png_bytes(IMAGE), "image/png")},
    )
    images = ls.files_root / "images"  # a local storage must be a subdirectory of the document root
    images.mkdir()
    (images / "local.png").write_bytes(png_bytes(LOCAL_IMAGE))
    storage = ls.call(
        "POST",
        "/api/storages/localfiles",
        json={
            "project": project["id"],
            "title": "local",
            "path": str(images),
            "regex_filter": r".*\.png",
            "use_blob_urls": True,
        },
    )
    ls.call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    tasks = ls.call("GET", f"/api/tasks?project={project['id']}")["tasks"]
    (task,) = [t for t in tasks if t["data"]["image"].startswith("/data/upload/")]
    (local_task,) = [t for t in tasks if t["data"]["image"].startswith("/data/local-files/?d=")]

    # Pre-compute the project's embeddings into the running server's store, from another process.
    precompute = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilesam",
            "labelstudio",
            "precompute",
            "--project",
            str(project["id"]),
            "--url",
            ls.url,
            "--api-key",
            TOKEN,
            "--embedding-dir",
            str(embedding_dir),
            "--checkpoint",
            str(vit_t_checkpoint),
            "--no-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(os.environ, XDG_CACHE_HOME=str(embedding_dir.parent / "precompute-cache")),
    )
    assert precompute.returncode == 0, precompute.stdout + precompute.stderr
    assert "2 encoded, 0 already stored, 0 failed" in precompute.stdout
    model_version = requests.get(backend_url + "/versions", timeout=5).json()["versions"][0]

    ml = ls.call(
        "POST",
        "/api/ml",
        json={"project": project["id"], "url": backend_url, "title": "MobileSAM", "is_interactive": True},
    )
    height, width = IMAGE.shape[:2]
    click = keypoint(30, 25, width, height)
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [click]}},
    )
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    (item,) = answer["data"]["result"]
    assert (item["type"], item["from_name"], item["to_name"]) == ("brushlabels", "brush", "image")
    assert item["value"]["brushlabels"] == ["Object"]
    expected, iou, _ = reference_mask(server_reference_predictor, IMAGE, [[30, 25]], [1])
    np.testing.assert_array_equal(decode_brush(item), expected)
    assert answer["data"]["score"] == pytest.approx(iou, abs=1e-5)
    assert answer["data"]["model_version"] == model_version

    box = rectangle(10, 8, 50, 40, width, height)
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [box]}},
    )
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    expected, _, _ = reference_mask(server_reference_predictor, IMAGE, box=[10, 8, 50, 40])
    np.testing.assert_array_equal(decode_brush(answer["data"]["result"][0]), expected)

    click = keypoint(20, 30, 70, 50)
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": local_task["id"], "context": {"result": [click]}},
    )
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    expected, _, _ = reference_mask(server_reference_predictor, LOCAL_IMAGE, [[20, 30]], [1])
    np.testing.assert_array_equal(decode_brush(answer["data"]["result"][0]), expected)

    metrics = requests.get(backend_url + "/metrics", timeout=5).json()
    counters = metrics["counters"]
    assert counters.get("embeddings.from_disk") == 2 and "embeddings.encoded" not in counters, counters
    assert counters["requests.setup"] >= 1 and counters["requests.health"] >= 1

    # Data Manager "retrieve predictions" without automatic masks: a non-interactive /predict that
    # stores no (empty) prediction; the images are queued for prewarming (here already cached).
    ls.call(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    counters = requests.get(backend_url + "/metrics", timeout=5).json()["counters"]
    assert counters["requests.predict"] >= 4 and "errors.predict" not in counters, counters
    for each in (task, local_task):
        assert ls.call("GET", f"/api/predictions?task={each['id']}") == []


def test_retrieve_predictions_and_precompute_fill_projects_with_automatic_masks(
    label_studio, vit_t_model, vit_t_checkpoint, tmp_path
):
    """Data Manager ▸ Retrieve predictions with MOBILESAM_AUTO_MASKS=1: one prediction per task with
    one brush region per object; a task whose image cannot be fetched gets none (an empty list in
    our answer, which Label Studio 1.23.2 stores as nothing) and the others are not held up.
    `precompute_project(predictions=True)` (the CLI's --predictions) runs the same job through the API."""
    from ls_server import ThreadedBackend

    from labelstudio_backend.model import MobileSamBackend
    from labelstudio_backend.precompute import precompute_project
    from labelstudio_backend.settings import Settings

    settings = Settings(
        checkpoint=str(vit_t_checkpoint),
        embedding_dir=tmp_path / "embeddings",
        label_studio_url=label_studio.url,
        label_studio_api_key=TOKEN,
        auto_masks=True,
        auto_masks_points_per_side=4,
        auto_masks_min_iou=0.0,
        auto_masks_min_stability=0.0,
    )
    server = ThreadedBackend(MobileSamBackend(settings, model_loader=lambda: vit_t_model))
    try:
        images = [make_test_image(48, 64, seed=s) for s in (7, 8)]
        project, tasks, _ = label_studio.project_with_images("auto masks", CONFIG_BRUSH, images, server.url)
        label_studio.call(
            "POST", f"/api/projects/{project['id']}/import", json=[{"image": "/data/upload/999/missing.png"}]
        )
        label_studio.call(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        all_tasks = label_studio.call("GET", f"/api/tasks?project={project['id']}")["tasks"]
        for task in all_tasks:
            predictions = label_studio.call("GET", f"/api/predictions?task={task['id']}")
            if task["data"]["image"].endswith("missing.png"):
                assert predictions == []
                continue
            (prediction,) = predictions
            assert prediction["model_version"] == server.backend.model_version and prediction["result"]
            assert {(r["type"], tuple(r["value"]["brushlabels"])) for r in prediction["result"]} == {
                ("brushlabels", ("Object",))
            }

        other, other_tasks, _ = label_studio.project_with_images("auto masks cli", CONFIG_BRUSH, images[:1])
        report = precompute_project(server.backend, label_studio.url, TOKEN, other["id"], predictions=True)
        assert (report.encoded + report.already_stored, report.predictions, report.failed) == (1, 1, [])
        (prediction,) = label_studio.call("GET", f"/api/predictions?task={other_tasks[0]['id']}")
        assert prediction["result"] and prediction["model_version"] == server.backend.model_version
        again = precompute_project(server.backend, label_studio.url, TOKEN, other["id"], predictions=True)
        assert again.predictions == 0  # a task with this model version's prediction is left alone
    finally:
        server.close()
