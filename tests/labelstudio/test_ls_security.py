"""Security and reliability of the Label Studio backend (issue 13): where the token goes, which hosts
images come from, bounded downloads, claimed sizes, decompression bombs, bad requests, caches that
survive a crash, a port in use. "Other hosts", slow hosts, redirects and big bodies are local
127.0.0.1 servers; every check here failed before the fetch policy existed."""

import io
import json
import socket
import threading
import time
import zlib

import numpy as np
import pytest
import tifffile
from ls_requests import decode_brush, keypoint, predict_body, rectangle
from PIL import Image

A = "/data/upload/1/a.png"  # 48 x 64


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bomb_bytes(side=30720, tile=1024):
    """A zlib TIFF of zeros, side x side pixels (944 M for the default) in under 1 MB, written from one
    pre-compressed tile (so making it costs milliseconds)."""
    encoded = zlib.compress(bytes(tile * tile), 9)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        (encoded for _ in range((side // tile) ** 2)),
        shape=(side, side),
        dtype="uint8",
        tile=(tile, tile),
        compression="zlib",
    )
    return buffer.getvalue()


class Host:
    """A local HTTP server answering `routes[path] -> (status, headers, body or generator)`, recording
    (path, Authorization header) of every request."""

    def __init__(self, routes=None):
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request, Response

        self.routes = dict(routes or {})
        self.seen = []

        @Request.application
        def app(request):
            self.seen.append((request.full_path.rstrip("?"), request.headers.get("Authorization")))
            status, headers, body = self.routes.get(
                request.full_path.rstrip("?"), self.routes.get(request.path, (404, {}, b"not found"))
            )
            return Response(body, status=status, headers=headers, direct_passthrough=True)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.hostport = f"127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()


@pytest.fixture
def hosts():
    made = []

    def make(routes=None):
        made.append(Host(routes))
        return made[-1]

    yield make
    for host in made:
        host.close()


@pytest.fixture
def silent_host():
    """Accepts connections and never answers (a black hole behind a firewall, or a slowloris target)."""
    sock = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    sock.close()


def loader(**policy):
    from labelstudio_backend.images import FetchPolicy, ImageLoader

    max_fetches = policy.pop("max_fetches", 4)
    return ImageLoader(FetchPolicy(**policy), max_fetches=max_fetches)


# ----------------------------------------------------------------------------- 1 token exfiltration
def test_setup_hostname_never_receives_the_operator_token(make_backend, vit_t_model, ls_images, hosts):
    from labelstudio_backend.api import create_app

    label_studio = hosts({A: (200, {}, png_bytes(ls_images[A]))})
    attacker = hosts({A: (200, {}, png_bytes(ls_images[A]))})
    body = predict_body([keypoint(28, 21, 64, 48)], A)

    # The operator configured LABEL_STUDIO_URL: a /setup naming another host changes nothing.
    configured = create_app(
        make_backend(
            model_loader=lambda: vit_t_model,
            label_studio_url=label_studio.url,
            label_studio_api_key="operator-secret",
        )
    ).test_client()
    assert (
        configured.post(
            "/setup", json={"project": body["project"], "hostname": attacker.url, "access_token": "whatever"}
        ).status_code
        == 200
    )
    answer = configured.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    assert attacker.seen == []
    assert (A, "Token operator-secret") in label_studio.seen

    label_studio_seen = len(label_studio.seen)
    # Nothing configured but the token: a /setup hostname serves its own project, with its own token only.
    unconfigured = create_app(
        make_backend(model_loader=lambda: vit_t_model, label_studio_api_key="operator-secret")
    ).test_client()
    assert (
        unconfigured.post(
            "/setup", json={"project": "7.1", "hostname": attacker.url, "access_token": "setup-token"}
        ).status_code
        == 200
    )
    other_project = dict(predict_body([keypoint(28, 21, 64, 48)], "/data/upload/1/other.png"), project="8.1")
    refused = unconfigured.post("/predict", json=other_project)
    assert refused.status_code == 502 and "LABEL_STUDIO_URL" in refused.get_json()["error"]
    assert unconfigured.post("/predict", json=dict(body, project="7.1")).status_code == 200
    assert {auth for _, auth in attacker.seen} == {"Token setup-token"}
    assert len(label_studio.seen) == label_studio_seen


def test_token_only_for_label_studio_file_paths(hosts, ls_images):
    from labelstudio_backend.images import ImageRefused

    label_studio = hosts({"/static/a.png": (200, {}, png_bytes(ls_images[A]))})
    with pytest.raises(ImageRefused, match="not one of Label Studio's file paths"):
        loader()(f"{label_studio.url}/static/a.png", label_studio.url, "tok", 10**6)
    image = loader(label_studio_url=label_studio.url)(
        f"{label_studio.url}/static/a.png", label_studio.url, "tok", 10**6
    )
    assert image.shape == (48, 64, 3)
    assert label_studio.seen == [("/static/a.png", None)]  # fetched, without the token


# ----------------------------------------------------------------------------- 2 open proxy / SSRF
def test_only_label_studio_and_allowed_hosts(hosts, ls_images):
    from labelstudio_backend.images import ImageRefused

    label_studio = hosts()
    other = hosts({"/x.png": (200, {}, png_bytes(ls_images[A]))})
    with pytest.raises(ImageRefused, match="neither Label Studio .* nor in MOBILESAM_ALLOWED_IMAGE_HOSTS"):
        loader()(f"{other.url}/x.png", label_studio.url, "tok", 10**6)
    # Allowed by the operator, but loopback: refused while SSRF protection is on (Label Studio's default).
    with pytest.raises(ImageRefused, match=r"reserved address \(127\.0\.0\.0/8\)"):
        loader(allowed_hosts=(other.hostport,))(f"{other.url}/x.png", label_studio.url, "tok", 10**6)
    assert other.seen == []
    for allowed in (other.hostport, "127.0.0.1", "*"):
        image = loader(allowed_hosts=(allowed,), ssrf_protection=False)(
            f"{other.url}/x.png", label_studio.url, "tok", 10**6
        )
        assert image.shape == (48, 64, 3)
    assert other.seen == [("/x.png", None)] * 3  # never the token
    for bad in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1/", "http:///nohost"):
        with pytest.raises(ImageRefused):
            loader()(bad, label_studio.url, "tok", 10**6)


def test_redirects_are_checked_hop_by_hop(hosts, ls_images):
    from labelstudio_backend.images import ImageRefused

    internal = hosts({"/metrics": (200, {}, b"{}"), "/a.png": (200, {}, png_bytes(ls_images[A]))})
    public = hosts(
        {
            "/to-internal": (302, {"Location": f"{internal.url}/metrics"}, b""),
            "/to-self": (302, {"Location": "/a.png"}, b""),
            "/a.png": (200, {}, png_bytes(ls_images[A])),
        }
    )
    label_studio = hosts(
        {
            "/data/upload/1/r.png": (302, {"Location": f"{internal.url}/a.png"}, b""),
            "/data/upload/1/loop.png": (302, {"Location": "/data/upload/1/loop.png"}, b""),
        }
    )
    allow_public = loader(allowed_hosts=(public.hostport,), ssrf_protection=False)
    with pytest.raises(ImageRefused, match="neither Label Studio"):
        allow_public(f"{public.url}/to-internal", label_studio.url, "tok", 10**6)
    assert allow_public(f"{public.url}/to-self", label_studio.url, "tok", 10**6).shape == (48, 64, 3)
    # Label Studio may redirect (presigned storage URLs), but not to a private address ...
    with pytest.raises(ImageRefused, match="reserved address"):
        loader()("/data/upload/1/r.png", label_studio.url, "tok", 10**6)
    assert internal.seen == []
    # ... and the token stays behind when it redirects elsewhere.
    assert loader(ssrf_protection=False)("/data/upload/1/r.png", label_studio.url, "tok", 10**6).shape == (
        48,
        64,
        3,
    )
    assert internal.seen == [("/a.png", None)]
    from labelstudio_backend.images import ImageFetchError

    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        loader()("/data/upload/1/loop.png", label_studio.url, "tok", 10**6)


def test_backend_refuses_a_task_pointing_at_another_service(make_backend, vit_t_model, hosts):
    """Through the API: a task whose image is another local service is a 403 naming the rule, not a fetch."""
    from labelstudio_backend.api import create_app

    label_studio, service = hosts(), hosts({"/metrics": (200, {}, b"{}")})
    backend = make_backend(
        model_loader=lambda: vit_t_model, label_studio_url=label_studio.url, label_studio_api_key="tok"
    )
    answer = (
        create_app(backend)
        .test_client()
        .post("/predict", json=predict_body([keypoint(5, 5, 64, 48)], f"{service.url}/metrics"))
    )
    assert answer.status_code == 403 and "MOBILESAM_ALLOWED_IMAGE_HOSTS" in answer.get_json()["error"]
    assert service.seen == []


# ----------------------------------------------------------------------------- 3 bounded downloads
def test_downloads_are_bounded_in_size(hosts, ls_images):
    from labelstudio_backend.images import ImageTooLargeError

    def stream(n_chunks):  # no Content-Length: only counting the bytes can stop it
        for _ in range(n_chunks):
            yield b"\0" * (64 << 10)

    big = hosts(
        {
            "/declared.png": (200, {"Content-Length": str(200 << 20)}, stream(1)),
            "/streamed.png": (200, {}, stream(3200)),
        }
    )  # 200 MB
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="MOBILESAM_MAX_DOWNLOAD_MB=1"):
        loader(allowed_hosts=("*",), ssrf_protection=False, max_bytes=1 << 20)(
            f"{big.url}/declared.png", "", "", 10**6
        )
    with pytest.raises(ImageTooLargeError, match="larger than MOBILESAM_MAX_DOWNLOAD_MB=1"):
        loader(allowed_hosts=("*",), ssrf_protection=False, max_bytes=1 << 20)(
            f"{big.url}/streamed.png", "", "", 10**6
        )
    assert time.perf_counter() - started < 10


def test_silent_and_dripping_hosts_time_out(hosts, silent_host):
    from labelstudio_backend.images import ImageFetchError

    def drip():
        for _ in range(100):
            time.sleep(0.2)
            yield b"\0"

    dripping = hosts({"/drip.png": (200, {}, drip())})
    fetch = loader(allowed_hosts=("*",), ssrf_protection=False, timeout=0.5, deadline=1.5)
    started = time.perf_counter()
    with pytest.raises(ImageFetchError, match="ReadTimeout"):
        fetch(f"{silent_host}/a.png", "", "", 10**6)
    assert time.perf_counter() - started < 3
    started = time.perf_counter()
    with pytest.raises(ImageFetchError, match="MOBILESAM_FETCH_DEADLINE=1.5"):
        fetch(f"{dripping.url}/drip.png", "", "", 10**6)  # every byte within the timeout, never done
    assert time.perf_counter() - started < 4


def test_slow_fetches_never_take_every_thread(make_backend, memory_images, vit_t_model, silent_host):
    """With every fetch slot held by a host that never answers, the next new image is a 503 at once and
    /health and clicks on cached images answer."""
    from labelstudio_backend.api import create_app

    backend = make_backend(
        model_loader=lambda: vit_t_model,
        allowed_image_hosts=("*",),
        ssrf_protection=False,
        max_fetches=2,
        fetch_timeout=3.0,
        label_studio_url="http://127.0.0.1:9",
        label_studio_api_key="tok",
    )
    client = create_app(backend).test_client()
    backend.cache.put((A, backend.model_version), _embedding_of(vit_t_model, memory_images.images[A]))
    slow = [
        threading.Thread(
            target=client.post,
            args=("/predict",),
            kwargs={"json": predict_body([keypoint(5, 5, 64, 48)], f"{silent_host}/{i}.png")},
        )
        for i in range(2)
    ]
    for thread in slow:
        thread.start()
    slots = (
        backend._image_loader._slots
    )  # wait until both slow fetches really hold a slot (a loaded CI is slow)
    deadline = time.perf_counter() + 20
    while slots._value > 0 and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert slots._value == 0, "the two slow fetches never started"
    started = time.perf_counter()
    busy = client.post("/predict", json=predict_body([keypoint(5, 5, 64, 48)], f"{silent_host}/third.png"))
    assert busy.status_code == 503 and "MOBILESAM_MAX_FETCHES" in busy.get_json()["error"]
    assert client.get("/health").status_code == 200
    cached = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    assert cached.status_code == 200, cached.get_json()
    assert time.perf_counter() - started < 2.5  # all while the two slow fetches still hang
    for thread in slow:
        thread.join(10)


def _embedding_of(model, image):
    import mobilesam

    predictor = mobilesam.SamPredictor(model)
    predictor.set_image(image)
    return predictor.get_embedding_state()


# ----------------------------------------------------------------------------- 4 amplification
@pytest.mark.parametrize(
    "width, height, status, message",
    [
        (16000, 12000, 413, "MOBILESAM_MAX_IMAGE_PIXELS"),  # 4:3 like the image, 250x its sides
        (8000, 6000, 422, "does not match image"),  # within the pixel limit, 125x the image's sides
        (640, 480, 422, "does not match image"),
        (64, 64, 422, "does not match image"),
        (10**6, 10**6, 413, "MOBILESAM_MAX_IMAGE_PIXELS"),
        (1e300, 1e300, 400, "original_width"),
        ("Infinity", 48, 400, "original_width"),
        ("NaN", 48, 400, "original_width"),
        (-64, 48, 400, "original_width"),
    ],
)
def test_claimed_image_size_is_checked_first(client, width, height, status, message):
    item = keypoint(28, 21, 64, 48)
    item["original_width"], item["original_height"] = width, height
    raw = json.dumps(predict_body([item], A)).replace('"Infinity"', "Infinity").replace('"NaN"', "NaN")
    answer = client.post("/predict", data=raw, content_type="application/json")
    assert answer.status_code == status and message in answer.get_json()["error"], answer.get_json()


def test_claimed_size_within_twice_the_image_still_works(client):
    answer = client.post("/predict", json=predict_body([keypoint(56, 42, 128, 96)], A))
    assert answer.status_code == 200
    item = answer.get_json()["results"][0]["result"][0]
    assert (item["original_width"], item["original_height"]) == (128, 96) and decode_brush(item).shape == (
        96,
        128,
    )


# ----------------------------------------------------------------------------- 5 decompression bombs
def test_bombs_are_refused_from_the_header(hosts, tmp_path):
    from labelstudio_backend.images import ImageTooLargeError
    from mobilesam.io import ImageTooLargeError as CoreTooLarge
    from mobilesam.io import check_pixel_limit, read_image

    tiff = tiff_bomb_bytes()
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, format="PNG")  # 400 M pixels in ~390 KB
    png = buffer.getvalue()
    (tmp_path / "bomb.tif").write_bytes(tiff)
    (tmp_path / "bomb.png").write_bytes(png)
    started = time.perf_counter()
    with pytest.raises(CoreTooLarge, match=r"bomb\.tif has 943718400 pixels .*MOBILESAM_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "bomb.tif")
    with pytest.raises(CoreTooLarge, match=r"bomb\.png"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(CoreTooLarge):
        check_pixel_limit(io.BytesIO(tiff), 9 * 10**8)
    assert check_pixel_limit(io.BytesIO(tiff), 10**10) == (30720, 30720)  # header only, nothing decoded
    bombs = hosts({"/data/upload/1/bomb.tif": (200, {}, tiff), "/data/upload/1/bomb.png": (200, {}, png)})
    for name in ("bomb.tif", "bomb.png"):
        with pytest.raises(ImageTooLargeError):
            loader()(f"/data/upload/1/{name}", bombs.url, "tok", 100_000_000)
    assert time.perf_counter() - started < 10


def test_cli_refuses_a_bomb_with_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bomb.tif").write_bytes(tiff_bomb_bytes())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilesam",
            "segment",
            str(tmp_path / "bomb.tif"),
            "--point",
            "5,5",
            "-o",
            str(tmp_path / "out.tif"),
            "--no-download",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        run.returncode == 1 and "MOBILESAM_MAX_IMAGE_PIXELS" in run.stderr and "Traceback" not in run.stderr
    )
    assert not (tmp_path / "out.tif").exists()


# ----------------------------------------------------------------------------- 6 bad requests
def _nested(depth):
    return '{"tasks": ' + "[" * depth + "]" * depth + "}"


def _with_rotation(rotation):
    item = rectangle(10, 10, 30, 30, 64, 48)
    item["value"]["rotation"] = rotation
    return json.dumps(predict_body([item], A)).replace('"__inf__"', "Infinity")


BAD_REQUESTS = [
    # (name, raw body, expected status, words in the message)
    (
        "5000 keypoints",
        json.dumps(
            predict_body([keypoint(i % 64, i % 48, 64, 48, region_id=f"k{i}") for i in range(5000)], A)
        ),
        413,
        "MOBILESAM_MAX_PROMPT_REGIONS",
    ),
    ("nested 100000 deep", _nested(100_000), 400, "nested too deep"),
    ("nested 100 deep", _nested(100), 400, "tasks"),
    ("rotation Infinity", _with_rotation("__inf__"), 400, "rotation"),
    ("rotation abc", _with_rotation("abc"), 400, "rotation"),
    ("rotation [1]", _with_rotation([1]), 400, "rotation"),
    ("rotation true", _with_rotation(True), 400, "rotation"),
    ("not JSON", "{tasks:", 400, "not valid JSON"),
    ("JSON list", "[1, 2]", 400, "JSON object"),
    ("no tasks", "{}", 400, "tasks"),
    ("tasks a string", '{"tasks": "x"}', 400, "tasks"),
    ("params a list", json.dumps({"tasks": [], "params": [1]}), 400, "params"),
    ("label_config a number", json.dumps({"tasks": [], "label_config": 5}), 400, "label_config"),
    ("context a string", json.dumps(dict(predict_body([], A), params={"context": "x"})), 400, "context"),
    ("context result empty", json.dumps(predict_body([], A)), 400, "non-empty"),
    ("item not an object", json.dumps(predict_body([5], A)), 400, "object"),
    (
        "unknown type",
        json.dumps(predict_body([dict(keypoint(5, 5, 64, 48), type="brushlabels")], A)),
        400,
        "type",
    ),
    (
        "x NaN",
        json.dumps(predict_body([keypoint(5, 5, 64, 48)], A)).replace('"x": 7.8125', '"x": NaN'),
        400,
        "finite",
    ),
    (
        "x 1e309",
        json.dumps(predict_body([keypoint(5, 5, 64, 48)], A)).replace('"x": 7.8125', '"x": 1e309'),
        400,
        "finite",
    ),
    ("x outside", json.dumps(predict_body([keypoint(500, 5, 64, 48)], A)), 400, "outside"),
    (
        "x a string",
        json.dumps(predict_body([keypoint(5, 5, 64, 48)], A)).replace('"x": 7.8125', '"x": "7"'),
        400,
        "finite",
    ),
    ("box negative", json.dumps(predict_body([rectangle(30, 30, 10, 10, 64, 48)], A)), 400, "negative"),
    (
        "two tasks interactive",
        json.dumps(
            dict(predict_body([keypoint(5, 5, 64, 48)], A), tasks=[{"id": 1, "data": {"image": A}}] * 2)
        ),
        400,
        "one task",
    ),
    (
        "task without data",
        json.dumps(dict(predict_body([keypoint(5, 5, 64, 48)], A), tasks=[{"id": 1}])),
        400,
        "data",
    ),
    ("image url a number", json.dumps(predict_body([keypoint(5, 5, 64, 48)], 5)), 400, "image URL"),
    (
        "bad label config",
        json.dumps(dict(predict_body([keypoint(5, 5, 64, 48)], A), label_config="<View")),
        422,
        "",
    ),
    (
        "label_config of 2 MB",
        json.dumps(
            dict(
                predict_body([keypoint(5, 5, 64, 48)], A), label_config="<View>" + " " * (2 << 20) + "</View>"
            )
        ),
        413,
        "characters",
    ),
    ("webhook without action", "{}", 400, "action"),
    ("setup body a list", "[]", 400, "JSON object"),
    ("setup schema an object", json.dumps({"project": "1.1", "schema": {"View": 1}}), 400, "schema"),
    (
        "setup schema of 2 MB",
        json.dumps({"project": "1.1", "schema": "<View>" + " " * (2 << 20) + "</View>"}),
        413,
        "characters",
    ),
    (
        "setup hostname of 1 MB",
        json.dumps({"project": "1.1", "hostname": "http://" + "a" * (1 << 20)}),
        400,
        "implausibly long",
    ),
]
SETUP_CASES = {
    "setup body a list",
    "setup schema an object",
    "setup schema of 2 MB",
    "setup hostname of 1 MB",
}


@pytest.mark.parametrize("name, raw, status, words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx(client, name, raw, status, words):
    path = "/webhook" if name.startswith("webhook") else "/setup" if name in SETUP_CASES else "/predict"
    started = time.perf_counter()
    answer = client.post(path, data=raw, content_type="application/json")
    error = answer.get_json()["error"]
    assert 400 <= answer.status_code < 500, (answer.status_code, error)
    assert answer.status_code == status, (answer.status_code, error)
    assert words in error
    assert time.perf_counter() - started < 5  # bounded cost


def test_request_body_limit(make_backend, memory_images, vit_t_model):
    from labelstudio_backend.api import create_app

    client = create_app(
        make_backend(image_loader=memory_images, model_loader=lambda: vit_t_model, max_request_bytes=1 << 20)
    ).test_client()
    answer = client.post(
        "/predict", data=b'{"tasks": [' + b" " * (2 << 20) + b"]}", content_type="application/json"
    )
    assert answer.status_code == 413 and "MOBILESAM_MAX_REQUEST_MB" in answer.get_json()["error"]


# ----------------------------------------------------------------------------- 11 caches after a crash
def test_no_download_cache_to_poison(hosts, ls_images, tmp_path, monkeypatch):
    """A half-written file where label-studio-sdk kept its download cache (what a kill -9 left behind)
    is never read: downloads are anonymous temporary files."""
    import hashlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    label_studio = hosts({A: (200, {}, png_bytes(ls_images[A]))})
    cache = tmp_path / "label-studio"
    cache.mkdir()
    good = png_bytes(ls_images[A])
    for target in (
        f"{label_studio.url}/storage-data/uploaded/?filepath=upload/1/a.png",
        f"{label_studio.url}{A}",
    ):
        name = hashlib.md5(target.encode()).hexdigest()[:8] + "__a.png"
        (cache / name).write_bytes(good[: len(good) // 2])
    np.testing.assert_array_equal(loader()(A, label_studio.url, "tok", 10**6), ls_images[A])


def test_embedding_store_removes_parts_and_bad_entries(tmp_path, vit_t_model, ls_images):
    import os
    import subprocess
    import sys

    import torch

    from labelstudio_backend.embedding_cache import EmbeddingStore

    store = EmbeddingStore(tmp_path)
    key = (A, "model-x")
    state = _embedding_of(vit_t_model, ls_images[A])
    path = store.save(key, state)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    part = path.with_name(f"{path.name}.{dead}.1.part")
    part.write_bytes(path.read_bytes()[:1000])  # a writer killed mid-write
    fresh = path.with_name(f"{path.name}.{os.getppid()}.1.part")  # a live writer's: kept
    fresh.write_bytes(b"x")
    EmbeddingStore(tmp_path)
    assert not part.exists() and fresh.exists()
    # An entry that loads but holds NaN (silent garbage) is a miss, and removed.
    data = torch.load(path, weights_only=True)
    data["features"] = torch.full_like(data["features"], float("nan"))
    torch.save(data, path)
    assert store.load(key) is None and not path.exists()


# ----------------------------------------------------------------------------- 13 port in use
def test_serve_on_a_port_in_use_says_so(tmp_path):
    import os
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "mobilesam", "serve", "--port", str(port), "--no-download"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, MOBILESAM_EMBEDDING_DIR="off"),
        )
    assert run.returncode == 1, run.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in run.stderr
    assert "terminate called" not in run.stderr and "Traceback" not in run.stderr


def test_settings_reject_bad_limits():
    from labelstudio_backend.settings import Settings

    for env, words in [
        ({"MOBILESAM_FETCH_TIMEOUT": "inf"}, "MOBILESAM_FETCH_TIMEOUT"),
        ({"MOBILESAM_FETCH_DEADLINE": "nan"}, "MOBILESAM_FETCH_DEADLINE"),
        ({"MOBILESAM_MAX_FETCHES": "0"}, "MOBILESAM_MAX_FETCHES"),
        ({"MOBILESAM_MAX_DOWNLOAD_MB": "x"}, "MOBILESAM_MAX_DOWNLOAD_MB"),
        ({"USER_ADDITIONAL_BANNED_SUBNETS": "10.0.0.0/8,nonsense"}, "nonsense"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "http://"),
        ({"SSRF_PROTECTION_ENABLED": "maybe"}, "SSRF_PROTECTION_ENABLED"),
    ]:
        with pytest.raises(ValueError, match=words):
            Settings.from_env(env)
    settings = Settings.from_env(
        {
            "MOBILESAM_ALLOWED_IMAGE_HOSTS": " a.com, *.b.org:443 ,",
            "USE_DEFAULT_BANNED_SUBNETS": "0",
            "USER_ADDITIONAL_BANNED_SUBNETS": "10.0.0.0/8",
        }
    )
    assert settings.allowed_image_hosts == ("a.com", "*.b.org:443") and settings.banned_subnets == (
        "10.0.0.0/8",
    )
