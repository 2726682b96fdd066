"""Progress reports and cancellation for long work (volumes, propagation, tiles, distillation).

Long-running functions take `progress(done, total)`, called as units of work finish, and `cancel`, a
`threading.Event` another thread (a cancel button, a signal handler) sets to stop the work with
`mobilesam.errors.Cancelled`. `raise_if_cancelled` is the check; `Progress` counts and checks.
"""

import threading
from collections.abc import Callable

from .errors import Cancelled

ProgressCallback = Callable[[int, int], None]


def is_cancelled(cancel: threading.Event | None) -> bool:
    """Whether `cancel` is set; None never cancels."""
    return cancel is not None and cancel.is_set()


def raise_if_cancelled(cancel: threading.Event | None, message: str) -> None:
    """Stop with `Cancelled(message)` once `cancel` is set; None never cancels."""
    if is_cancelled(cancel):
        raise Cancelled(message)


class Progress:
    """Counts finished units of work for a progress callback and honours a cancel event.

    `stopped` is the `Cancelled` message, formatted with the {done} and {total} of the moment.
    """

    def __init__(
        self,
        total: int,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        stopped: str = "stopped after {done} of {total} steps",
    ):
        self.total, self.done, self.progress, self.cancel = total, 0, progress, cancel
        self.stopped = stopped

    def check(self) -> None:
        if is_cancelled(self.cancel):
            raise Cancelled(self.stopped.format(done=self.done, total=self.total))

    def advance(self) -> None:
        """One more unit done: report it."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def tick(self) -> None:
        """One more unit done: report it, then stop here if cancelled."""
        self.advance()
        self.check()
