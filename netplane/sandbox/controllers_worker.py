"""The controllers' loop: a de-duplicating work queue drained by one worker thread.

A controller is pure `compute_*` functions plus a `Worker`: informer handlers only enqueue a key;
the worker thread drains the queue (a key queued many times is reconciled once), rate-limited,
with a periodic full resync and per-key exponential backoff on errors. A reconcile always
re-reads the informers' caches, so it acts on the newest state whatever the trigger was.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from netplane.errors import ApiError, ApiUnavailableError, NetplaneError
from netplane.k8s import Backoff

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- work queue


class WorkQueue:
    """De-duplicating queue with delayed adds, with client-go workqueue semantics: a key waits
    at most once; a key added while it is being processed is processed again after `done`, so
    one key never runs on two threads and no change is lost."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._waiting: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if not self._shutdown:
                heapq.heappush(self._waiting, (self._clock() + delay, next(self._seq), key))
                self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next key (now being processed), or None on timeout or shutdown."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._shutdown:
                now = self._clock()
                while self._waiting and self._waiting[0][0] <= now:
                    self._add_locked(heapq.heappop(self._waiting)[2])
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    return None
                if self._waiting:
                    due = self._waiting[0][0] - now
                    wait = due if wait is None else min(wait, due)
                self._cond.wait(wait)
            return None

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)


class Requeue(Exception):
    """Raised by a reconcile that cannot act yet (the cache has not seen our last write):
    try the key again after `delay`, without logging an error."""

    def __init__(self, reason: str, delay: float = 0.1) -> None:
        super().__init__(reason)
        self.delay = delay


class TokenBucket:
    """At most `burst` reconciles at once, refilled at `qps` per second."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.qps, self.burst, self._clock = qps, burst, clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


class Worker:
    """One thread draining a WorkQueue into `reconcile(key)`.

    - waits until `ready()` (the informers synced): acting on a half-filled cache would, e.g.,
      remove every endpoint of a Service whose pods are not listed yet;
    - every `resync_period` seconds enqueues `resync_keys()` (a safety net: it also repairs
      objects someone changed behind our back);
    - a failing key is retried after `backoff.delay(failures)`; success forgets its failures;
    - never dies: every exception is logged and retried.
    """

    def __init__(
        self,
        name: str,
        reconcile: Callable[[str], object],
        *,
        resync_keys: Callable[[], Iterable[str]] = tuple,
        ready: Callable[[], bool] = lambda: True,
        resync_period: float = 30.0,
        backoff: Backoff = Backoff(initial=0.05, maximum=30.0, jitter=0.2),
        qps: float = 50.0,
        burst: int = 200,
    ) -> None:
        self.name = name
        self._reconcile = reconcile
        self._resync_keys = resync_keys
        self._ready = ready
        self.resync_period = resync_period
        self._backoff = backoff
        self._limiter = TokenBucket(qps, burst)
        self._rng = random.Random()
        self._failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue = WorkQueue()
        self.reconciles = 0  # counters, for tests and status
        self.errors = 0

    def enqueue(self, key: str) -> None:
        if key:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        for key in self._resync_keys():
            self.enqueue(key)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"controller {self.name} already running")
        self._stop.clear()
        if self.queue._shutdown:  # restart after stop(): a fresh queue, filled by a resync
            self.queue = WorkQueue()
        self._thread = threading.Thread(target=self._run, name=f"controller {self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.shutdown()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("controller %s: worker did not stop within %.1fs", self.name, timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
                return
            except Exception:  # a bug outside reconcile (say, in resync_keys): keep going
                log.exception("controller %s: worker loop failed; restarting it", self.name)
                self._stop.wait(1.0)

    def _loop(self) -> None:
        while not self._stop.is_set() and not self._ready():
            self._stop.wait(0.05)
        if self._stop.is_set():
            return
        log.info("controller %s: caches synced; starting", self.name)
        next_resync = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_resync:
                next_resync = now + self.resync_period
                self.enqueue_all()
            key = self.queue.get(timeout=max(0.0, next_resync - now))
            if key is None:
                continue
            try:
                wait = self._limiter.reserve()
                if wait > 0 and self._stop.wait(wait):
                    return
                self.process(key)
            finally:
                self.queue.done(key)

    def process(self, key: str) -> bool:
        """Reconcile one key now, handling errors as the loop does; True on success."""
        self.reconciles += 1
        try:
            self._reconcile(key)
        except Requeue as exc:
            log.debug("controller %s: %s: %s; again in %.2fs", self.name, key, exc, exc.delay)
            self.queue.add_after(key, exc.delay)
            return False
        except Exception as exc:  # never let one key kill the worker
            self.errors += 1
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = self._backoff.delay(failures, self._rng)
            if isinstance(exc, (ApiError, ApiUnavailableError, NetplaneError)):
                log.warning("controller %s: %s failed (%s); retry %d in %.2fs",
                            self.name, key, exc, failures, delay)
            else:
                log.exception("controller %s: %s failed unexpectedly; retry %d in %.2fs",
                              self.name, key, failures, delay)
            self.queue.add_after(key, delay)
            return False
        self._failures.pop(key, None)
        return True
