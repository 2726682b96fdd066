"""End to end with a real Label Studio 1.23.2 (its own virtualenv, found through LABEL_STUDIO_BIN) and
our backend started by `mobilesam serve`, both on 127.0.0.1: the masks Label Studio relays for a
smart keypoint and a smart rectangle equal the core predictor's for the same prompt.

A fresh Label Studio data dir costs about a minute of database migrations; the migrated empty
database is kept in pytest's cache and copied for later runs (a fresh temp dir each time).
"""

import hashlib
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ls_requests import CONFIG_BRUSH, decode_brush, keypoint, make_test_image, rectangle, reference_mask

REPO = Path(__file__).resolve().parents[2]
LS_BIN = Path(os.environ.get("LABEL_STUDIO_BIN") or REPO / ".venv-ls" / "bin" / "label-studio")
USER, PASSWORD, TOKEN = "e2e@mobilesam.test", "mobilesam-e2e-password", "mobilesam-e2e-token-0123456789"
LS_START_TIMEOUT = 420  # seconds; fresh migrations take ~90 s on a busy 2-core machine
IMAGE = make_test_image(60, 80, seed=5)  # uploaded: /data/upload/...
LOCAL_IMAGE = make_test_image(50, 70, seed=6)  # from a local storage: /data/local-files/?d=...


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout, process, log_path, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout} s:\n{tail(log_path)}")


def tail(path, lines=40):
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:]) if Path(path).exists() else ""


def stop(process):
    """Stop a server we started, with its process group (Label Studio may start helpers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def template_dir(config):
    """Where the migrated empty database is cached, keyed by the Label Studio install."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    key = hashlib.sha256(f"{LS_BIN.resolve()}:{LS_BIN.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(cache.mkdir(f"labelstudio-template-{key}"))


class LabelStudio:
    def __init__(self, url, files_root):
        self.url = url
        self.files_root = files_root
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def call(self, method, path, expected=(200, 201), **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert response.status_code in expected, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory, request):
    if not LS_BIN.is_file():
        pytest.fail(f"Label Studio is not installed at {LS_BIN}. Install it in its own virtualenv: "
                    "python3 -m venv .venv-ls && .venv-ls/bin/pip install label-studio==1.23.2 "
                    "(scripts/test.sh does this), or point LABEL_STUDIO_BIN at its label-studio executable.")
    data_dir = tmp_path_factory.mktemp("label-studio-data")
    files_root = tmp_path_factory.mktemp("label-studio-files")
    template = template_dir(request.config)
    template_db = template / "label_studio.sqlite3" if template else None
    if template_db is not None and template_db.is_file():
        shutil.copy2(template_db, data_dir / "label_studio.sqlite3")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
    })
    port = free_port()
    log_path = data_dir / "label-studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/health", timeout=2).ok, LS_START_TIMEOUT, process, log_path,
                   "Label Studio")
        if template_db is not None and not template_db.is_file():
            save_template(data_dir / "label_studio.sqlite3", template_db)
        yield LabelStudio(url, files_root)
    finally:
        stop(process)


def save_template(database, target):
    """Copy the freshly migrated database with sqlite's online backup, then move it into place."""
    partial = target.with_name(target.name + ".part")
    with sqlite3.connect(database) as source, sqlite3.connect(partial) as copy:
        source.backup(copy)
    os.replace(partial, target)


@pytest.fixture(scope="module")
def backend_server(label_studio, vit_t_checkpoint, tmp_path_factory):
    """`mobilesam serve` in a subprocess, on the random-weight checkpoint."""
    work = tmp_path_factory.mktemp("backend")
    port = free_port()
    env = dict(os.environ, MOBILESAM_CHECKPOINT=str(vit_t_checkpoint), MOBILESAM_ALLOW_DOWNLOAD="0",
               MOBILESAM_EMBEDDING_DIR=str(work / "embeddings"), LABEL_STUDIO_URL=label_studio.url,
               LABEL_STUDIO_API_KEY=TOKEN, XDG_CACHE_HOME=str(work / "cache"))
    log_path = work / "backend.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mobilesam", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/health", timeout=2).json()["model_state"] == "ready", 180,
                   process, log_path, "mobilesam serve")
        yield url, work / "embeddings", log_path
    finally:
        stop(process)


