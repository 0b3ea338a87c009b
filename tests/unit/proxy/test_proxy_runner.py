"""BoundedFrequencyRunner timing, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import threading
import time

import pytest

from netplane.errors import ConfigError, NetplaneError
from netplane.proxy.runner import BoundedFrequencyRunner, FakeClock


class Recorder:
    """fn for the runner: records the (fake) time of each call; can take time or fail."""

    def __init__(self, clock: FakeClock, duration: float = 0.0) -> None:
        self.clock = clock
        self.duration = duration
        self.calls: list[float] = []
        self.fail_next = 0

    def __call__(self) -> None:
        self.calls.append(self.clock.monotonic())
        self.clock.advance(self.duration)
        if self.fail_next:
            self.fail_next -= 1
            raise NetplaneError("boom")


def make(min_i: float = 1.0, max_i: float = 30.0, retry: float = 5.0, duration: float = 0.0):
    clock = FakeClock(start=0.0)
    fn = Recorder(clock, duration)
    return clock, fn, BoundedFrequencyRunner("test", fn, min_interval=min_i, max_interval=max_i,
                                             retry_interval=retry, clock=clock)


def test_first_run_is_immediate_and_later_ones_respect_min_interval() -> None:
    clock, fn, r = make(min_i=1.0)
    r.run()
    assert r.tick() == pytest.approx(30.0)  # ran; next: periodic
    assert fn.calls == [0.0]
    clock.advance(0.25)
    r.run()
    assert r.tick() == pytest.approx(0.75)  # too early: deferred
    assert fn.calls == [0.0]
    clock.advance(0.75)
    r.tick()
    assert fn.calls == [0.0, 1.0]


def test_min_interval_counts_from_the_end_of_the_previous_run() -> None:
    clock, fn, r = make(min_i=1.0, duration=0.5)
    r.run()
    r.tick()  # runs 0.0 → 0.5
    r.run()
    assert r.tick() == pytest.approx(1.0)
    clock.advance(1.0)
    r.tick()
    assert fn.calls == [0.0, 1.5]


def test_run_calls_coalesce() -> None:
    clock, fn, r = make(min_i=2.0)
    r.run()
    r.tick()
    for _ in range(50):
        r.run()
        clock.advance(0.01)
        r.tick()
    clock.advance(2.0)
    r.tick()
    r.tick()
    assert fn.calls == [0.0, 2.5]


def test_periodic_run_every_max_interval() -> None:
    clock, fn, r = make(min_i=1.0, max_i=10.0)
    assert r.tick() == pytest.approx(10.0)  # nothing asked for: wait for the periodic run
    clock.advance(10.0)
    r.tick()
    clock.advance(3.0)
    r.run()
    r.tick()  # an on-demand run at 13 moves the next periodic one to 23
    clock.advance(9.0)
    assert r.tick() == pytest.approx(1.0)
    clock.advance(1.0)
    r.tick()
    assert fn.calls == [10.0, 13.0, 23.0]


def test_failure_is_retried_after_retry_interval_and_success_cancels_it() -> None:
    clock, fn, r = make(min_i=1.0, max_i=30.0, retry=5.0)
    fn.fail_next = 2
    r.run()
    assert r.tick() == pytest.approx(5.0)
    clock.advance(5.0)
    assert r.tick() == pytest.approx(5.0)  # failed again
    clock.advance(5.0)
    assert r.tick() == pytest.approx(30.0)  # succeeded: back to the periodic schedule
    assert fn.calls == [0.0, 5.0, 10.0]
    assert r.runs == 3


def test_unexpected_exceptions_are_logged_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=0.0)
    calls = []

    def fn() -> None:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise KeyError("bug")

    r = BoundedFrequencyRunner("t", fn, min_interval=1, max_interval=30, retry_interval=2,
                               clock=clock)
    r.run()
    r.tick()
    clock.advance(2)
    r.tick()
    assert calls == [0.0, 2.0]
    assert any(rec.exc_info for rec in caplog.records)


def test_retry_never_beats_min_interval() -> None:
    clock, fn, r = make(min_i=3.0, retry=1.0)
    fn.fail_next = 1
    r.run()
    assert r.tick() == pytest.approx(3.0)


def test_loop_with_a_fake_clock() -> None:
    clock, fn, r = make(min_i=1.0, max_i=10.0)
    stop = threading.Event()
    waits: list[float | None] = []

    def on_wait(timeout: float | None) -> None:
        waits.append(timeout)
        if len(waits) == 2:
            r.run()  # a change arrives while the loop sleeps
        if len(fn.calls) >= 3:
            stop.set()

    clock.on_wait = on_wait
    r.loop(stop)
    # periodic at 10, the run() arriving during the second wait at 10, min-interval → 11,
    # then the periodic one at 21
    assert fn.calls == [10.0, 11.0, 21.0]


def test_loop_stops_promptly_on_a_real_clock() -> None:
    calls = []
    r = BoundedFrequencyRunner("real", lambda: calls.append(1), min_interval=0.0,
                               max_interval=3600.0, retry_interval=1.0)
    stop = threading.Event()
    t = threading.Thread(target=r.loop, args=(stop,))
    t.start()
    try:
        r.run()
        deadline = time.monotonic() + 2
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [1]
    finally:
        stop.set()
        t.join(2)
    assert not t.is_alive()


def test_bad_intervals_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="bad"):
        BoundedFrequencyRunner("bad", lambda: None, min_interval=10, max_interval=1,
                               retry_interval=1)
