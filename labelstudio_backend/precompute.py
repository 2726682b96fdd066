"""Encode every image of a Label Studio project ahead of time, so annotators' first click is fast.

The embeddings go to the backend's on-disk store (`MOBILESAM_EMBEDDING_DIR`) under the same key
the server uses (image URL as stored in the task, model version), and the server picks them up
on the first click. Tasks and the label config come from Label Studio's API via label-studio-sdk.
"""

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from mobilesam.errors import Cancelled

from .errors import BackendError
from .label_config import parse_label_config
from .model import MobileSamBackend

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeReport:
    encoded: int = 0
    already_stored: int = 0
    failed: list[str] = field(default_factory=list)  # "task N: reason"

    @property
    def total(self) -> int:
        return self.encoded + self.already_stored + len(self.failed)


def project_images(url: str, api_key: str, project_id: int) -> list[tuple[int, str]]:
    """(task id, image URL) of every task of the project, read through the Label Studio API."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=url, api_key=api_key)
    try:
        project = client.projects.get(id=project_id)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own ApiError / httpx errors
        raise BackendError(f"could not read project {project_id} from Label Studio at {url}: {exc}") from None
    target = parse_label_config(project.label_config or "").target(None)
    images = []
    for task in client.tasks.list(project=project_id, resolve_uri=False, fields="task_only"):
        image_url = (task.data or {}).get(target.data_key)
        if isinstance(image_url, str) and image_url:
            images.append((int(task.id), image_url))
        else:
            logger.warning("task %s has no image in data.%s; skipped", task.id, target.data_key)
    return images


def precompute_project(backend: MobileSamBackend, url: str, api_key: str, project_id: int,
                       progress: Optional[Callable[[int, int], None]] = None,
                       cancel: Optional[threading.Event] = None) -> PrecomputeReport:
    """Store the embedding of each task's image; failures are reported per task, not raised.

    progress(done, total) is called after each image; setting `cancel` raises mobilesam.errors.Cancelled.
    """
    if backend.store is None:
        raise BackendError("MOBILESAM_EMBEDDING_DIR is off: precomputed embeddings would have nowhere to go")
    images = project_images(url, api_key, project_id)
    report = PrecomputeReport()
    seen = set()
    for done, (task_id, image_url) in enumerate(images, start=1):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"precompute cancelled after {done - 1} of {len(images)} tasks")
        if image_url not in seen:
            seen.add(image_url)
            try:
                if backend.precompute(image_url, task_id=task_id):
                    report.encoded += 1
                else:
                    report.already_stored += 1
            except BackendError as exc:
                logger.error("task %d: %s", task_id, exc)
                report.failed.append(f"task {task_id}: {exc}")
        if progress is not None:
            progress(done, len(images))
    return report
