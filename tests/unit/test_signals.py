"""A stop signal delivered to a worker thread must still stop the main thread's wait (the
sandbox daemon once slept until SIGKILL because of this)."""

from __future__ import annotations

import signal
import threading
import time

from netplane import signals


def test_signal_on_a_worker_thread_wakes_the_main_thread_wait():
    stop, extra = threading.Event(), threading.Event()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    worker_ready = threading.Event()
    finish = threading.Event()

    def worker() -> None:
        worker_ready.set()
        finish.wait(10)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    worker_ready.wait(5)
    try:
        signals.stop_on_signals(stop, extra)
        # The kernel would pick any thread; aim at the worker, the case that used to hang.
        threading.Timer(0.2, lambda: signal.pthread_kill(t.ident, signal.SIGTERM)).start()
        start = time.monotonic()
        assert signals.wait(stop, timeout=10)
        assert time.monotonic() - start < 2 * signals.SLICE_SECONDS + 0.5
        assert extra.is_set()
    finally:
        finish.set()
        for s, h in old.items():
            signal.signal(s, h)


def test_wait_times_out_and_returns_the_event_state():
    e = threading.Event()
    start = time.monotonic()
    assert signals.wait(e, timeout=0.3) is False
    assert 0.25 < time.monotonic() - start < 1.0
    e.set()
    assert signals.wait(e, timeout=5) is True
