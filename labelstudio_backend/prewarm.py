"""`Prewarmer`: encode the image of a task the annotator just opened, before the first click.

Label Studio calls /predict without a context when a task opens; the backend answers at once and
hands the task's image to this queue. One worker thread takes the newest entry first (the task on
screen), a key already pending or running is not queued twice (Label Studio often sends two such
calls per opened task), and when more than `max_pending` wait, the oldest is dropped: an annotator
flipping through tasks must not build up a backlog the encoder never catches up with. Pending
entries can be cancelled (a click on that image encodes it itself); the running one finishes.
"""

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

logger = logging.getLogger(__name__)


class Prewarmer:
    """Runs `work(key, payload)` for submitted keys in one background thread; never blocks `submit`."""

    def __init__(
        self, work: Callable[[Hashable, Any], None], max_pending: int = 4, name: str = "mobilesam-prewarm"
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._work = work
        self.max_pending = max_pending
        self._name = name
        self._pending: OrderedDict[Hashable, Any] = OrderedDict()
        self._running: Hashable | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.counts = {"queued": 0, "done": 0, "failed": 0, "dropped": 0, "cancelled": 0, "duplicates": 0}

    def submit(self, key: Hashable, payload: Any = None) -> bool:
        """Queue `key` (True), or do nothing if it is already pending or running, or if closed (False)."""
        with self._cond:
            if self._closed:
                return False
            if key in self._pending or key == self._running:
                self.counts["duplicates"] += 1
                return False
            self._pending[key] = payload
            self.counts["queued"] += 1
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                self.counts["dropped"] += 1
                logger.info("prewarm queue full: dropped %s", _describe(dropped))
            self._ensure_worker()
            self._cond.notify()
            return True

    def cancel(self, key: Hashable) -> bool:
        """Remove `key` if it is still waiting (True); a running one finishes."""
        with self._cond:
            if key not in self._pending:
                return False
            del self._pending[key]
            self.counts["cancelled"] += 1
            return True

    def cancel_all(self) -> int:
        with self._cond:
            count = len(self._pending)
            self._pending.clear()
            self.counts["cancelled"] += count
            return count

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending or running (for tests, benchmarks and an orderly shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._running is None, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what is pending and stop the worker after its current entry."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def stats(self) -> dict:
        with self._cond:
            return {
                **self.counts,
                "pending": len(self._pending),
                "running": self._running is not None,
                "max_pending": self.max_pending,
            }

    def _ensure_worker(self) -> None:
        """Start the worker (again in a forked child: threads do not survive fork)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._running = None
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                key, payload = self._pending.popitem(last=True)  # the most recently opened task first
                self._running = key
            try:
                self._work(key, payload)
                outcome = "done"
            except Exception as exc:  # noqa: BLE001 - a failed prewarm only costs the first click its speed
                logger.warning("prewarming %s failed: %s", _describe(key), exc)
                outcome = "failed"
            with self._cond:
                self._running = None
                self.counts[outcome] += 1
                self._cond.notify_all()


def _describe(key: Hashable) -> str:
    return str(key[0]) if isinstance(key, tuple) and key else str(key)
