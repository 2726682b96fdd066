"""`MobileSamBackend`: Label Studio's ML-backend model (label-studio-ml conventions: `setup()`,
`predict(tasks, context)`, `fit(event, data)`), holding no model logic of its own.

It turns Label Studio's smart keypoints and rectangles into pixel prompts for
`mobilesam.SamPredictor`, and the masks into brushlabels/polygonlabels results. The model loads
in a background thread so /health answers at once. Image embeddings are cached (memory LRU, then
disk) by (image URL, model version), so a second click on an image costs only the mask decoder.
Two predictors share the one model: the encoder's and the decoder's, each behind its own lock,
so a slow first click on one image never holds up quick clicks on another, and concurrent
requests never see each other's embedding. With `MOBILESAM_BACKEND=onnx` both run on ONNX Runtime
(the core's `SamPredictor(backend="onnx")`, sharing one exported model and its sessions).
"""

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .embedding_cache import EmbeddingCache, EmbeddingStore
from .errors import BadRequest, ModelUnavailable
from .images import FetchPolicy, ImageLoader, ImageTooLargeError
from .label_config import OutputTarget, parse_label_config
from .prompts import ClickPrompt, parse_context
from .results import brush_result, polygon_results, resize_nearest
from .settings import Settings

logger = logging.getLogger(__name__)

MAX_REFINEMENTS = 256  # previous low-res masks kept for refinement clicks
MAX_PROJECTS = 1024  # projects whose /setup address and token are kept (oldest forgotten first)


