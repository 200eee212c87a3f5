"""The background thread shared by the decoder engine and the encoder micro-batchers."""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("danlu.serve")


class QueueFull(Exception):
    """Transient overload: more work is waiting than --max-queue allows (429, retry later)."""


class NeverFits(Exception):
    """A request larger than the server can ever hold (400 naming the limit, never 429)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class BadInput(ValueError):
    """Raised by a runner for an input at fault: that request gets 400 with this message."""


class WorkerDead(Exception):
    """The worker thread has died; the server answers 503 and exits non-zero."""


class BackgroundWorker:
    """Runs `self._loop` on a daemon thread. The loop waits on `self.cond` and ends once `self.running` is
    false; `stop` clears it, wakes the loop and waits for it to finish its work.

    A request's failure is the loop's business (it fails that request only). Should the loop itself die,
    `failure` says why, every pending request is failed by `_fail_pending`, and `on_failure` is called
    (the server then reports 503 on /health and exits non-zero so that a supervisor restarts it).
    """

    thread_name = "danlu-worker"

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def _fail_pending(self, reason: str) -> None:
        """Fail every request that is queued or running (called once the loop has died)."""
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 -- a dead worker must be reported, whatever killed it
            log.exception("%s died", self.thread_name)
            self.failure = f"{self.thread_name} thread died: {type(e).__name__}: {e}"
            with self.cond:
                self.running = False
                self._fail_pending(self.failure)
            if self.on_failure:
                self.on_failure(self.failure)

    def check_alive(self) -> None:
        """Raise WorkerDead when the loop has died (so that new requests get 503 at once)."""
        if self.failure is not None:
            raise WorkerDead(self.failure)

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        if self.thread:
            self.thread.join(timeout=30)


def check_fits(count: int, max_batch_size: int, max_queue: int, what: str, param: str) -> None:
    """400 (NeverFits) for a request of `count` sequences or inputs that no idle server could take."""
    limit = max_batch_size + max_queue
    if count > limit:
        raise NeverFits(f"this request needs {count} {what}; this server holds at most {limit} at once "
                        f"(--max-batch-size {max_batch_size} + --max-queue {max_queue}): split it", param)
