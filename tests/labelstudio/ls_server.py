"""A real Label Studio 1.23.2 server for tests and benchmarks (its own virtualenv, found through
LABEL_STUDIO_BIN), and our backend served from a thread of this process.

A fresh Label Studio data dir costs about a minute of database migrations; the migrated empty
database is kept in a cache directory and copied for later runs (a fresh data dir each time).
"""

import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
LS_BIN = Path(os.environ.get("LABEL_STUDIO_BIN") or REPO / ".venv-ls" / "bin" / "label-studio")
USER, PASSWORD, TOKEN = "e2e@mobilesam.test", "mobilesam-e2e-password", "mobilesam-e2e-token-0123456789"
LS_START_TIMEOUT = 420  # seconds; fresh migrations take ~90 s on a busy 2-core machine


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=40) -> str:
    return (
        "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:]) if Path(path).exists() else ""
    )


def wait_until(check, timeout, process, log_path, what) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServerError(f"{what} not ready after {timeout} s:\n{tail(log_path)}")


def stop(process) -> None:
    """Stop a server we started, with its process group (Label Studio may start helpers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def png_bytes(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class LabelStudio:
    """A running Label Studio: `call` its API with the test user's token."""

    def __init__(self, url, files_root, process=None, log_path=None):
        self.url = url
        self.files_root = files_root
        self.process = process
        self.log_path = log_path
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def call(self, method, path, expected=(200, 201), **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        if response.status_code not in expected:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def project_with_images(self, title, label_config, images, backend_url=None):
        """(project, tasks in upload order, ML backend or None) for uploaded (H, W, 3) images."""
        project = self.call("POST", "/api/projects", json={"title": title, "label_config": label_config})
        for index, image in enumerate(images):
            self.call(
                "POST",
                f"/api/projects/{project['id']}/import",
                files={"file": (f"image{index}.png", png_bytes(image), "image/png")},
            )
        tasks = sorted(
            self.call("GET", f"/api/tasks?project={project['id']}")["tasks"], key=lambda t: t["id"]
        )
        ml = None
        if backend_url:
            ml = self.call(
                "POST",
                "/api/ml",
                json={
                    "project": project["id"],
                    "url": backend_url,
                    "title": "MobileSAM",
                    "is_interactive": True,
                },
            )
        return project, tasks, ml


def start_label_studio(data_dir: Path, files_root: Path, template_db: Path | None = None) -> LabelStudio:
    """Start Label Studio on a free port with a fresh data dir (from `template_db` when it exists)."""
    if not LS_BIN.is_file():
        raise ServerError(
            f"Label Studio is not installed at {LS_BIN}. Install it in its own virtualenv: "
            "python3 -m venv .venv-ls && .venv-ls/bin/pip install label-studio==1.23.2 "
            "(scripts/test.sh does this), or point LABEL_STUDIO_BIN at its label-studio executable."
        )
    if template_db is not None and template_db.is_file():
        shutil.copy2(template_db, data_dir / "label_studio.sqlite3")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": USER,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        }
    )
    port = free_port()
    log_path = data_dir / "label-studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=data_dir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(url + "/health", timeout=2).ok,
            LS_START_TIMEOUT,
            process,
            log_path,
            "Label Studio",
        )
    except BaseException:
        stop(process)
        raise
    if template_db is not None and not template_db.is_file():
        save_template(data_dir / "label_studio.sqlite3", template_db)
    return LabelStudio(url, files_root, process, log_path)


def template_key() -> str:
    """Names the migrated-database cache after the Label Studio install."""
    return hashlib.sha256(f"{LS_BIN.resolve()}:{LS_BIN.stat().st_mtime_ns}".encode()).hexdigest()[:12]


def save_template(database, target) -> None:
    """Copy the freshly migrated database with sqlite's online backup, then move it into place."""
    partial = target.with_name(target.name + ".part")
    with sqlite3.connect(database) as source, sqlite3.connect(partial) as copy:
        source.backup(copy)
    os.replace(partial, target)


@contextlib.contextmanager
def serve_wsgi(app):
    """Serve a WSGI `app` on 127.0.0.1 from a thread of this process; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


class ThreadedBackend:
    """Our Flask app for `backend` on 127.0.0.1, served by werkzeug from a thread of this process
    (tests then inspect the backend's caches and counters directly)."""

    def __init__(self, backend):
        from werkzeug.serving import make_server

        from labelstudio_backend.api import create_app

        self.backend = backend
        self.server = make_server("127.0.0.1", 0, create_app(backend), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="ls-backend", daemon=True)
        self.thread.start()
        backend.setup()
        if not backend._model_ready.wait(300) or backend.model_status()["model_state"] != "ready":
            raise ServerError(f"backend model not ready: {backend.model_status()}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.backend.close()
