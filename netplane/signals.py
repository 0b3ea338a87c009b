"""Waiting for a stop signal in a multi-threaded process.

Linux delivers a process-directed signal (SIGTERM from `kill`) to any thread that does not block
it. CPython runs Python-level handlers only in the main thread, and only once that thread gets
control: a main thread parked in an untimed `Event.wait()` is not interrupted when the signal
lands on a worker thread, so the handler (and the shutdown) can wait forever. Waiting in short
slices gives the main thread regular chances to run pending handlers.
"""

from __future__ import annotations

import signal
import threading
import time

SLICE_SECONDS = 0.5


def wait(event: threading.Event, timeout: float | None = None) -> bool:
    """Like `event.wait(timeout)`, but wakes every SLICE_SECONDS so signal handlers can run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = SLICE_SECONDS if deadline is None else min(SLICE_SECONDS, deadline - time.monotonic())
        if step <= 0:
            return event.is_set()
        if event.wait(step):
            return True


def stop_on_signals(event: threading.Event, *extra: threading.Event) -> None:
    """SIGTERM and SIGINT set `event` (and any `extra` events, e.g. to wake a resync loop)."""
    def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        event.set()
        for e in extra:
            e.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
