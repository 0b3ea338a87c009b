"""BoundedFrequencyRunner: kube-proxy's pkg/proxy/runner, with an injected clock.

It runs `fn` on one thread (the one calling `loop`) and guarantees:
  1. runs never start less than `min_interval` after the previous run ended; `run()` calls in
     the meantime coalesce into one pending run (kube-proxy's channel of size 1);
  2. `fn` runs at least every `max_interval` even if nobody asks (periodic resync);
  3. a run that raises is retried after `retry_interval` (or sooner if something else triggers
     a run); the exception is logged and the loop carries on.

Time comes from a `Clock` so tests drive it: `FakeClock` advances time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from netplane.errors import ConfigError, NetplaneError

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps in metrics and health answers)."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until `event` is set or `timeout` seconds pass; returns event.is_set()."""
        ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


REAL_CLOCK = RealClock()


class FakeClock:
    """Test clock: `wait` returns at once, advancing time by the timeout if the event is not set.

    `on_wait(timeout)` is called before each advancing wait: tests use it to inject events
    (a `run()`, a stop) at chosen moments.
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.on_wait: Callable[[float | None], object] | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if self.on_wait is not None:
            self.on_wait(timeout)
            if event.is_set():
                return True
        if timeout is None:
            raise RuntimeError("FakeClock.wait without a timeout would block forever")
        self.advance(timeout)
        return event.is_set()


class BoundedFrequencyRunner:
    def __init__(
        self,
        name: str,
        fn: Callable[[], object],
        *,
        min_interval: float,
        max_interval: float,
        retry_interval: float,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        if max_interval < min_interval:
            raise ConfigError(f"runner {name}: max_interval ({max_interval}s) must be >= "
                              f"min_interval ({min_interval}s)")
        if min_interval < 0 or retry_interval <= 0:
            raise ConfigError(f"runner {name}: intervals must be positive")
        self.name = name
        self._fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = False
        self._last_end: float | None = None
        self._periodic_at: float | None = None
        self._retry_at: float | None = None
        self.runs = 0  # completed calls of fn, for tests and logs

    def run(self) -> None:
        """Ask for a run as soon as allowed; calls before it happens coalesce into one."""
        with self._lock:
            self._pending = True
        self._wake.set()

    def tick(self) -> float:
        """Run `fn` if a run is due now; returns seconds until the next run could be due."""
        now = self._clock.monotonic()
        if self._periodic_at is None:
            self._periodic_at = now + self.max_interval
        delay = self._delay(now)
        if delay > 0:
            return delay
        with self._lock:
            self._pending = False
        ok = self._call()
        end = self._clock.monotonic()
        self._last_end = end
        self._periodic_at = end + self.max_interval
        self._retry_at = None if ok else end + self.retry_interval
        if not ok:
            log.info("runner %s: retrying in %.1fs", self.name, self.retry_interval)
        return self._delay(end)

    def _delay(self, now: float) -> float:
        with self._lock:
            pending = self._pending
        assert self._periodic_at is not None
        trigger = now if pending else self._periodic_at
        if self._retry_at is not None:
            trigger = min(trigger, self._retry_at)
        earliest = trigger
        if self._last_end is not None:
            earliest = max(earliest, self._last_end + self.min_interval)
        return max(0.0, earliest - now)

    def _call(self) -> bool:
        try:
            self._fn()
        except NetplaneError as exc:
            log.warning("runner %s: run failed: %s", self.name, exc)
            return False
        except Exception:
            log.exception("runner %s: run failed", self.name)
            return False
        finally:
            self.runs += 1
        return True

    def loop(self, stop: threading.Event) -> None:
        """Run until `stop` is set (blocking; call it on the thread that should run `fn`)."""
        log.debug("runner %s: loop starting", self.name)
        # The loop sleeps on its own wake event; this helper turns `stop` into a wake-up so
        # stopping does not wait for the next timer.
        waker = threading.Thread(target=lambda: (stop.wait(), self._wake.set()),
                                 name=f"{self.name} stop waker", daemon=True)
        waker.start()
        while not stop.is_set():
            self._wake.clear()
            delay = self.tick()
            if stop.is_set():
                break
            if delay > 0:
                self._clock.wait(self._wake, delay)
        self._wake.set()
        log.debug("runner %s: loop stopped", self.name)
