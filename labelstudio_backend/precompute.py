"""Work through a project's tasks ahead of the annotators: embeddings, or automatic masks.

One job, two ways in:
- `mobilesam labelstudio precompute --project ID` reads the tasks through Label Studio's API
  (label-studio-sdk) and stores each image's embedding in the backend's on-disk store
  (`MOBILESAM_EMBEDDING_DIR`, same key as the server: image URL as stored in the task and model
  version), where a running server finds them; with `--predictions` it also uploads automatic
  masks as predictions.
- Data Manager ▸ *Retrieve predictions* (with `MOBILESAM_AUTO_MASKS=1`) sends the selected tasks to
  /predict; the backend runs the same `TaskJob` over them in the background.

`TaskJob` runs one task at a time with a bounded time per task (the work gets an event that is set
when the time is up; automatic mask generation stops on it), logs its progress, and can be cancelled.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mobilesam.errors import Cancelled, MobileSamError
from mobilesam.progress import is_cancelled

from .errors import BackendError
from .label_config import parse_label_config

if TYPE_CHECKING:
    from .model import MobileSamBackend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskImage:
    """A task and the URL of its image, as stored in the task's data."""

    task_id: int | None
    url: str


@dataclass
class JobReport:
    results: dict = field(default_factory=dict)  # task id -> what the work returned
    failed: list[str] = field(default_factory=list)  # "task N: reason"
    cancelled: bool = False

    @property
    def total(self) -> int:
        return len(self.results) + len(self.failed)


class TaskJob:
    """Runs `work(task, stop)` for each task in order; `stop` is set when the task's time is up.

    A task whose work raises a MobileSamError (fetch failure, timeout) is reported and the job goes
    on; setting the job's `cancel` event stops it before the next task (and stops the current one
    where the work honours `stop`).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[TaskImage, threading.Event], Any],
        task_timeout: float | None = None,
        log_every: float = 5.0,
    ) -> None:
        self.name = name
        self.work = work
        self.task_timeout = task_timeout
        self.log_every = log_every

    def run(
        self,
        tasks: list[TaskImage],
        cancel: threading.Event | None = None,
        on_result: Callable[[TaskImage, Any, str | None], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> JobReport:
        """Process `tasks`; on_result(task, result, error) after each; progress(done, total)."""
        report = JobReport()
        started = last_log = time.monotonic()
        logger.info("%s: %d task(s) started", self.name, len(tasks))
        for done, task in enumerate(tasks, start=1):
            if is_cancelled(cancel):
                report.cancelled = True
                logger.info("%s: cancelled after %d of %d tasks", self.name, done - 1, len(tasks))
                break
            result, error = self._run_one(task, cancel)
            if error is None:
                report.results[task.task_id] = result
            else:
                report.failed.append(f"task {task.task_id}: {error}")
                logger.error("%s: task %s (%s): %s", self.name, task.task_id, task.url, error)
            if on_result is not None:
                on_result(task, result, error)
            if progress is not None:
                progress(done, len(tasks))
            now = time.monotonic()
            if now - last_log >= self.log_every or done == len(tasks):
                last_log = now
                logger.info(
                    "%s: %d/%d tasks in %.1f s (%d failed)",
                    self.name,
                    done,
                    len(tasks),
                    now - started,
                    len(report.failed),
                )
        return report

    def _run_one(self, task: TaskImage, cancel: threading.Event | None) -> tuple[Any, str | None]:
        stop = threading.Event()
        timer = None
        if self.task_timeout is not None:
            timer = threading.Timer(self.task_timeout, stop.set)
            timer.daemon = True
            timer.start()
        relay = _relay(cancel, stop)
        try:
            return self.work(task, stop), None
        except Cancelled:
            if is_cancelled(cancel):
                return None, "cancelled"
            return None, f"took longer than {self.task_timeout:g} s; skipped"
        except (MobileSamError, ValueError, OSError) as exc:
            return None, str(exc)
        finally:
            if timer is not None:
                timer.cancel()
            relay.set()


def _relay(cancel: threading.Event | None, stop: threading.Event) -> threading.Event:
    """Pass a job-wide cancel on to one task's `stop` until the returned event is set."""
    finished = threading.Event()
    if cancel is None:
        return finished

    def watch():
        while not finished.wait(0.1):
            if cancel.is_set():
                stop.set()
                return

    threading.Thread(target=watch, name="mobilesam-job-cancel", daemon=True).start()
    return finished


