"""Load test of the Label Studio ML backend: N concurrent annotators clicking on M images.

    .venv/bin/python benchmarks/bench_labelstudio_load.py [--clients 8] [--images 12] [--clicks 15]

Starts, on 127.0.0.1 only: an image server shaped like Label Studio's file serving (token
required), and the backend under gunicorn (`-w 1 --threads N`, the production setup) on a
random-weight checkpoint (or --checkpoint). Requests are /predict bodies as Label Studio sends
them, each task carrying earlier brush annotations as real tasks do.

Phase 0, uncached, one client: the first click on 3 extra images, one after another (fetch +
encoder + decoder, no queueing).
Phase 1, uncached, all clients at once: the first click on each of the M images (they queue for
the one encoder).
Phase 2, cached, one client: K clicks one after another (decoder + RLE, no queueing).
Phase 3, cached, all clients at once with no pause between clicks: N x K clicks (saturation; the
decoder is one lock, and label-studio-sdk's RLE encoder is pure Python, so clicks queue).
Phase 4, hostile (--hostile-clients, default 4, 0 skips it): while the clients of phase 3 click
again, hostile clients send clicks whose image hangs on a slow host (the image server never answers
`/data/upload/1/slow*`) and bad requests (5,000 keypoints, JSON nested 100,000 deep, rotation
Infinity/"abc"/[1], a claimed size of 16000x12000 or 1e6x1e6, a URL on another host), and a prober
polls /health. Reports the hostile answers by status (a 500 is an error), /health latency
(p50/p99/max) and cached-click p50 under attack over phase 3's.
Reports p50/p99 latency of each, the ratio uncached/cached (what the embedding cache buys),
errors (must be 0; exit status 1 otherwise) and the server's idle, peak and final RSS.
"""

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
SEQUENTIAL_UNCACHED = 3
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="Object"/></BrushLabels>
</View>"""


def synthetic_png(height, width, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 97 * 2], -1).astype(np.float32)
    for _ in range(6):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(15, 60)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def start_image_server(files):
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    @Request.application
    def app(request):
        if request.path.startswith("/data/upload/1/slow"):
            time.sleep(60)  # a host that accepts and never answers (bounded by the backend's fetch timeout)
        if request.headers.get("Authorization") != f"Token {TOKEN}":
            return Response("unauthorized", status=401)
        body = files.get(request.path)
        return Response(body, mimetype="image/png") if body else Response("not found", status=404)

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per image request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prior_annotations(height, width, count):
    """Brush annotations a task already carries: Label Studio sends them with every click."""
    from label_studio_sdk.converter.brush import mask2rle

    results = []
    for i in range(count):
        mask = np.zeros((height, width), np.uint8)
        mask[i * 10 : i * 10 + height // 3, i * 15 : i * 15 + width // 3] = 255
        results.append(
            {
                "id": f"old{i}",
                "from_name": "brush",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": [int(v) for v in mask2rle(mask)],
                    "brushlabels": ["Object"],
                },
            }
        )
    return [{"id": 1, "result": results}]


def click_body(url, task_id, x, y, width, height, annotations, click_id):
    item = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x / width * 100,
            "y": y / height * 100,
            "width": 0.5,
            "keypointlabels": ["Object"],
            "labels": ["Object"],
        },
        "is_positive": True,
        "id": click_id,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    task = {
        "id": task_id,
        "data": {"image": url},
        "annotations": annotations,
        "drafts": [],
        "predictions": [],
    }
    return json.dumps(
        {
            "tasks": [task],
            "project": "1.1700000000",
            "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": [item]}},
        }
    )


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop_event = threading.Event()

    def rss(self):
        processes = [self.process] + self.process.children(recursive=True)
        return sum(p.memory_info().rss for p in processes if p.is_running())

    def run(self):
        while not self.stop_event.wait(0.1):
            self.peak = max(self.peak, self.rss())


def hostile_bodies(width, height):
    """(name, raw body) of requests a hostile or broken client sends."""

    def body(items, url="/data/upload/1/img0.png"):
        data = json.loads(click_body(url, 1, 10, 10, width, height, [], "h"))
        if items is not None:
            data["params"]["context"]["result"] = items
        return data

    point = json.loads(click_body("x", 1, 10, 10, width, height, [], "h"))["params"]["context"]["result"][0]
    rect = dict(
        point,
        type="rectanglelabels",
        value={"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["Object"]},
    )
    cases = [("slow host", json.dumps(body(None, "/data/upload/1/slow{n}.png")))]
    cases.append(("5000 keypoints", json.dumps(body([dict(point, id=f"k{i}") for i in range(5000)]))))
    cases.append(("nested 100000 deep", '{"tasks": ' + "[" * 100_000 + "]" * 100_000 + "}"))
    for rotation in ("Infinity", '"abc"', "[1]"):
        cases.append(
            (
                f"rotation {rotation}",
                json.dumps(body([dict(rect, value=dict(rect["value"], rotation=1234.5))])).replace(
                    "1234.5", rotation
                ),
            )
        )
    for w, h in ((16000, 12000), (10**6, 10**6)):
        cases.append(
            (f"claimed {w}x{h}", json.dumps(body([dict(point, original_width=w, original_height=h)])))
        )
    cases.append(("other host", json.dumps(body(None, "http://127.0.0.1:9/metrics"))))
    return cases


def percentiles(values):
    data = np.asarray(values) * 1000
    return float(np.percentile(data, 50)), float(np.percentile(data, 99))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--clicks", type=int, default=15, help="cached clicks per client")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--annotations", type=int, default=5, help="earlier brush annotations per task")
    parser.add_argument("--checkpoint", help="weights (default: random vit_t weights, written to a temp dir)")
    parser.add_argument(
        "--hostile-clients", type=int, default=4, help="phase 4's hostile clients (0: no phase 4)"
    )
    parser.add_argument(
        "--hostile-rounds", type=int, default=2, help="times each hostile client sends every case"
    )
    args = parser.parse_args()

    import requests

    from mobilesam.testing import save_random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    checkpoint = args.checkpoint or str(save_random_checkpoint(work / "random_vit_t.pt", "vit_t", seed=0))
    files = {
        f"/data/upload/1/img{i}.png": synthetic_png(args.height, args.width, i)
        for i in range(args.images + SEQUENTIAL_UNCACHED)
    }
    image_server = start_image_server(files)
    ls_url = f"http://127.0.0.1:{image_server.server_port}"

    port = free_port()
    env = dict(
        os.environ,
        MOBILESAM_CHECKPOINT=checkpoint,
        MOBILESAM_EMBEDDING_DIR="off",
        MOBILESAM_CACHE_SIZE=str(max(32, args.images + SEQUENTIAL_UNCACHED)),
        LABEL_STUDIO_URL=ls_url,
        LABEL_STUDIO_API_KEY=TOKEN,
        XDG_CACHE_HOME=str(work / "cache"),
        LOG_LEVEL="WARNING",
    )
    server_log = open(work / "server.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "--threads",
            str(args.clients),
            "-b",
            f"127.0.0.1:{port}",
            "--timeout",
            "300",
            "--log-level",
            "warning",
            "labelstudio_backend._wsgi:app",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=server_log,
    )
    backend = f"http://127.0.0.1:{port}"
    errors = []
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"backend did not start:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(backend + "/health", timeout=2).json().get("model_state") == "ready":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        sampler = RssSampler(server.pid)
        idle_rss = sampler.rss()
        sampler.start()
        annotations = prior_annotations(args.height, args.width, args.annotations)
        solo_urls, urls = list(files)[:SEQUENTIAL_UNCACHED], list(files)[SEQUENTIAL_UNCACHED:]
        session = threading.local()

        def click(url, index):
            if not hasattr(session, "http"):
                session.http = requests.Session()
            rng = random.Random(index)
            x, y = rng.uniform(0, args.width - 1), rng.uniform(0, args.height - 1)
            body = click_body(
                url, list(files).index(url) + 1, x, y, args.width, args.height, annotations, f"c{index}"
            )
            started = time.perf_counter()
            try:
                response = session.http.post(
                    backend + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=300
                )
                elapsed = time.perf_counter() - started
                result = response.json()["results"][0]["result"] if response.status_code == 200 else None
                if not result or result[0]["type"] != "brushlabels":
                    errors.append(f"{url}: HTTP {response.status_code} {response.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                elapsed = time.perf_counter() - started
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
            return elapsed

        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            solo_uncached = [click(url, 100 + i) for i, url in enumerate(solo_urls)]
            phase_start = time.perf_counter()
            uncached = list(pool.map(click, urls, range(len(urls))))
            uncached_wall = time.perf_counter() - phase_start
            sequential = [click(random.Random(i).choice(urls), 500 + i) for i in range(args.clicks)]
            jobs = [(random.Random(i).choice(urls), 1000 + i) for i in range(args.clients * args.clicks)]
            phase_start = time.perf_counter()
            cached = list(pool.map(lambda job: click(*job), jobs))
            cached_wall = time.perf_counter() - phase_start
            if args.hostile_clients:
                attacked, hostile, health = hostile_phase(args, backend, urls, click)
        sampler.stop_event.set()
        sampler.join()
        final_rss = sampler.rss()
        metrics = requests.get(backend + "/metrics", timeout=5).json()
    finally:
        server.terminate()
        server.wait(30)
        server_log.close()
        image_server.shutdown()

    o50, o99 = percentiles(solo_uncached)
    u50, u99 = percentiles(uncached)
    s50, s99 = percentiles(sequential)
    c50, c99 = percentiles(cached)
    cache = metrics["embedding_cache"]
    print(
        f"{args.clients} clients, {args.images} images {args.width}x{args.height}, "
        f"{args.annotations} earlier annotations per task, gunicorn -w 1 --threads {args.clients}"
    )
    print(f"uncached clicks, 1 client:  n={len(solo_uncached):4d}  p50 {o50:8.1f} ms  p99 {o99:8.1f} ms")
    print(
        f"uncached clicks, {args.clients} clients: n={len(uncached):4d}  p50 {u50:8.1f} ms  p99 {u99:8.1f} ms  "
        f"({len(uncached) / uncached_wall:.2f} clicks/s)"
    )
    print(f"cached clicks, 1 client:  n={len(sequential):4d}  p50 {s50:8.1f} ms  p99 {s99:8.1f} ms")
    print(
        f"cached clicks, {args.clients} clients: n={len(cached):4d}  p50 {c50:8.1f} ms  p99 {c99:8.1f} ms  "
        f"({len(cached) / cached_wall:.2f} clicks/s)"
    )
    print(
        f"cache speed-up: uncached p50 / cached p50 = {o50 / s50:.1f}x (1 client), {u50 / c50:.1f}x "
        f"({args.clients} clients)"
    )
    print(
        f"server embedding cache: {cache['items']} items, {cache['bytes'] / 2**20:.0f} MiB, "
        f"{cache['hits']} hits, {cache['misses']} misses; encoder ran {metrics['counters'].get('embeddings.encoded')} times"
    )
    print(
        f"server RSS: idle {idle_rss / 2**20:.0f} MiB, peak {sampler.peak / 2**20:.0f} MiB, "
        f"final {final_rss / 2**20:.0f} MiB"
    )
    if args.hostile_clients:
        quiet, health = health
        h50, h99 = percentiles(health)
        q50, _ = percentiles(quiet)
        a50, _ = percentiles(attacked)
        print(
            f"hostile: {args.hostile_clients} clients x {args.hostile_rounds} rounds, "
            f"{sum(hostile.values())} requests: " + ", ".join(f"{k}: {v}" for k, v in sorted(hostile.items()))
        )
        print(
            f"/health during the attack: n={len(health)}  p50 {h50:.1f} ms  p99 {h99:.1f} ms  "
            f"max {max(health) * 1000:.1f} ms; p50 = {h50 / q50:.1f}x /health p50 before the attack "
            f"({q50:.1f} ms)"
        )
        print(f"cached clicks during the attack: p50 {a50:.1f} ms = {a50 / c50:.2f}x phase 3's")
        errors.extend(
            f"hostile request answered {key}" for key, n in hostile.items() if key.startswith("500")
        )
    print(f"errors: {len(errors)}")
    for error in errors[:10]:
        print("  " + error)
    return 1 if errors else 0


def hostile_phase(args, backend, urls, click):
    """(cached-click latencies, {"status case": count}, /health latencies) while hostile clients send
    slow-host clicks and bad requests."""
    import requests

    cases = hostile_bodies(args.width, args.height)
    outcomes, health, lock = {}, [], threading.Lock()
    done = threading.Event()

    def attacker(client):
        with requests.Session() as http:
            for round_ in range(args.hostile_rounds):
                for name, raw in cases:
                    raw = raw.replace("{n}", f"{client}-{round_}")
                    try:
                        status = str(
                            http.post(
                                backend + "/predict",
                                data=raw,
                                timeout=120,
                                headers={"Content-Type": "application/json"},
                            ).status_code
                        )
                    except requests.RequestException as exc:
                        status = type(exc).__name__
                    with lock:
                        key = f"{status} {name}"
                        outcomes[key] = outcomes.get(key, 0) + 1

    def probe_once(http):
        started = time.perf_counter()
        try:
            http.get(backend + "/health", timeout=10).raise_for_status()
            return time.perf_counter() - started
        except requests.RequestException:
            return 10.0

    with requests.Session() as http:  # the same prober before the attack: the reference
        quiet = [probe_once(http) for _ in range(20)]

    def prober():
        with requests.Session() as http:
            while not done.is_set():
                health.append(probe_once(http))
                time.sleep(0.1)

    threads = [threading.Thread(target=attacker, args=(i,)) for i in range(args.hostile_clients)]
    probe = threading.Thread(target=prober)
    probe.start()
    for thread in threads:
        thread.start()
    with ThreadPoolExecutor(max_workers=max(1, args.clients - args.hostile_clients)) as pool:
        jobs = [(random.Random(i).choice(urls), 5000 + i) for i in range(args.clients * args.clicks)]
        attacked = list(pool.map(lambda job: click(*job), jobs))
    for thread in threads:
        thread.join()
    done.set()
    probe.join()
    return attacked, outcomes, (quiet, health)


if __name__ == "__main__":
    sys.exit(main())
