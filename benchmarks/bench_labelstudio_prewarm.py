"""First-click latency on a newly opened Label Studio task, without and with prewarm, through a real
Label Studio 1.23.2 and `mobilesam serve`, as a ratio to a cached click measured in the same run.

    python benchmarks/bench_labelstudio_prewarm.py [--tasks 3] [--size 480x640]

For each task: open it the way the labeling view does (GET /api/tasks/ID, which makes Label Studio
call /predict without a context), wait, then click the way the UI does after a smart keypoint
(POST /api/ml/ID/interactive-annotating), then click again (cached). The wait is one encoder time,
measured in the same run (the uncached first clicks without prewarm, less a cached click).
Goal: with prewarm, first click / cached click <= 1.2. Needs LABEL_STUDIO_BIN (or .venv-ls).
The model is a random-weight vit_t checkpoint (the arithmetic of the real weights).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "core"), str(REPO), str(REPO / "tests" / "labelstudio")]

from ls_requests import CONFIG_BRUSH, keypoint, make_test_image  # noqa: E402
from ls_server import TOKEN, free_port, start_label_studio, stop, template_key, wait_until  # noqa: E402


def start_backend(work: Path, checkpoint: Path, ls_url: str, prewarm: bool):
    port = free_port()
    env = dict(
        os.environ,
        MOBILESAM_CHECKPOINT=str(checkpoint),
        MOBILESAM_ALLOW_DOWNLOAD="0",
        MOBILESAM_EMBEDDING_DIR="off",
        LABEL_STUDIO_URL=ls_url,
        LABEL_STUDIO_API_KEY=TOKEN,
        MOBILESAM_PREWARM="1" if prewarm else "0",
        XDG_CACHE_HOME=str(work / "cache"),
        PYTHONPATH=os.pathsep.join([str(REPO / "core"), str(REPO)]),
    )
    log_path = work / f"backend-prewarm{int(prewarm)}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mobilesam", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: requests.get(url + "/health", timeout=2).json()["model_state"] == "ready",
        300,
        process,
        log_path,
        "mobilesam serve",
    )
    return process, url, log_path


def backend_click_times(log_path) -> list:
    """Seconds the backend itself spent on each interactive request (from its log), in order."""
    text = Path(log_path).read_text(errors="replace")
    return [int(ms) / 1000 for ms in re.findall(r"point\(s\) on .* embedding\) in (\d+) ms", text)]


def prewarmed(backend_url) -> int:
    counters = requests.get(backend_url + "/metrics", timeout=10).json()["counters"]
    return counters.get("prewarm.encoded", 0)


def run(ls, backend_url, images, delay, label):
    """(first-click latencies, cached-click latencies in seconds, whether the prewarm had finished
    when the first click came), one per task."""
    project, tasks, ml = ls.project_with_images(f"prewarm bench {label}", CONFIG_BRUSH, images, backend_url)
    height, width = images[0].shape[:2]
    first, cached, ready = [], [], []
    for task in tasks:
        before = prewarmed(backend_url)
        ls.call("GET", f"/api/tasks/{task['id']}")  # the labeling view opening the task
        time.sleep(delay)
        ready.append(prewarmed(backend_url) > before)
        for latencies, (x, y) in (
            (first, (width * 0.4, height * 0.5)),
            (cached, (width * 0.6, height * 0.4)),
        ):
            click = keypoint(x, y, width, height, region_id=f"k{len(latencies)}")
            started = time.perf_counter()
            answer = ls.call(
                "POST",
                f"/api/ml/{ml['id']}/interactive-annotating",
                json={"task": task["id"], "context": {"result": [click]}},
            )
            latencies.append(time.perf_counter() - started)
            assert "data" in answer, answer
        stored = ls.call("GET", f"/api/predictions?task={task['id']}")
        assert stored == [], f"opening task {task['id']} stored {len(stored)} prediction(s)"
    return first, cached, ready


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--size", default="480x640", help="image HxW")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    from mobilesam.testing import save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = save_random_checkpoint(work / "mobile_sam_random.pt", "vit_t", seed=0)
        (work / "ls").mkdir()
        (work / "files").mkdir()
        template = (
            REPO / ".pytest_cache" / "d" / f"labelstudio-template-{template_key()}" / "label_studio.sqlite3"
        )
        template.parent.mkdir(parents=True, exist_ok=True)
        ls = start_label_studio(work / "ls", work / "files", template)
        try:
            results, backend_times = {}, {}
            delay = 0.0
            for prewarm in (False, True):
                images = [make_test_image(height, width, seed=10 * prewarm + i) for i in range(args.tasks)]
                process, url, log_path = start_backend(work, checkpoint, ls.url, prewarm)
                try:
                    results[prewarm] = run(ls, url, images, delay, f"prewarm={prewarm}")
                finally:
                    stop(process)
                backend_times[prewarm] = backend_click_times(log_path)
                if not prewarm:  # one encoder time: an uncached click less a cached one
                    delay = statistics.median(results[False][0]) - statistics.median(results[False][1])
        finally:
            stop(ls.process)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share it)")
    print(
        f"{args.tasks} tasks of {height}x{width}; wait after opening a task with prewarm: {delay:.2f} s "
        "(one encoder time, measured above)"
    )
    for prewarm in (False, True):
        first, cached, ready = results[prewarm]
        ratio = statistics.median(first) / statistics.median(cached)
        print(
            f"prewarm {'on ' if prewarm else 'off'}: first click {statistics.median(first):.2f} s "
            f"(all: {', '.join(f'{v:.2f}' for v in first)}), cached click {statistics.median(cached):.2f} s, "
            f"ratio {ratio:.2f}x" + ("  (goal <= 1.2x)" if prewarm else "")
        )
        inside = backend_times[prewarm]
        print(
            "  of which in the backend (first, cached per task): "
            + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(inside[0::2], inside[1::2]))
        )
        if prewarm:
            warm = [f / statistics.median(cached) for f, r in zip(first, ready) if r]
            print(
                f"  prewarm finished before the click on {sum(ready)} of {len(ready)} tasks"
                + (
                    f"; their first click / cached click: {', '.join(f'{w:.2f}x' for w in warm)}"
                    if warm
                    else ""
                )
            )
    print("predictions stored per opened task: 0")


if __name__ == "__main__":
    main()
