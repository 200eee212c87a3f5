"""The background thread shared by the decoder engine and the encoder micro-batcher."""

from __future__ import annotations

import threading


class BackgroundWorker:
    """Runs `self._loop` on a daemon thread. The loop waits on `self.cond` and ends once `self.running` is
    false; `stop` clears it, wakes the loop and waits for it to finish its work."""

    thread_name = "danlu-worker"

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        if self.thread:
            self.thread.join(timeout=30)
