"""Backend components: embedding cache and disk store, image fetching through label-studio-sdk
(against a local HTTP server that checks the token like Label Studio), polygons, CLI arguments."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from ls_requests import MemoryImages, decode_brush, keypoint, predict_body, reference_mask
from ls_server import serve_wsgi

A = "/data/upload/1/a.png"


def state(fill=0.0, size=(48, 64)):
    from mobilesam import EmbeddingState

    return EmbeddingState(torch.full((1, 256, 64, 64), float(fill)), size, (768, 1024))


# ----------------------------------------------------------------------------- memory cache
def test_cache_evicts_least_recently_used_by_count_and_bytes():
    from labelstudio_backend.embedding_cache import EmbeddingCache

    one = state().nbytes
    cache = EmbeddingCache(max_items=2, max_bytes=10 * one)
    cache.put("a", state(1))
    cache.put("b", state(2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", state(3))
    assert "b" not in cache and "a" in cache and "c" in cache

    by_bytes = EmbeddingCache(max_items=10, max_bytes=2 * one + 1)
    for key in "xyz":
        by_bytes.put(key, state())
    assert len(by_bytes) == 2 and "x" not in by_bytes and by_bytes.nbytes == 2 * one
    assert by_bytes.stats()["evictions"] == 1


def test_concurrent_misses_compute_once_and_share_errors():
    from labelstudio_backend.embedding_cache import EmbeddingCache

    cache = EmbeddingCache()
    calls = []

    def slow_compute():
        calls.append(1)
        time.sleep(0.2)
        return state(7)

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute("k", slow_compute), range(5)))
    assert len(calls) == 1
    assert all(r[0] is results[0][0] for r in results)

    def failing():
        raise RuntimeError("image gone")

    with pytest.raises(RuntimeError, match="image gone"):
        cache.get_or_compute("bad", failing)
    assert "bad" not in cache  # a failure is not cached: the next click tries again
    assert cache.get_or_compute("bad", lambda: state(1))[1] is False


# ----------------------------------------------------------------------------- disk store
def test_store_round_trip_corrupt_files_and_pruning(tmp_path):
    from labelstudio_backend.embedding_cache import EmbeddingStore

    store = EmbeddingStore(tmp_path, max_bytes=3 * 4_300_000)
    key = ("/data/upload/1/a.png", "mobilesam-vit_t-x")
    saved = state(0.5, size=(60, 40))
    store.save(key, saved)
    loaded = store.load(key)
    assert torch.equal(loaded.features, saved.features)
    assert (loaded.original_size, loaded.input_size) == ((60, 40), (768, 1024))
    assert store.load(("/data/upload/1/a.png", "other-model")) is None
    assert not list(tmp_path.glob("*/*.part"))  # written atomically

    store.path(key).write_bytes(b"truncated")
    assert store.load(key) is None and not store.path(key).exists()

    for i in range(5):
        store.save((f"img{i}", "m"), state(i))
        time.sleep(0.01)
    remaining = sorted(p for p in tmp_path.glob("*/*.pt"))
    assert 1 <= len(remaining) <= 3
    assert ("img4", "m") in store and ("img0", "m") not in store  # the oldest went first


def test_new_process_uses_stored_embeddings_without_fetching(
    make_backend, ls_images, vit_t_model, tmp_path, reference_predictor
):
    from labelstudio_backend.api import create_app

    first_images = MemoryImages(ls_images)
    first = make_backend(image_loader=first_images, model_loader=lambda: vit_t_model, embedding_dir=tmp_path)
    assert first.precompute(A) is True and first.precompute(A) is False
    assert first_images.fetches == {A: 1}

    restarted_images = MemoryImages(ls_images)  # a restarted server: empty memory, same directory
    restarted = make_backend(
        image_loader=restarted_images, model_loader=lambda: vit_t_model, embedding_dir=tmp_path
    )
    response = (
        create_app(restarted).test_client().post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    )
    assert response.status_code == 200
    assert restarted_images.fetches == {}  # answered from the stored embedding
    assert restarted.metrics()["counters"]["embeddings.from_disk"] == 1
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    np.testing.assert_array_equal(decode_brush(response.get_json()["results"][0]["result"][0]), expected)


def test_mask_has_the_size_label_studio_reports(client, ls_images, reference_predictor):
    """Label Studio decodes the RLE with its own original size; a file served at another scale still fits."""
    from labelstudio_backend.results import resize_nearest

    response = client.post("/predict", json=predict_body([keypoint(56, 42, 128, 96)], A))
    item = response.get_json()["results"][0]["result"][0]
    assert (item["original_height"], item["original_width"]) == (96, 128)
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    np.testing.assert_array_equal(decode_brush(item), resize_nearest(expected, 96, 128))


# ----------------------------------------------------------------------------- image fetching
@pytest.fixture(scope="module")
def image_server(ls_images):
    """A local server shaped like Label Studio's file serving: token required, /storage-data/ answers 404
    (as with local FileSystemStorage), /data/upload/... serves the file."""
    import io

    from PIL import Image
    from werkzeug.wrappers import Request, Response

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    files = {
        "/data/upload/1/a.png": png(ls_images[A]),
        "/data/upload/1/deep.png": png(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50),
        "/public/b.png": png(ls_images["/data/upload/1/b.png"]),
    }
    requests_seen = []

    @Request.application
    def app(request):
        requests_seen.append((request.path, request.headers.get("Authorization")))
        if request.path.startswith("/public/") and request.path in files:
            return Response(files[request.path], mimetype="image/png")
        if request.headers.get("Authorization") != "Token good-token":
            return Response("unauthorized", status=401)
        if request.path in files:
            return Response(files[request.path], mimetype="image/png")
        return Response("not found", status=404)

    with serve_wsgi(app) as url:
        yield url, requests_seen


def test_fetches_uploaded_file_with_token(image_server, ls_images, tmp_path, monkeypatch):
    from labelstudio_backend.images import load_task_image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # label-studio-sdk's download cache
    url, seen = image_server
    image = load_task_image(A, url, "good-token", max_pixels=10**6, task_id=1)
    np.testing.assert_array_equal(image, ls_images[A])
    assert ("/data/upload/1/a.png", "Token good-token") in seen

    # Paths other than Label Studio's file paths only on the operator's LABEL_STUDIO_URL (never from a
    # hostname announced in /setup), and without the token.
    from labelstudio_backend.images import FetchPolicy, ImageLoader, ImageRefused

    with pytest.raises(ImageRefused, match="not one of Label Studio's file paths"):
        load_task_image(f"{url}/public/b.png", url, "good-token", max_pixels=10**6)
    public = ImageLoader(FetchPolicy(label_studio_url=url))(f"{url}/public/b.png", url, "good-token", 10**6)
    assert ("/public/b.png", None) in seen
    np.testing.assert_array_equal(public, ls_images["/data/upload/1/b.png"])

    deep = load_task_image("/data/upload/1/deep.png", url, "good-token", max_pixels=10**6)
    assert deep.shape == (30, 40, 3) and deep.dtype == np.uint8 and deep[0, 0, 0] < deep[-1, -1, 0]


def test_fetch_failures_name_the_url_and_status(image_server, tmp_path, monkeypatch):
    from labelstudio_backend.images import ImageFetchError, ImageTooLargeError, load_task_image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    url, _ = image_server
    with pytest.raises(ImageFetchError, match=r"/data/upload/1/secret\.png: HTTP 401 .*LABEL_STUDIO_API_KEY"):
        load_task_image("/data/upload/1/secret.png", url, "bad-token", max_pixels=10**6)
    with pytest.raises(ImageFetchError, match=r"gone\.png: HTTP 404"):
        load_task_image("/data/upload/1/gone.png", url, "good-token", max_pixels=10**6)
    with pytest.raises(ImageFetchError, match=r"could not fetch image .*nothing\.png: .*reachable"):
        load_task_image("/data/upload/1/nothing.png", "http://127.0.0.1:9", "good-token", max_pixels=10**6)
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL"):
        load_task_image("/data/upload/1/other.png", "", "", max_pixels=10**6)
    with pytest.raises(ImageTooLargeError, match="MOBILESAM_MAX_IMAGE_PIXELS=100"):
        load_task_image(A, url, "good-token", max_pixels=100)


def test_backend_fetches_with_setup_credentials(
    make_backend, image_server, vit_t_model, ls_images, reference_predictor, tmp_path, monkeypatch
):
    """Without LABEL_STUDIO_URL/API_KEY the backend uses the hostname and token Label Studio sent to /setup."""
    from labelstudio_backend.api import create_app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    url, _ = image_server
    backend = make_backend(model_loader=lambda: vit_t_model)
    client = create_app(backend).test_client()
    body = predict_body([keypoint(28, 21, 64, 48)], A)
    before_setup = client.post("/predict", json=body)
    assert before_setup.status_code == 502 and "LABEL_STUDIO_URL" in before_setup.get_json()["error"]
    setup = client.post(
        "/setup",
        json={
            "project": body["project"],
            "schema": body["label_config"],
            "hostname": url,
            "access_token": "good-token",
        },
    )
    assert setup.status_code == 200
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    np.testing.assert_array_equal(decode_brush(response.get_json()["results"][0]["result"][0]), expected)


# ----------------------------------------------------------------------------- results
def test_polygons_follow_components_and_fill_holes():
    from skimage.draw import disk
    from skimage.draw import polygon as fill_polygon

    from labelstudio_backend.label_config import OutputTarget
    from labelstudio_backend.results import polygon_results

    mask = np.zeros((80, 120), bool)
    mask[disk((40, 35), 25, shape=mask.shape)] = True
    mask[disk((40, 35), 6, shape=mask.shape)] = False  # a hole: Label Studio polygons have none
    mask[10:30, 80:110] = True
    target = OutputTarget("image", "image", "poly", "polygonlabels", ("Cell",))
    items = polygon_results(mask, target, None, tolerance=0.5)
    assert len(items) == 2 and all(i["value"]["polygonlabels"] == ["Cell"] for i in items)
    filled = mask.copy()
    filled[disk((40, 35), 6, shape=mask.shape)] = True
    drawn = np.zeros_like(mask)
    for item in items:
        points = np.array(item["value"]["points"])
        rr, cc = fill_polygon(points[:, 1] * 80 / 100 - 0.5, points[:, 0] * 120 / 100 - 0.5, mask.shape)
        drawn[rr, cc] = True
    assert (drawn & filled).sum() / (drawn | filled).sum() > 0.95


def test_prompt_percent_to_pixels_and_rotated_box():
    from labelstudio_backend.prompts import parse_context

    prompt = parse_context(
        {
            "result": [
                keypoint(30, 12, 120, 80, region_id="k"),
                keypoint(60, 40, 120, 80, positive=False, region_id="n"),
            ]
        }
    )
    coords, labels, box = prompt.in_pixels(80, 120)
    np.testing.assert_allclose(coords, [[30, 12], [60, 40]])
    assert labels.tolist() == [1, 0] and box is None and not prompt.multimask
    assert prompt.original_size == (80, 120) and prompt.region_ids == ("k", "n")

    from ls_requests import rectangle

    rotated = parse_context({"result": [rectangle(40, 20, 80, 30, 120, 80, rotation=90)]})
    _, _, box = rotated.in_pixels(80, 120)
    np.testing.assert_allclose(box, [30, 20, 40, 60], atol=1e-9)  # 40 x 10 turned about (40, 20)


# ----------------------------------------------------------------------------- CLI
def test_cli_usage_errors(capsys):
    from mobilesam.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["labelstudio", "precompute", "--project", "1", "--url", "", "--api-key", ""])
    assert exc.value.code == 2 and "--url and --api-key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["labelstudio", "precompute", "--project", "1", "--url", "ls:8080", "--api-key", "t"])
    assert exc.value.code == 2 and "http://" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "70000"])
    assert exc.value.code == 2 and "--port" in capsys.readouterr().err


# ----------------------------------------------------------------------------- automatic masks
def test_non_interactive_automatic_masks_one_result_per_mask(
    make_backend, memory_images, vit_t_model, monkeypatch
):
    """MOBILESAM_AUTO_MASKS: segment_anything's generator API (`generate(image)` -> records) becomes one
    brush result per mask, largest first; a task whose image fails gets an empty list (no prediction)."""
    import mobilesam
    from labelstudio_backend.api import create_app

    seen = []

    class Generator:  # the core's SamAutomaticMaskGenerator contract, with fixed masks
        def __init__(self, predictor, **options):  # a predictor on the server's model and backend
            assert predictor.model is vit_t_model and options == {
                "points_per_side": 32,
                "pred_iou_thresh": 0.88,
                "stability_score_thresh": 0.95,
            }
            self.predictor = predictor

        def generate(self, image, cancel=None, embedding=None):
            # the image's cached embedding is handed over, not encoded again
            assert embedding is not None and tuple(embedding.original_size) == image.shape[:2]
            seen.append(image.shape)
            small, large = np.zeros(image.shape[:2], bool), np.zeros(image.shape[:2], bool)
            small[2:6, 2:6] = True
            large[10:30, 10:40] = True
            return [
                {"segmentation": small, "area": 16, "predicted_iou": 0.9},
                {"segmentation": large, "area": 600, "predicted_iou": 0.7},
            ]

    monkeypatch.setattr(mobilesam, "SamAutomaticMaskGenerator", Generator, raising=False)
    backend = make_backend(image_loader=memory_images, model_loader=lambda: vit_t_model, auto_masks=True)
    body = predict_body(None, A)
    body["tasks"].append({"id": 2, "data": {"image": "/data/upload/1/missing.png"}})
    response = create_app(backend).test_client().post("/predict", json=body)
    assert response.status_code == 200
    first, second = response.get_json()["results"]
    assert seen == [(48, 64, 3)]
    assert [decode_brush(item).sum() for item in first["result"]] == [600, 16]
    assert first["score"] == pytest.approx(0.8)
    assert second == []  # nothing stored for it: Label Studio asks again next time


def test_wsgi_script_serves_as_label_studio_ml_runs_it(vit_t_checkpoint, tmp_path):
    """`python labelstudio_backend/_wsgi.py --host H --port P` (what `label-studio-ml start` runs)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).resolve().parents[2] / "labelstudio_backend" / "_wsgi.py"
    env = dict(os.environ, MOBILESAM_CHECKPOINT=str(vit_t_checkpoint), MOBILESAM_EMBEDDING_DIR="off")
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model-dir",
                "/ignored",
            ],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert server.poll() is None, log.read_text()
        assert health.status_code == 200 and health.json()["status"] == "UP"
        versions = requests.get(f"http://127.0.0.1:{port}/versions", timeout=5).json()["versions"]
        assert versions[0].startswith("mobilesam-vit_t-")
    finally:
        server.terminate()
        server.wait(30)