# ----------------------------------------------------------------------------- the command line's way in
def _has_prediction(client, task_id: int | None, model_version: str) -> bool:
    return any(p.model_version == model_version for p in client.predictions.list(task=task_id))


@dataclass
class PrecomputeReport:
    encoded: int = 0
    already_stored: int = 0
    predictions: int = 0
    failed: list[str] = field(default_factory=list)  # "task N: reason"

    @property
    def total(self) -> int:
        return self.encoded + self.already_stored + len(self.failed)


def _client(url: str, api_key: str):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key)


def project_tasks(url: str, api_key: str, project_id: int) -> tuple[str, list[TaskImage]]:
    """(label config, tasks with their image URL) of the project, read through the Label Studio API."""
    client = _client(url, api_key)
    try:
        project = client.projects.get(id=project_id)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own ApiError / httpx errors
        raise BackendError(f"could not read project {project_id} from Label Studio at {url}: {exc}") from None
    label_config = project.label_config or ""
    target = parse_label_config(label_config).target(None)
    tasks = []
    for task in client.tasks.list(project=project_id, resolve_uri=False, fields="task_only"):
        image_url = (task.data or {}).get(target.data_key)
        if isinstance(image_url, str) and image_url:
            tasks.append(TaskImage(int(task.id), image_url))
        else:
            logger.warning("task %s has no image in data.%s; skipped", task.id, target.data_key)
    return label_config, tasks


def project_images(url: str, api_key: str, project_id: int) -> list[tuple[int, str]]:
    """(task id, image URL) of every task of the project."""
    return [(task.task_id, task.url) for task in project_tasks(url, api_key, project_id)[1]]


def precompute_project(
    backend: "MobileSamBackend",
    url: str,
    api_key: str,
    project_id: int,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    predictions: bool = False,
) -> PrecomputeReport:
    """Store the embedding of each task's image; with `predictions`, also upload automatic masks as
    predictions of tasks that have none of this model version. Failures are reported per task.

    progress(done, total) is called after each task; setting `cancel` raises mobilesam.errors.Cancelled.
    """
    if backend.store is None:
        raise BackendError("MOBILESAM_EMBEDDING_DIR is off: precomputed embeddings would have nowhere to go")
    label_config, tasks = project_tasks(url, api_key, project_id)
    report = PrecomputeReport()
    client = _client(url, api_key) if predictions else None
    stored_urls: set = set()

    def work(task: TaskImage, stop: threading.Event):
        if task.url not in stored_urls:
            stored_urls.add(task.url)
            if backend.precompute(task.url, task_id=task.task_id):
                report.encoded += 1
            else:
                report.already_stored += 1
        if client is not None and not _has_prediction(client, task.task_id, backend.model_version):
            prediction = backend.automatic_prediction(task, label_config, stop=stop)
            if prediction is not None:
                client.predictions.create(
                    task=task.task_id,
                    result=prediction["result"],
                    score=prediction["score"],
                    model_version=prediction["model_version"],
                )
                report.predictions += 1

    name = "automatic masks" if predictions else "embeddings"
    job = TaskJob(
        f"project {project_id} {name}",
        work,
        task_timeout=backend.settings.auto_masks_task_timeout if predictions else None,
    )
    outcome = job.run(tasks, cancel=cancel, progress=progress)
    report.failed = outcome.failed
    if outcome.cancelled:
        raise Cancelled(f"precompute cancelled after {outcome.total} of {len(tasks)} tasks")
    return report