def png_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_label_studio_relays_our_masks(label_studio, backend_server, vit_t_checkpoint, reference_predictor):
    backend_url, embedding_dir, backend_log = backend_server
    ls = label_studio
    project = ls.call("POST", "/api/projects", json={"title": "MobileSAM e2e", "label_config": CONFIG_BRUSH})
    ls.call("POST", f"/api/projects/{project['id']}/import",
            files={"file": ("cells.png", png_bytes(IMAGE), "image/png")})
    images = ls.files_root / "images"  # a local storage must be a subdirectory of the document root
    images.mkdir()
    (images / "local.png").write_bytes(png_bytes(LOCAL_IMAGE))
    storage = ls.call("POST", "/api/storages/localfiles", json={
        "project": project["id"], "title": "local", "path": str(images), "regex_filter": r".*\.png",
        "use_blob_urls": True})
    ls.call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    tasks = ls.call("GET", f"/api/tasks?project={project['id']}")["tasks"]
    (task,) = [t for t in tasks if t["data"]["image"].startswith("/data/upload/")]
    (local_task,) = [t for t in tasks if t["data"]["image"].startswith("/data/local-files/?d=")]

    # Pre-compute the project's embeddings into the running server's store, from another process.
    precompute = subprocess.run(
        [sys.executable, "-m", "mobilesam", "labelstudio", "precompute", "--project", str(project["id"]),
         "--url", ls.url, "--api-key", TOKEN, "--embedding-dir", str(embedding_dir),
         "--checkpoint", str(vit_t_checkpoint), "--no-download"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=dict(os.environ, XDG_CACHE_HOME=str(embedding_dir.parent / "precompute-cache")))
    assert precompute.returncode == 0, precompute.stdout + precompute.stderr
    assert "2 encoded, 0 already stored, 0 failed" in precompute.stdout
    model_version = requests.get(backend_url + "/versions", timeout=5).json()["versions"][0]

    ml = ls.call("POST", "/api/ml", json={"project": project["id"], "url": backend_url, "title": "MobileSAM",
                                          "is_interactive": True})
    height, width = IMAGE.shape[:2]
    click = keypoint(30, 25, width, height)
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": task["id"], "context": {"result": [click]}})
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    (item,) = answer["data"]["result"]
    assert (item["type"], item["from_name"], item["to_name"]) == ("brushlabels", "brush", "image")
    assert item["value"]["brushlabels"] == ["Object"]
    expected, iou, _ = reference_mask(reference_predictor, IMAGE, [[30, 25]], [1])
    np.testing.assert_array_equal(decode_brush(item), expected)
    assert answer["data"]["score"] == pytest.approx(iou, abs=1e-5)
    assert answer["data"]["model_version"] == model_version

    box = rectangle(10, 8, 50, 40, width, height)
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": task["id"], "context": {"result": [box]}})
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    expected, _, _ = reference_mask(reference_predictor, IMAGE, box=[10, 8, 50, 40])
    np.testing.assert_array_equal(decode_brush(answer["data"]["result"][0]), expected)

    click = keypoint(20, 30, 70, 50)
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": local_task["id"], "context": {"result": [click]}})
    assert "data" in answer, f"Label Studio reported {answer}\n{tail(backend_log)}"
    expected, _, _ = reference_mask(reference_predictor, LOCAL_IMAGE, [[20, 30]], [1])
    np.testing.assert_array_equal(decode_brush(answer["data"]["result"][0]), expected)

    metrics = requests.get(backend_url + "/metrics", timeout=5).json()
    counters = metrics["counters"]
    assert counters.get("embeddings.from_disk") == 2 and "embeddings.encoded" not in counters, counters
    assert counters["requests.setup"] >= 1 and counters["requests.health"] >= 1

    # Data Manager "retrieve predictions": a non-interactive /predict, one prediction per task.
    ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}",
            json={"selectedItems": {"all": True, "excluded": []}})
    counters = requests.get(backend_url + "/metrics", timeout=5).json()["counters"]
    assert counters["requests.predict"] >= 3 and "errors.predict" not in counters, counters
    for each in (task, local_task):
        predictions = ls.call("GET", f"/api/predictions?task={each['id']}")
        assert [p["model_version"] for p in predictions] == [model_version]
