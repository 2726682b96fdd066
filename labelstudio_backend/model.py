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
Clicks on images longer than MOBILESAM_TILE_ABOVE go through the core's tiled predictor instead
(`tiled.TiledImages`): full resolution, only the tiles the object touches encoded.

Opening a task (Label Studio's /predict without a context) answers at once with no prediction and
queues the task's image for encoding (`Prewarmer`), so the first click finds its embedding ready;
the encoder is warmed up once at model load. With `MOBILESAM_AUTO_MASKS=1` the same call answers
segment-everything masks instead, computed by a `TaskJob` (shared with `mobilesam labelstudio
precompute`). The backend sets the allocator and torch's threads itself, whatever server runs it.
"""

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from mobilesam.predictor import SamPredictor
from mobilesam.runtime import configure_allocator, configure_threads, warm_up

from .embedding_cache import EmbeddingCache, EmbeddingStore
from .errors import BadRequest, ModelUnavailable, UnsupportedConfig
from .images import FetchPolicy, ImageLoader, ImageTooLargeError
from .label_config import OutputTarget, parse_label_config
from .precompute import TaskImage, TaskJob
from .prewarm import Prewarmer
from .prompts import ClickPrompt, parse_context
from .results import brush_result, polygon_results, resize_nearest
from .results import same_aspect as _same_aspect
from .settings import Settings
from .tiled import TiledImages, region_to_full

logger = logging.getLogger(__name__)

MAX_REFINEMENTS = 256  # previous low-res masks kept for refinement clicks
MAX_PROJECTS = 1024  # projects whose /setup address and token are kept (oldest forgotten first)
MAX_AUTO_RESULTS = 256  # finished automatic-mask predictions kept until Label Studio asks again


def model_version_for(settings: Settings) -> str:
    """A stable name for the weights in use, known before the model loads (Label Studio asks at once).

    "mobilesam-" + the core's `mobilesam.serving.model_identity` of the checkpoint (type, sha256 of
    the file, input size): the identity volumes, the napari plugin and the ONNX export use too, so
    cached embeddings of other weights are never reused. The official weights, before they are
    downloaded, are named by their published sha256 (the identity the verified file will have).
    The name doubles as the model part of the embedding cache keys.
    """
    from mobilesam.serving import encoder_precision, model_identity
    from mobilesam.weights import OFFICIAL_WEIGHTS, cached_path

    model_type = settings.model_type or "vit_t"
    checkpoint = settings.checkpoint or None
    official = OFFICIAL_WEIGHTS.get(model_type)
    if checkpoint is None and official is not None and cached_path(model_type).is_file():
        checkpoint = cached_path(model_type)
    if checkpoint is not None and Path(checkpoint).is_file():
        name = "mobilesam-" + model_identity(model_type=model_type, checkpoint=checkpoint)
    elif checkpoint is None and official is not None and official.sha256:
        name = "mobilesam-" + model_identity(model_type=model_type, checkpoint_sha256=official.sha256)
    else:  # a checkpoint that does not exist (loading will say so) or weights without a published digest
        name = f"mobilesam-{model_type}"
    if settings.backend == "onnx" and settings.onnx_precision == "int8":
        name += (
            "-int8static"  # own embeddings (fp32 ONNX matches torch within 1e-3); not the old dynamic int8
        )
    if settings.backend == "torch" and encoder_precision(settings.precision, model_type) == "bf16":
        name += "-bf16"  # as `model_identity` names a bf16 encoder: its embeddings differ by ~5e-3
    return name


class MobileSamBackend:
    """One instance per server process: the model, the embedding caches and the projects seen."""

    def __init__(
        self,
        settings: Settings | None = None,
        model_loader: Callable[[], Any] | None = None,
        image_loader: Callable[..., np.ndarray] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.model_version = model_version_for(self.settings)
        self._model_loader = model_loader or self._load_model
        self._image_loader = image_loader or ImageLoader(
            FetchPolicy.from_settings(self.settings), self.settings.max_fetches
        )
        self.cache = EmbeddingCache(self.settings.cache_size, self.settings.cache_max_bytes)
        self.store = (
            EmbeddingStore(self.settings.embedding_dir, self.settings.embedding_dir_max_bytes)
            if self.settings.embedding_dir
            else None
        )
        self._state_lock = threading.Lock()
        self._model_state = "not loaded"
        self._model_error: str | None = None
        self._model_ready = threading.Event()
        self._loader_pid: int | None = None
        self._encoder = self._decoder = None
        # Each predictor is used under its lock, and only from its own single worker thread: the
        # encoder's large temporaries then live in one malloc arena instead of one per request
        # thread (with glibc that kept ~100 MB per server thread resident).
        self._encoder_lock = threading.Lock()
        self._decoder_lock = threading.Lock()
        # Each worker sets torch's threads for itself (OpenMP keeps the count per thread).
        self._encoder_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mobilesam-encoder", initializer=configure_threads
        )
        self._decoder_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mobilesam-decoder", initializer=configure_threads
        )
        self._job_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mobilesam-jobs", initializer=configure_threads
        )
        self.prewarmer = Prewarmer(self._prewarm, max_pending=self.settings.prewarm_queue)
        self.tiled = TiledImages(
            self.settings.tile_above,
            self._encode,
            self._decode,
            lambda: getattr(self._predictors()[0], "model", None),
            self.settings.embedding_dir / "tiles" if self.settings.embedding_dir else None,
            self.model_version,
        )
        self._auto_results: OrderedDict[tuple, Future] = OrderedDict()
        self._runtime: dict = {}
        self._projects: OrderedDict[str, dict] = OrderedDict()
        self._refinements: OrderedDict[tuple, np.ndarray] = OrderedDict()
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
        # Before the model's buffers exist: every server (werkzeug, gunicorn, label-studio-ml start)
        # gets the allocator `mobilesam serve` sets up, or the encoder runs about 2x slower.
        allocator = configure_allocator()
        self._runtime = {"allocator_tuned": allocator.applied, "allocator": allocator.reason}
        threading.Thread(target=self._load_in_background, name="mobilesam-model-loader", daemon=True).start()

    def _load_model(self):
        import mobilesam

        return mobilesam.load_model(
            self.settings.model_type,
            self.settings.checkpoint,
            device=self.settings.device,
            allow_download=self.settings.allow_download,
        )

    def _load_in_background(self) -> None:
        started = time.perf_counter()
        try:
            # Slow first imports (1-4 s each), done here rather than in /setup (3 s budget) or a first click.
            import label_studio_sdk.converter.brush  # noqa: F401
            import label_studio_sdk.label_interface  # noqa: F401
            import skimage.measure  # noqa: F401

            model = self._model_loader()
            model.eval()
            encoder, decoder = (self._build_predictor(model) for _ in range(2))
            # The first encode and decode of a process are several times slower than the next: pay
            # for them now, each on the thread that will do the work, not on an annotator's click.
            warm_up_s = self._encoder_thread.submit(self._warm_up, encoder).result()
            self._decoder_thread.submit(self._warm_up_decoder, decoder).result()
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
        logger.info(
            "model %s loaded in %.1f s (warm-up encode %.1f s, %d torch threads; allocator: %s)",
            self.model_version,
            time.perf_counter() - started,
            warm_up_s,
            self._runtime["torch_threads"],
            self._runtime["allocator"],
        )

    def _warm_up_decoder(self, decoder) -> None:
        import torch

        from mobilesam.predictor import EmbeddingState

        size, prompt_encoder = decoder.model.image_encoder.img_size, decoder.model.prompt_encoder
        features = torch.zeros(1, prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size)
        with self._decoder_lock:
            decoder.set_embedding(EmbeddingState(features, (size, size), (size, size)))
            decoder.predict(np.array([[size / 2, size / 2]]), np.array([1]), multimask_output=True)
            decoder.reset_image()

    def _warm_up(self, encoder) -> float:
        """On the encoder's thread, under its lock: the warm-up encode (and the thread count it runs with)."""
        import torch

        with self._encoder_lock:
            seconds = warm_up(encoder)
        self._runtime.update(torch_threads=torch.get_num_threads(), warm_up_s=round(seconds, 3))
        return seconds

    def _build_predictor(self, model):
        """A predictor on `model` for MOBILESAM_BACKEND (the core's factory; ONNX: exported on first start)."""
        from mobilesam.serving import build_predictor

        return build_predictor(
            model,
            model_type=self.settings.model_type,
            backend=self.settings.backend,
            onnx_dir=self.settings.onnx_dir,
            onnx_precision=self.settings.onnx_precision,
            precision=self.settings.precision,
        )

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
            raise ModelUnavailable(
                f"the model is still loading after {self.settings.load_timeout:g} s; try again"
            )
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
        info = {
            "hostname": str(body.get("hostname") or "").rstrip("/"),
            "access_token": str(body.get("access_token") or ""),
        }
        if len(project) > 256 or len(info["hostname"]) > 2048 or len(info["access_token"]) > 4096:
            raise BadRequest("/setup: project, hostname or access_token is implausibly long")
        with self._state_lock:
            if project:
                self._projects[project] = info
                self._projects.move_to_end(project)
                while len(self._projects) > MAX_PROJECTS:
                    self._projects.popitem(last=False)
        if schema:
            target = parse_label_config(schema).target(None, self.settings.output)  # raises UnsupportedConfig
            if self.settings.auto_masks:
                self._auto_label(target)  # raises UnsupportedConfig
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
    def predict(
        self, tasks: list, context: dict | None = None, label_config: str = "", project: str = "", **kwargs
    ) -> list[dict]:
        """One prediction per task; interactive (with `context`) for the single task Label Studio sends."""
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        if context is None:
            return self._non_interactive(tasks, label_config, project)
        if len(tasks) != 1:
            raise BadRequest(f"an interactive request needs exactly one task, got {len(tasks)}")
        return [self._interactive(tasks[0], context, label_config, project)]

    def _non_interactive(self, tasks: list, label_config: str, project: str) -> list:
        """A task opened, or Data Manager's "Retrieve predictions". Without automatic masks: no prediction
        at all (`[]`: Label Studio stores nothing, where an empty result would show as an empty
        prediction tab on every task), and the images start encoding for the first click. With them:
        one entry per task. Opening a task must never fail because of us: errors are logged."""
        if not self.settings.auto_masks:
            if self.settings.prewarm:
                self._queue_prewarm(tasks, label_config, project)
            return []
        try:
            return self.preannotate(tasks, label_config, project)
        except Exception as exc:  # noqa: BLE001
            logger.error("automatic masks for tasks %s failed: %s", [t.get("id") for t in tasks], exc)
            self._count("errors.automatic")
            return []

    # ----------------------------------------------------------------------------- prewarm
    def _queue_prewarm(self, tasks: list, label_config: str, project: str) -> None:
        try:
            target = parse_label_config(label_config).target(None, self.settings.output)
        except Exception as exc:  # noqa: BLE001 - a config /setup would refuse; nothing to prewarm
            logger.debug("no prewarm: %s", exc)
            return
        for task in tasks:
            url = (
                (task.get("data") or {}).get(target.data_key) if isinstance(task.get("data"), dict) else None
            )
            if isinstance(url, str) and url:
                self.prewarmer.submit((url, self.model_version), (project, task.get("id")))

    def _prewarm(self, key: tuple[str, str], payload: tuple[str, int | None]) -> None:
        """The prewarm worker's job: the task's embedding, in memory (and on disk) before the first click."""
        project, task_id = payload
        started = time.perf_counter()
        if (
            self.settings.tile_above
            and key not in self.cache
            and (self.store is None or key not in self.store)
        ):
            # Only the pixels tell whether this image is tiled (opening a task gives no size).
            image = self._load_image(key[0], project, task_id)
            if self.tiled.wants(image.shape[:2]):
                encoded = self.tiled.prewarm(key[0], image)
                self._count("prewarm.tiled")
                logger.info(
                    "task %s: prewarmed large image %s (%d tile(s) encoded) in %.0f ms",
                    task_id,
                    key[0],
                    encoded,
                    (time.perf_counter() - started) * 1000,
                )
                return
            _, cached = self.embedding(key[0], project, task_id, image=image)
        else:
            _, cached = self.embedding(key[0], project, task_id)
        self._count("prewarm.cached" if cached else "prewarm.encoded")
        logger.info(
            "task %s: prewarmed %s (%s) in %.0f ms",
            task_id,
            key[0],
            "cached" if cached else "encoded",
            (time.perf_counter() - started) * 1000,
        )

    # ----------------------------------------------------------------------------- automatic masks
    def preannotate(self, tasks: list, label_config: str, project: str = "") -> list:
        """Automatic masks for each task: one entry per task, `[]` for a task that failed or is still running.

        The tasks go to a `TaskJob` in the background; this waits up to MOBILESAM_AUTO_MASKS_WAIT
        seconds (Label Studio gives up after 100 s and then stores nothing). Unfinished tasks go on
        and their predictions are handed over when Label Studio asks again (Retrieve predictions).
        An empty list per task makes Label Studio 1.23.2 store nothing for it, so it is asked again.
        """
        target = parse_label_config(label_config).target(None, self.settings.output)
        label = self._auto_label(target)
        keys, todo = [], []
        with self._state_lock:
            for task in tasks:
                url = (
                    (task.get("data") or {}).get(target.data_key)
                    if isinstance(task.get("data"), dict)
                    else None
                )
                if not isinstance(url, str) or not url:
                    logger.error(
                        "task %s has no image in data.%s: no automatic masks", task.get("id"), target.data_key
                    )
                    keys.append(None)
                    continue
                key = (url, self.model_version, target, label)
                keys.append(key)
                if key not in self._auto_results:  # else already queued or done by an earlier request
                    future = self._auto_results[key] = Future()
                    todo.append((TaskImage(task.get("id"), url), future))
            futures = {self._auto_results[key] for key in keys if key is not None}
        if todo:
            self._job_thread.submit(self._run_auto_masks, todo, target, label, project)
        _, pending = wait(futures, timeout=self.settings.auto_masks_wait)
        if pending:
            logger.info(
                "automatic masks: %d of %d task(s) still running after %g s; they continue in the "
                "background (Retrieve predictions again to collect them)",
                len(pending),
                len(futures),
                self.settings.auto_masks_wait,
            )
        answers = []
        with self._state_lock:
            for key in keys:
                future = self._auto_results.get(key) if key is not None else None
                if future is None or not future.done():
                    answers.append([])
                    continue
                del self._auto_results[key]  # handed over: Label Studio stores it and will not ask again
                prediction = future.result()
                answers.append(prediction if prediction is not None else [])
            while len(self._auto_results) > MAX_AUTO_RESULTS:  # bounded: drop the oldest finished ones
                oldest = next((k for k, f in self._auto_results.items() if f.done()), None)
                if oldest is None:
                    break
                del self._auto_results[oldest]
        self._count("predict.automatic", sum(1 for a in answers if a))
        return answers if any(answers) else []

    def _run_auto_masks(self, todo: list, target: OutputTarget, label: str | None, project: str) -> None:
        futures = {id(task): future for task, future in todo}

        def work(task: TaskImage, stop: threading.Event) -> dict:
            return self._automatic_masks(task, target, label, project, stop)

        def deliver(task: TaskImage, result, error: str | None) -> None:
            if error is not None:
                self._count("errors.automatic")
            futures[id(task)].set_result(result if error is None else None)

        job = TaskJob("automatic masks", work, task_timeout=self.settings.auto_masks_task_timeout)
        try:
            job.run([task for task, _ in todo], on_result=deliver)
        finally:
            for _, future in todo:  # an unexpected error must not leave requests waiting
                if not future.done():
                    future.set_result(None)

    def automatic_prediction(
        self, task: TaskImage, label_config: str, project: str = "", stop: threading.Event | None = None
    ) -> dict | None:
        """The automatic-mask prediction for one task, None when it found no mask (used by
        `mobilesam labelstudio precompute --predictions`)."""
        target = parse_label_config(label_config).target(None, self.settings.output)
        return self._automatic_masks(task, target, self._auto_label(target), project, stop)

    def _generator_options(self) -> dict:
        settings = self.settings
        return {
            "points_per_side": settings.auto_masks_points_per_side,
            "pred_iou_thresh": settings.auto_masks_min_iou,
            "stability_score_thresh": settings.auto_masks_min_stability,
        }

    def _auto_label(self, target: OutputTarget) -> str | None:
        label = self.settings.auto_masks_label
        if not label:
            return target.labels[0] if target.labels else None
        if target.labels and label not in target.labels:
            raise UnsupportedConfig(
                f"MOBILESAM_AUTO_MASKS_LABEL={label!r} is not a label of <{target.from_name}> "
                f"(labels: {', '.join(target.labels)})"
            )
        return label

    def _automatic_masks(
        self,
        task: TaskImage,
        target: OutputTarget,
        label: str | None,
        project: str,
        stop: threading.Event | None,
    ) -> dict | None:
        """Segment-everything masks as one region per object (largest first), labelled `label`.

        The image's embedding comes from (and goes to) the shared cache, so the annotator's clicks on
        the task later are cached ones; only the grid of prompts is decoded here.
        """
        from mobilesam import SamAutomaticMaskGenerator  # optional core feature

        started = time.perf_counter()
        encoder, _ = self._predictors()
        image = self._load_image(task.url, project, task.task_id)
        state, _ = self.embedding(task.url, project, task.task_id, image=image)
        # A predictor of its own on the server's backend (ONNX: the same sessions), which starts from
        # the cached embedding: only the grid of prompts is decoded.
        predictor = SamPredictor(encoder.model, backend=encoder.runtime.clone())
        generator = SamAutomaticMaskGenerator(predictor, **self._generator_options())
        records = generator.generate(image, cancel=stop, embedding=state)
        results, scores = [], []
        for record in sorted(records, key=lambda r: -r["area"]):
            items = self._mask_results(record["segmentation"].astype(bool), target, label, 0, one_region=True)
            results.extend(items)
            scores.extend([float(record["predicted_iou"])] * bool(items))
        logger.info(
            "task %s: %d automatic masks in %.1f s", task.task_id, len(results), time.perf_counter() - started
        )
        if not results:
            return None  # no empty prediction: Label Studio would show an empty tab and never ask again
        return {
            "result": results,
            "score": float(np.mean(scores)) if scores else 0.0,
            "model_version": self.model_version,
        }

    def _interactive(self, task: dict, context: dict, label_config: str, project: str) -> dict:
        prompt = parse_context(context)
        self._check_claimed_size(prompt.original_size, None)
        if prompt.stale_ids:
            self._count("prompts.stale_keypoints", len(prompt.stale_ids))
            logger.info(
                "task %s: ignored keypoint(s) %s without is_positive next to this click's smart "
                "keypoints (stale points from a draft)",
                task.get("id"),
                ", ".join(prompt.stale_ids),
            )
        target = parse_label_config(label_config).target(prompt.to_name, self.settings.output)
        url = self._image_url(task, target)
        self.prewarmer.cancel((url, self.model_version))  # this click encodes it now
        started = time.perf_counter()
        if self.tiled.wants(prompt.original_size):
            return self._tiled_interactive(task, prompt, target, url, project, started)
        state, cached = self.embedding(url, project, task.get("id"), prompt.original_size)
        height, width = self._check_claimed_size(prompt.original_size, state.original_size, url)
        mask, score = self.segment(state, prompt, image_key=url)
        mask = resize_nearest(mask, height, width)
        result = self._mask_results(mask, target, prompt.label, prompt.image_rotation)
        elapsed = time.perf_counter() - started
        with self._metrics_lock:
            self._latencies["cached" if cached else "uncached"].append(elapsed)
        self._count("predict.interactive")
        logger.info(
            "task %s: %s on %s (%s embedding) in %.0f ms, score %.3f",
            task.get("id"),
            "box" if prompt.box is not None else f"{len(prompt.points)} point(s)",
            url,
            "cached" if cached else "new",
            elapsed * 1000,
            score,
        )
        return {"result": result, "score": score, "model_version": self.model_version}

    def _tiled_interactive(
        self, task: dict, prompt: ClickPrompt, target: OutputTarget, url: str, project: str, started: float
    ) -> dict:
        """A click on an image above MOBILESAM_TILE_ABOVE: decoded by the core's tiled predictor at full
        resolution (see `tiled.TiledImages`); the mask is built from the object's bounding region."""

        def load() -> np.ndarray:  # the claimed size is checked against the pixels before any tiling
            image = self._load_image(url, project, task.get("id"))
            self._check_claimed_size(prompt.original_size, image.shape[:2], url)
            return image

        entry, was_open = self.tiled.open(url, load, prompt.original_size)
        real = entry.embeddings.shape
        height, width = self._check_claimed_size(prompt.original_size, real, url)
        region, encoded = self.tiled.segment(entry, *prompt.in_pixels(*real))
        if (height, width) != tuple(real):  # Label Studio sizes the file differently: scale the whole mask
            result = self._mask_results(
                resize_nearest(region_to_full(region, *real) > 0, height, width),
                target,
                prompt.label,
                prompt.image_rotation,
            )
        elif target.result_type == "polygonlabels":
            result = polygon_results(
                region.mask,
                target,
                prompt.label,
                prompt.image_rotation,
                tolerance=self.settings.polygon_tolerance,
                origin=region.box[:2],
                size=(height, width),
            )
        else:
            result = [
                brush_result(
                    region_to_full(region, height, width), target, prompt.label, prompt.image_rotation
                )
            ]
        elapsed = time.perf_counter() - started
        with self._metrics_lock:
            self._latencies["uncached" if encoded else "cached"].append(elapsed)
        self._count("predict.interactive")
        self._count("predict.tiled")
        logger.info(
            "task %s: %s on large image %s (%s, %d tile(s) decoded, %d encoded) in %.0f ms, score %.3f",
            task.get("id"),
            "box" if prompt.box is not None else f"{len(prompt.points)} point(s)",
            url,
            "open" if was_open else "opened",
            len(region.tiles),
            encoded,
            elapsed * 1000,
            region.score,
        )
        return {"result": result, "score": region.score, "model_version": self.model_version}

    def _mask_results(
        self,
        mask: np.ndarray,
        target: OutputTarget,
        label: str | None,
        rotation: float,
        one_region: bool = False,
    ) -> list[dict]:
        """Result items for a mask: one brush item, or a polygon per component (only the largest
        with `one_region`)."""
        if target.result_type == "polygonlabels":
            items = polygon_results(mask, target, label, rotation, tolerance=self.settings.polygon_tolerance)
            return items[:1] if one_region else items
        return [brush_result(mask, target, label, rotation)]

    @staticmethod
    def _image_url(task: dict, target: OutputTarget) -> str:
        data = task.get("data")
        if not isinstance(data, dict):
            raise BadRequest(f"task {task.get('id')} has no 'data' object")
        url = data.get(target.data_key)
        if not isinstance(url, str) or not url:
            raise BadRequest(
                f"task {task.get('id')} has no image URL in data.{target.data_key} "
                f'(the <Image name="{target.to_name}"> tag reads ${target.data_key})'
            )
        return url

    def _check_claimed_size(
        self, claimed: tuple[int, int] | None, real: tuple[int, int] | None, url: str = ""
    ) -> tuple[int, int]:
        """The (H, W) the mask is returned at: the size Label Studio claims, checked before anything of that
        size is allocated (against the pixel limit, then against the image itself: same aspect, at most
        twice its sides), else the image's own."""
        if claimed is None:
            return real
        height, width = claimed
        if height * width > self.settings.max_image_pixels:
            raise ImageTooLargeError(
                f"original_width x original_height = {width} x {height} is more than "
                f"MOBILESAM_MAX_IMAGE_PIXELS={self.settings.max_image_pixels}"
            )
        if real is not None and (
            not _same_aspect(real, claimed) or height > 2 * real[0] or width > 2 * real[1]
        ):
            raise BadRequest(
                f"original_width x original_height = {width} x {height} does not match image {url} "
                f"({real[1]} x {real[0]})",
                status=422,
            )
        return height, width

    def _credentials(self, project: str) -> tuple[str, str]:
        """Label Studio's address and token. The operator's LABEL_STUDIO_URL wins, and only it ever gets
        LABEL_STUDIO_API_KEY; a hostname announced in /setup serves that project alone, with its token."""
        with self._state_lock:
            info = self._projects.get(str(project)) or {}
        if self.settings.label_studio_url:
            return self.settings.label_studio_url, self.settings.label_studio_api_key or info.get(
                "access_token", ""
            )
        return info.get("hostname", ""), info.get("access_token", "")

    # ----------------------------------------------------------------------------- embeddings
    def embedding(
        self,
        url: str,
        project: str = "",
        task_id: int | None = None,
        expected_size: tuple[int, int] | None = None,
        image: np.ndarray | None = None,
    ):
        """(EmbeddingState, was_cached) for the image at `url`: memory, then disk, then the encoder
        (on `image` when the caller has already fetched it).

        A cached embedding whose aspect ratio disagrees with the size Label Studio reports is stale
        (the file behind the URL changed) and is computed again.
        """
        key = (url, self.model_version)
        state, cached = self.cache.get_or_compute(
            key, lambda: self._compute_embedding(key, project, task_id, image=image)
        )
        if cached and expected_size and not _same_aspect(state.original_size, expected_size):
            logger.info(
                "cached embedding of %s has size %s, Label Studio says %s: recomputing",
                url,
                state.original_size,
                expected_size,
            )
            self.cache.discard(key)
            state, cached = self.cache.get_or_compute(
                key, lambda: self._compute_embedding(key, project, task_id, use_store=False)
            )
        return state, cached

    def _load_image(self, url: str, project: str, task_id: int | None) -> np.ndarray:
        hostname, token = self._credentials(project)
        return self._image_loader(url, hostname, token, self.settings.max_image_pixels, task_id)

    def _compute_embedding(
        self,
        key: tuple[str, str],
        project: str,
        task_id: int | None,
        use_store: bool = True,
        image: np.ndarray | None = None,
    ):
        if use_store and self.store is not None:
            state = self.store.load(key)
            if state is not None:
                self._count("embeddings.from_disk")
                return state
        self._predictors()  # the model first: a fetch would be wasted if it cannot load
        if image is None:
            image = self._load_image(key[0], project, task_id)
        state = self._encode(image)
        self._count("embeddings.encoded")
        if self.store is not None:
            try:
                self.store.save(key, state)
            except OSError as exc:  # a full disk costs the next restart a re-encode, nothing more
                logger.warning("could not store the embedding of %s on disk: %s", key[0], exc)
        return state

    def _encode(self, image: np.ndarray):
        """The EmbeddingState of an (H, W, 3) uint8 image, encoded on the encoder's thread."""
        encoder, _ = self._predictors()

        def encode():
            with self._encoder_lock:
                encoder.set_image(image)
                return encoder.get_embedding_state()

        return self._encoder_thread.submit(encode).result()

    def _decode(self, state, coords, labels, box, multimask: bool, mask_input=None):
        """The decoder's (masks, scores, low-res logits) for a prompt on an embedding, on the decoder's thread."""
        _, decoder = self._predictors()

        def decode():
            with self._decoder_lock:
                decoder.set_embedding(state)
                return decoder.predict(coords, labels, box, mask_input, multimask_output=multimask)

        return self._decoder_thread.submit(decode).result()

    def precompute(self, url: str, project: str = "", task_id: int | None = None) -> bool:
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
        height, width = state.original_size
        coords, labels, box = prompt.in_pixels(height, width)
        previous = self._previous_logits(image_key, prompt.region_ids)
        multimask = prompt.multimask and previous is None
        masks, scores, logits = self._decode(state, coords, labels, box, multimask, previous)
        best = int(np.argmax(scores))
        self._remember_logits(image_key, prompt.region_ids, logits[best : best + 1])
        return masks[best], float(scores[best])

    def _previous_logits(self, image_key: str, region_ids: tuple[str, ...]) -> np.ndarray | None:
        if len(region_ids) < 2:
            return None
        with self._state_lock:
            for i in range(len(region_ids) - 1, -1, -1):
                earlier = frozenset(region_ids[:i] + region_ids[i + 1 :])
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
        return {
            **self.model_status(),
            "counters": counters,
            "embedding_cache": self.cache.stats(),
            "interactive_latency_s": latency,
            "prewarm": self.prewarmer.stats(),
            "tiled_images": self.tiled.stats(),
            "runtime": dict(self._runtime),
        }

    def close(self) -> None:
        """Stop background work: pending prewarms are cancelled, worker threads end after their current job."""
        self.prewarmer.close()
        for executor in (self._job_thread, self._encoder_thread, self._decoder_thread):
            executor.shutdown(wait=False, cancel_futures=True)


def _percentiles(values) -> dict:
    if not values:
        return {"count": 0}
    data = np.asarray(values)
    return {
        "count": int(data.size),
        "p50": float(np.percentile(data, 50)),
        "p99": float(np.percentile(data, 99)),
    }


# label-studio-ml's name for the model class, so its tooling finds it
NewModel = MobileSamBackend
