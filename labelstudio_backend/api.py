"""The ML-backend HTTP protocol Label Studio speaks, on Flask (see docs in ../shared/labelstudio-protocol.md).

| endpoint | answer |
|---|---|
| `GET /health` | `{"status": "UP", "model_state": ...}` at once, even while the model loads |
| `POST /setup` | `{"model_version": ...}` |
| `POST /predict` | `{"results": [{"result": [...], "score": s, "model_version": v}, ...]}`, one per task |
| `POST /webhook` | `{"status": "ok", ...}` |
| `GET /versions` | `{"versions": [model_version]}` |
| `GET /metrics` | counters, cache statistics, latency percentiles |

Every error is JSON `{"status": "error", "error": message}` with a 4xx/5xx status, and is logged;
the server keeps serving. Request bodies are bounded (MOBILESAM_MAX_REQUEST_MB: 413), JSON nested
too deep is a 400, and an interactive request holds at most MOBILESAM_MAX_PROMPT_REGIONS regions (413),
so no request costs more than a bounded amount of work.
"""

import hmac
import logging
import time

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import BackendError, BadRequest
from .model import MobileSamBackend

logger = logging.getLogger(__name__)

MAX_LABEL_CONFIG_CHARS = 1 << 20  # real configs are kilobytes; parsed configs are cached, so bound them


def create_app(backend: MobileSamBackend | None = None) -> Flask:
    """A Flask app serving `backend` (by default one configured from the environment)."""
    backend = backend or MobileSamBackend()
    app = Flask("labelstudio_backend")
    app.config["backend"] = backend
    app.config["MAX_CONTENT_LENGTH"] = backend.settings.max_request_bytes

    @app.before_request
    def check_basic_auth():
        credentials = backend.settings.basic_auth
        if credentials is None:
            return None
        auth = request.authorization
        if (
            auth is None
            or auth.type != "basic"
            or not hmac.compare_digest((auth.username or "").encode(), credentials[0].encode())
            or not hmac.compare_digest((auth.password or "").encode(), credentials[1].encode())
        ):
            response = jsonify(
                status="error",
                error="this ML backend requires HTTP basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS)",
            )
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="MobileSAM ML backend"'
            return response
        return None

    @app.before_request
    def start_timer():
        request.environ["mobilesam.started"] = time.perf_counter()

    @app.after_request
    def count(response):
        backend.count_request(request.endpoint or "unknown", response.status_code)
        started = request.environ.get("mobilesam.started")
        if started is not None and request.endpoint not in ("health", "metrics"):
            logger.info(
                "%s %s -> %d in %.0f ms",
                request.method,
                request.path,
                response.status_code,
                (time.perf_counter() - started) * 1000,
            )
        return response

    @app.get("/")
    @app.get("/health")
    def health():
        # Never waits for the model or its locks: Label Studio gives this call 1 s. setup() only starts
        # the loader if this process has none (a gunicorn worker forked after --preload).
        backend.setup()
        return jsonify(status="UP", model_class=type(backend).__name__, **backend.model_status())

    @app.post("/setup")
    def setup():
        body = _json_body()
        _check_config_size(body.get("schema"), "schema")
        return jsonify(backend.setup_project(body))

    @app.post("/predict")
    def predict():
        body = _json_body()
        if "tasks" not in body:
            raise BadRequest("the request has no 'tasks' list")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        _check_region_count(params.get("context"), backend.settings.max_prompt_regions)
        label_config = body.get("label_config") or ""
        if not isinstance(label_config, str):
            raise BadRequest("'label_config' must be a string")
        _check_config_size(label_config, "label_config")
        predictions = backend.predict(
            body["tasks"],
            context=params.get("context"),
            label_config=label_config,
            project=str(body.get("project") or ""),
            params=params,
        )
        return jsonify(results=predictions)

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        event = body.get("action")
        if not isinstance(event, str) or not event:
            raise BadRequest("a webhook body needs an 'action' string (e.g. ANNOTATION_CREATED)")
        return jsonify(backend.fit(event, body))

    @app.get("/versions")
    def versions():
        return jsonify(versions=[backend.model_version], model_version=backend.model_version)

    @app.get("/metrics")
    def metrics():
        return jsonify(backend.metrics())

    @app.errorhandler(BackendError)
    def backend_error(exc: BackendError):
        logger.log(
            logging.ERROR if exc.status >= 500 else logging.WARNING,
            "%s %s -> %d: %s",
            request.method,
            request.path,
            exc.status,
            exc,
        )
        return _error(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(f"{exc.name}: {exc.description}", exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        logger.exception("%s %s failed", request.method, request.path)
        return _error(f"internal error: {type(exc).__name__}: {exc}", 500)

    return app


def _json_body() -> dict:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(
            f"the request body has {request.content_length} bytes, more than MOBILESAM_MAX_REQUEST_MB="
            f"{limit >> 20}",
            status=413,
        )
    try:
        body = request.get_json(force=True, silent=True)  # any Content-Type
    except RecursionError:  # json's C parser recurses once per nesting level
        raise BadRequest("the request body is JSON nested too deep") from None
    if body is None:
        raise BadRequest("the request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_config_size(config, name: str) -> None:
    if isinstance(config, str) and len(config) > MAX_LABEL_CONFIG_CHARS:
        raise BadRequest(
            f"'{name}' has {len(config)} characters, more than {MAX_LABEL_CONFIG_CHARS}", status=413
        )


def _check_region_count(context, limit: int) -> None:
    """Refuse an interactive request with more than `limit` regions before any of them is parsed."""
    items = context.get("result") if isinstance(context, dict) else None
    if isinstance(items, list) and len(items) > limit:
        raise BadRequest(
            f"params.context.result has {len(items)} regions, more than MOBILESAM_MAX_PROMPT_REGIONS="
            f"{limit} in one request",
            status=413,
        )


def _error(message: str, status: int):
    response = jsonify(status="error", error=message)
    response.status_code = status
    return response
