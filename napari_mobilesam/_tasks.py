"""Run long core work (model loading, embeddings, propagation) off the GUI thread.

The core reports progress through a `progress(done, total)` callback and stops when a
`threading.Event` is set (raising `mobilesam.errors.Cancelled`). `BackgroundTask` runs such a
call in a napari `thread_worker`, mirrors the callback into a napari progress bar (shown in the
activity dock, with a cancel button) and exposes `cancel()` for the widget's cancel button.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from superqt.utils import ensure_main_thread

from mobilesam.errors import Cancelled

REPORT_INTERVAL_S = 0.1  # progress updates posted to the GUI thread: 10 per second at most


class BackgroundTask:
    """One piece of work in a worker thread, with a progress bar and a cancel event.

    work: called in the worker thread as `work(progress=callback, cancel=event)`.
    on_done(result) / on_error(exception) / on_finally() / on_progress(done, total) run in the GUI thread
    (on_progress drives the dock's own progress bar).
    """

    def __init__(
        self,
        work: Callable[..., Any],
        description: str,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_finally: Callable[[], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.description = description
        self._on_progress = on_progress
        self.cancel_event = threading.Event()
        # The bar in napari's activity dock has its own cancel button, wired to the same event.
        self._bar = cancelable_progress(total=0, desc=description, cancel_callback=self.cancel)
        # The core calls `report` from the worker thread; Qt widgets may only be touched from the
        # GUI thread, so the update is posted there.
        self._post_report = ensure_main_thread(self._report)
        self._last_post = 0.0
        self.worker = create_worker(
            lambda: work(progress=self._throttled_report, cancel=self.cancel_event), _ignore_errors=True
        )
        self.worker.returned.connect(on_done)
        self.worker.errored.connect(on_error)
        self.worker.finished.connect(self._close_bar)
        if on_finally is not None:
            self.worker.finished.connect(on_finally)

    def start(self) -> "BackgroundTask":
        self.worker.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def is_running(self) -> bool:
        return self.worker.is_running

    def _throttled_report(self, done: int, total: int) -> None:
        """Post progress to the GUI thread at most every REPORT_INTERVAL_S (and the last step):
        fast work (a batch of Segment everything every few ms) would otherwise queue updates
        faster than the GUI draws them, which delays everything behind them, Cancel included."""
        now = time.monotonic()
        if done < total and now - self._last_post < REPORT_INTERVAL_S:
            return
        self._last_post = now
        self._post_report(done, total)

    def _report(self, done: int, total: int) -> None:
        if self._on_progress is not None:
            self._on_progress(done, total)
        if self._bar is None:
            return
        if self._bar.total != total:
            self._bar.total = total
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def cancel_checks_inside(model, cancel: threading.Event | None, what: str) -> Iterator[None]:
    """Check `cancel` before every torch operation this thread runs, while in the block.

    The core checks its cancel event between units of work, and one unit (a decoder batch of
    Segment everything: 8 prompts, ~520 torch calls) took 2-4 s on a loaded 2-core CPU, where
    every small op waits for a time slice; the longest stretch without a module boundary (mask
    upscaling + postprocessing) alone took ~2 s. A `TorchFunctionMode` sees each op: Cancel then
    lands within one op. It is thread-local (the GUI thread is not touched) and costs ~7 µs per
    op, ~4 ms per batch of 8 (<2% of a batch). `model` None or not a torch module (ONNX
    Runtime): nothing is added.
    """
    if cancel is None or not hasattr(model, "modules"):
        yield
        return
    from torch.overrides import TorchFunctionMode

    class _CheckCancel(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if cancel.is_set():
                raise Cancelled(f"{what} was cancelled")
            return func(*args, **(kwargs or {}))

    with _CheckCancel():
        yield