def model_version_for(settings: Settings) -> str:
    """A stable name for the weights in use, known before the model loads (Label Studio asks at once).

    An explicit checkpoint adds a digest of its name, size and modification time, so cached
    embeddings of other weights are never reused.
    """
    name = f"mobilesam-{settings.model_type or 'vit_t'}"
    checkpoint = settings.checkpoint
    if checkpoint and Path(checkpoint).is_file():
        stat = Path(checkpoint).stat()
        digest = hashlib.sha256(f"{Path(checkpoint).name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        name += f"-{digest[:8]}"
    if settings.backend == "onnx" and settings.onnx_precision == "int8":
        name += "-int8"  # its embeddings differ from the float models' (fp32 ONNX matches torch within 1e-3)
    return name


class MobileSamBackend:
    """One instance per server process: the model, the embedding caches and the projects seen."""

    def __init__(self, settings: Optional[Settings] = None, model_loader: Optional[Callable[[], Any]] = None,
                 image_loader: Optional[Callable[..., np.ndarray]] = None) -> None:
        self.settings = settings or Settings.from_env()
        self.model_version = model_version_for(self.settings)
        self._model_loader = model_loader or self._load_model
        self._image_loader = image_loader or ImageLoader(FetchPolicy.from_settings(self.settings),
                                                         self.settings.max_fetches)
        self.cache = EmbeddingCache(self.settings.cache_size, self.settings.cache_max_bytes)
        self.store = (EmbeddingStore(self.settings.embedding_dir, self.settings.embedding_dir_max_bytes)
                      if self.settings.embedding_dir else None)
        self._state_lock = threading.Lock()
        self._model_state = "not loaded"
        self._model_error: Optional[str] = None
        self._model_ready = threading.Event()
        self._loader_pid: Optional[int] = None
        self._encoder = self._decoder = None
        # Each predictor is used under its lock, and only from its own single worker thread: the
        # encoder's large temporaries then live in one malloc arena instead of one per request
        # thread (with glibc that kept ~100 MB per server thread resident).
        self._encoder_lock = threading.Lock()
        self._decoder_lock = threading.Lock()
        self._encoder_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mobilesam-encoder")
        self._decoder_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mobilesam-decoder")
        self._projects: "OrderedDict[str, dict]" = OrderedDict()
        self._refinements: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
        self._metrics_lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._latencies = {"cached": deque(maxlen=1000), "uncached": deque(maxlen=1000)}

    # ----------------------------------------------------------------------------- model loading
    def setup(self) -> None:
        """Start loading the model in the background (once per process: a forked worker loads its own)."""
        with self._state_lock:
            if self._loader_pid == os.getpid():
                return
            self._loader_pid = os.getpid()
            self._model_state = "loading"
            self._model_error = None
            self._model_ready = threading.Event()
        threading.Thread(target=self._load_in_background, name="mobilesam-model-loader", daemon=True).start()

    def _load_model(self):
        import mobilesam

        return mobilesam.load_model(self.settings.model_type, self.settings.checkpoint, device=self.settings.device,
                                    allow_download=self.settings.allow_download)

    def _load_in_background(self) -> None:
        started = time.perf_counter()
        try:
            import mobilesam

            model = self._model_loader()
            model.eval()
            options = self._predictor_options(model)
            encoder, decoder = mobilesam.SamPredictor(model, **options), mobilesam.SamPredictor(model, **options)
        except BaseException as exc:  # noqa: BLE001 - report any failure through /health and /predict
            logger.exception("loading the MobileSAM model failed")
            with self._state_lock:
                self._model_state, self._model_error = "error", f"{type(exc).__name__}: {exc}"
            self._model_ready.set()
            return
        with self._state_lock:
            self._encoder, self._decoder = encoder, decoder
            self._model_state = "ready"
        self._model_ready.set()
        logger.info("model %s loaded in %.1f s", self.model_version, time.perf_counter() - started)

    def _predictor_options(self, model) -> dict:
        """`SamPredictor` keyword arguments for MOBILESAM_BACKEND (ONNX: exported on first start)."""
        if self.settings.backend == "torch":
            return {}
        onnx_dir = self.settings.onnx_dir
        if onnx_dir is None:
            from mobilesam.onnx import default_onnx_dir

            onnx_dir = default_onnx_dir(self.settings.model_type or model)
        logger.info("ONNX Runtime backend (%s): models in %s (exported if missing or stale)",
                    self.settings.onnx_precision, onnx_dir)
        return {"backend": "onnx", "onnx_dir": onnx_dir, "precision": self.settings.onnx_precision}

    def model_status(self) -> dict:
        with self._state_lock:
            status = {"model_state": self._model_state, "model_version": self.model_version}
            if self._model_error:
                status["model_error"] = self._model_error
            return status

    def _predictors(self):
        """(encoder, decoder) predictors, waiting for the model to load (up to MOBILESAM_LOAD_TIMEOUT)."""
        self.setup()
        if not self._model_ready.wait(self.settings.load_timeout):
            raise ModelUnavailable(f"the model is still loading after {self.settings.load_timeout:g} s; try again")
        with self._state_lock:
            if self._model_state != "ready":
                raise ModelUnavailable(f"the model could not be loaded: {self._model_error}")
            return self._encoder, self._decoder

    # ----------------------------------------------------------------------------- /setup, /webhook
    def setup_project(self, body: dict) -> dict:
        """Handle /setup: remember where the project's images come from; check its label config."""
        project = str(body.get("project") or "")
        schema = body.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise BadRequest(f"'schema' must be the label config as a string, got {type(schema).__name__}")
        info = {"hostname": str(body.get("hostname") or "").rstrip("/"),
                "access_token": str(body.get("access_token") or "")}
        if len(project) > 256 or len(info["hostname"]) > 2048 or len(info["access_token"]) > 4096:
            raise BadRequest("/setup: project, hostname or access_token is implausibly long")
        with self._state_lock:
            if project:
                self._projects[project] = info
                self._projects.move_to_end(project)
                while len(self._projects) > MAX_PROJECTS:
                    self._projects.popitem(last=False)
        if schema:
            parse_label_config(schema).target(None, self.settings.output)  # raises UnsupportedConfig
        self.setup()
        return {"model_version": self.model_version}

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Webhook events. MobileSAM is not trained online; a task's annotation being saved or deleted
        ends the refinement history of its regions (their ids may be reused by the next annotation)."""
        self._count(f"webhook.{event}")
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"):
            with self._state_lock:
                self._refinements.clear()
        return {"status": "ok", "event": event, "trained": False}

    # ----------------------------------------------------------------------------- /predict
    def predict(self, tasks: list, context: Optional[dict] = None, label_config: str = "",
                project: str = "", **kwargs) -> list[dict]:
        """One prediction per task; interactive (with `context`) for the single task Label Studio sends."""
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        if context is None:
            return [self._non_interactive(task, label_config, project) for task in tasks]
        if len(tasks) != 1:
            raise BadRequest(f"an interactive request needs exactly one task, got {len(tasks)}")
        return [self._interactive(tasks[0], context, label_config, project)]

    def _empty_prediction(self) -> dict:
        return {"result": [], "score": 0.0, "model_version": self.model_version}

    def _non_interactive(self, task: dict, label_config: str, project: str) -> dict:
        """Opening a task must never fail because of us: errors give an empty prediction and a log line."""
        if not self.settings.auto_masks:
            return self._empty_prediction()
        try:
            return self._automatic_masks(task, label_config, project)
        except Exception as exc:  # noqa: BLE001
            logger.error("automatic masks for task %s failed: %s", task.get("id"), exc)
            self._count("errors.automatic")
            return self._empty_prediction()

    def _automatic_masks(self, task: dict, label_config: str, project: str) -> dict:
        from mobilesam import SamAutomaticMaskGenerator  # optional core feature: ImportError -> empty result

        target = parse_label_config(label_config).target(None, self.settings.output)
        url = self._image_url(task, target)
        hostname, token = self._credentials(project)
        image = self._image_loader(url, hostname, token, self.settings.max_image_pixels, task.get("id"))
        encoder, _ = self._predictors()

        def generate():
            with self._encoder_lock:
                return SamAutomaticMaskGenerator(encoder.model).generate(image)

        masks = self._encoder_thread.submit(generate).result()
        results, scores = [], []
        for record in sorted(masks, key=lambda r: -r["area"]):
            results.extend(self._mask_results(record["segmentation"].astype(bool), target, None, 0))
            scores.append(float(record["predicted_iou"]))
        return {"result": results, "score": float(np.mean(scores)) if scores else 0.0,
                "model_version": self.model_version}

    def _interactive(self, task: dict, context: dict, label_config: str, project: str) -> dict:
        prompt = parse_context(context)
        self._check_claimed_size(prompt.original_size, None)
        target = parse_label_config(label_config).target(prompt.to_name, self.settings.output)
        url = self._image_url(task, target)
        started = time.perf_counter()
        state, cached = self.embedding(url, project, task.get("id"), prompt.original_size)
        height, width = self._check_claimed_size(prompt.original_size, state.original_size, url)
        mask, score = self.segment(state, prompt, image_key=url)
        mask = resize_nearest(mask, height, width)
        result = self._mask_results(mask, target, prompt.label, prompt.image_rotation)
        elapsed = time.perf_counter() - started
        with self._metrics_lock:
            self._latencies["cached" if cached else "uncached"].append(elapsed)
        self._count("predict.interactive")
        logger.info("task %s: %s on %s (%s embedding) in %.0f ms, score %.3f", task.get("id"),
                    "box" if prompt.box is not None else f"{len(prompt.points)} point(s)", url,
                    "cached" if cached else "new", elapsed * 1000, score)
        return {"result": result, "score": score, "model_version": self.model_version}

    def _mask_results(self, mask: np.ndarray, target: OutputTarget, label: Optional[str],
                      rotation: float) -> list[dict]:
        if target.result_type == "polygonlabels":
            return polygon_results(mask, target, label, rotation, tolerance=self.settings.polygon_tolerance)
        return [brush_result(mask, target, label, rotation)]

    @staticmethod
    def _image_url(task: dict, target: OutputTarget) -> str:
        data = task.get("data")
        if not isinstance(data, dict):
            raise BadRequest(f"task {task.get('id')} has no 'data' object")
        url = data.get(target.data_key)
        if not isinstance(url, str) or not url:
            raise BadRequest(f"task {task.get('id')} has no image URL in data.{target.data_key} "
                             f"(the <Image name=\"{target.to_name}\"> tag reads ${target.data_key})")
        return url

    def _check_claimed_size(self, claimed: Optional[tuple[int, int]], real: Optional[tuple[int, int]],
                            url: str = "") -> tuple[int, int]:
        """The (H, W) the mask is returned at: the size Label Studio claims, checked before anything of that
        size is allocated (against the pixel limit, then against the image itself: same aspect, at most
        twice its sides), else the image's own."""
        if claimed is None:
            return real
        height, width = claimed
        if height * width > self.settings.max_image_pixels:
            raise ImageTooLargeError(f"original_width x original_height = {width} x {height} is more than "
                                     f"MOBILESAM_MAX_IMAGE_PIXELS={self.settings.max_image_pixels}")
        if real is not None and (not _same_aspect(real, claimed) or height > 2 * real[0] or width > 2 * real[1]):
            raise BadRequest(f"original_width x original_height = {width} x {height} does not match image {url} "
                             f"({real[1]} x {real[0]})", status=422)
        return height, width

    def _credentials(self, project: str) -> tuple[str, str]:
        """Label Studio's address and token. The operator's LABEL_STUDIO_URL wins, and only it ever gets
        LABEL_STUDIO_API_KEY; a hostname announced in /setup serves that project alone, with its token."""
        with self._state_lock:
            info = self._projects.get(str(project)) or {}
        if self.settings.label_studio_url:
            return self.settings.label_studio_url, self.settings.label_studio_api_key or info.get("access_token", "")
        return info.get("hostname", ""), info.get("access_token", "")

    # ----------------------------------------------------------------------------- embeddings
    def embedding(self, url: str, project: str = "", task_id: Optional[int] = None,
                  expected_size: Optional[tuple[int, int]] = None):
        """(EmbeddingState, was_cached) for the image at `url`: memory, then disk, then the encoder.

        A cached embedding whose aspect ratio disagrees with the size Label Studio reports is stale
        (the file behind the URL changed) and is computed again.
        """
        key = (url, self.model_version)
        state, cached = self.cache.get_or_compute(key, lambda: self._compute_embedding(key, project, task_id))
        if cached and expected_size and not _same_aspect(state.original_size, expected_size):
            logger.info("cached embedding of %s has size %s, Label Studio says %s: recomputing", url,
                        state.original_size, expected_size)
            self.cache.discard(key)
            state, cached = self.cache.get_or_compute(key, lambda: self._compute_embedding(key, project, task_id,
                                                                                             use_store=False))
        return state, cached

    def _compute_embedding(self, key: tuple[str, str], project: str, task_id: Optional[int], use_store: bool = True):
        if use_store and self.store is not None:
            state = self.store.load(key)
            if state is not None:
                self._count("embeddings.from_disk")
                return state
        encoder, _ = self._predictors()
        hostname, token = self._credentials(project)
        image = self._image_loader(key[0], hostname, token, self.settings.max_image_pixels, task_id)

        def encode():
            with self._encoder_lock:
                encoder.set_image(image)
                return encoder.get_embedding_state()

        state = self._encoder_thread.submit(encode).result()
        self._count("embeddings.encoded")
        if self.store is not None:
            try:
                self.store.save(key, state)
            except OSError as exc:  # a full disk costs the next restart a re-encode, nothing more
                logger.warning("could not store the embedding of %s on disk: %s", key[0], exc)
        return state

    def precompute(self, url: str, project: str = "", task_id: Optional[int] = None) -> bool:
        """Make sure the embedding of `url` is on disk (and in memory); True if it had to be encoded."""
        key = (url, self.model_version)
        if self.store is not None and key in self.store:
            return False
        state, cached = self.cache.get_or_compute(key, lambda: self._compute_embedding(key, project, task_id))
        if cached and self.store is not None:
            self.store.save(key, state)
        return not cached

    # ----------------------------------------------------------------------------- decoding
    def segment(self, state, prompt: ClickPrompt, image_key: str = "") -> tuple[np.ndarray, float]:
        """(H, W) bool mask and its predicted IoU for `prompt` on the embedded image.

        One point: three candidate masks, the best by predicted IoU (SAM's advice for ambiguous
        clicks). Several points or a box: one mask. A refinement (this request's regions are a
        previous request's plus one) feeds the previous low-res mask back as `mask_input`.
        """
        _, decoder = self._predictors()
        height, width = state.original_size
        coords, labels, box = prompt.in_pixels(height, width)
        previous = self._previous_logits(image_key, prompt.region_ids)
        multimask = prompt.multimask and previous is None

        def decode():
            with self._decoder_lock:
                decoder.set_embedding(state)
                return decoder.predict(coords, labels, box, previous, multimask_output=multimask)

        masks, scores, logits = self._decoder_thread.submit(decode).result()
        best = int(np.argmax(scores))
        self._remember_logits(image_key, prompt.region_ids, logits[best:best + 1])
        return masks[best], float(scores[best])

    def _previous_logits(self, image_key: str, region_ids: tuple[str, ...]) -> Optional[np.ndarray]:
        if len(region_ids) < 2:
            return None
        with self._state_lock:
            for i in range(len(region_ids) - 1, -1, -1):
                earlier = frozenset(region_ids[:i] + region_ids[i + 1:])
                logits = self._refinements.get((image_key, earlier))
                if logits is not None:
                    return logits
        return None

    def _remember_logits(self, image_key: str, region_ids: tuple[str, ...], logits: np.ndarray) -> None:
        with self._state_lock:
            key = (image_key, frozenset(region_ids))
            self._refinements[key] = logits
            self._refinements.move_to_end(key)
            while len(self._refinements) > MAX_REFINEMENTS:
                self._refinements.popitem(last=False)

    # ----------------------------------------------------------------------------- metrics
    def _count(self, name: str, amount: int = 1) -> None:
        with self._metrics_lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def count_request(self, endpoint: str, status: int) -> None:
        self._count(f"requests.{endpoint}")
        if status >= 400:
            self._count(f"errors.{endpoint}")

    def metrics(self) -> dict:
        with self._metrics_lock:
            counters = dict(sorted(self._counters.items()))
            latency = {kind: _percentiles(values) for kind, values in self._latencies.items()}
        return {**self.model_status(), "counters": counters, "embedding_cache": self.cache.stats(),
                "interactive_latency_s": latency}


def _same_aspect(a: tuple[int, int], b: tuple[int, int], tolerance: float = 0.02) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= tolerance * (b[0] / b[1])


def _percentiles(values) -> dict:
    if not values:
        return {"count": 0}
    data = np.asarray(values)
    return {"count": int(data.size), "p50": float(np.percentile(data, 50)), "p99": float(np.percentile(data, 99))}


# label-studio-ml's name for the model class, so its tooling finds it
NewModel = MobileSamBackend
