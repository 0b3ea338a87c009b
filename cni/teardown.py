"""Deferred DEL: the runtime's DEL returns once the teardown is recorded; the kernel work follows.

Why: a DEL's work is one RTM_DELLINK of the pod's host veth plus an IPAM release, but the kernel
answers the RTM_DELLINK only after the device is unregistered, which waits for RCU callbacks on
every CPU (`rcu_barrier` in `netdev_run_todo`): 14–35 ms on the 2-vCPU machine of
benchmarks/results/cni_bench.md, nearly all of a DEL's time, with the CPU idle. Nothing the
runtime does next needs that wait (it deletes the pod's namespace, which the kernel also tears
down in the background), so the agent answers first and lets a worker wait for the kernel.

What stays true (each is tested in tests/unit/test_cni_teardown.py and test_cni_handler.py):
- Nothing is lost: before success is returned the DEL is written to the spool directory, as the
  shim's own request when the agent is down (`<containerID>-<ifname>.json`, same format), and the
  file is removed only after the teardown. A crash in between leaves the file, which the agent
  replays when it starts (Agent._replay_pending_deletes). When the file cannot be written, the DEL
  is done before answering, as without this module.
- The key (container ID, ifname) stays locked until the teardown is done: an ADD, CHECK or DEL of
  the same key waits for it, so a re-ADD never meets the old veth.
- The address is released only after the veth, and with it the podIP/32 route, is gone (or its
  deletion failed, which is logged: a DEL always releases, as before): a new pod does not get an
  address that is still routed to the old one. An ADD that finds the pool exhausted waits for the
  pending teardowns and tries once more; GC waits for them a little and leaves the ones still
  running to their workers.
- Shutdown waits (bounded) for the pending teardowns; what is left is replayed at the next start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from netplane.cni.protocol import CniRequest
from netplane.metrics import Gauge, Histogram, Registry

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (container ID, ifname)


class DeleteJournal(Protocol):
    """Where a deferred DEL is recorded until its teardown is done (real: SpoolJournal)."""

    def record(self, key: Key, request: dict[str, Any]) -> None: ...  # OSError when it cannot
    def forget(self, key: Key) -> None: ...


class SpoolJournal:
    """The shim's pending-DEL spool directory: one `<containerID>-<ifname>.json` per DEL, written
    to a temporary file and renamed (a crash never leaves half a file under the final name)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, key: Key) -> str:
        # Both parts were validated like libcni (no '/', no '..'): safe in a file name.
        return os.path.join(self.directory, f"{key[0]}-{key[1]}.json")

    def record(self, key: Key, request: dict[str, Any]) -> None:
        import json

        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=self.directory)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(request, f, separators=(",", ":"))
            os.rename(tmp, self.path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def forget(self, key: Key) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass


class DeferredTeardown:
    """Runs DEL teardowns on worker threads (started on first use), each holding its key's lock."""

    def __init__(self, teardown: Callable[[CniRequest], None], journal: DeleteJournal, workers: int,
                 registry: Registry) -> None:
        if workers < 1:
            raise ValueError(f"deferred teardown needs at least one worker, not {workers}")
        self._teardown = teardown
        self._journal = journal
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a job
        self._jobs: list[tuple[CniRequest, Callable[[], None], float]] = []
        self._pending: dict[Key, int] = {}
        self._cond = threading.Condition()
        Gauge(registry, "netplane_cni_deferred_deletes",
              "DELs answered whose teardown (veth deletion, IP release) is still running",
              fn=lambda: [((), self.pending())])
        self.duration = Histogram(registry, "netplane_cni_teardown_duration_seconds",
                                  "Time from a deferred DEL's answer to the end of its teardown")

    def submit(self, req: CniRequest, request: dict[str, Any], release: Callable[[], None]) -> bool:
        """Record the DEL and queue its teardown; the caller holds the key's lock and, when True
        is returned, hands it over: the worker calls `release` when the teardown is done. False:
        the journal could not be written; nothing was queued and the caller still holds the key."""
        key = (req.container_id, req.ifname)
        with self._cond:  # pending before the file exists: the replay loop skips pending keys
            self._pending[key] = self._pending.get(key, 0) + 1
        try:
            self._journal.record(key, request)
        except OSError as e:
            log.warning("DEL %s/%s: cannot record it for a deferred teardown (%s); tearing down now",
                        key[0], key[1], e)
            self._done(key)
            return False
        with self._cond:
            self._jobs.append((req, release, time.perf_counter()))
            if self._idle < len(self._jobs) and len(self._threads) < self._workers:
                t = threading.Thread(target=self._work, name=f"cni-teardown-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            self._cond.notify_all()  # drain() waits on it too
        return True

    def pending(self) -> int:
        with self._cond:
            return sum(self._pending.values())

    def pending_keys(self) -> set[Key]:
        with self._cond:
            return set(self._pending)

    def is_pending(self, key: Key) -> bool:
        with self._cond:
            return key in self._pending

    def drain(self, timeout: float) -> bool:
        """Wait until no teardown is pending; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._jobs:
                    self._cond.wait()
                self._idle -= 1
                req, release, queued = self._jobs.pop(0)
            key = (req.container_id, req.ifname)
            try:
                self._teardown(req)
                self._journal.forget(key)
            except Exception:
                # The journal entry stays: the agent's reconcile loop replays it.
                log.exception("deferred teardown of %s/%s failed", key[0], key[1])
            finally:
                self.duration.observe(time.perf_counter() - queued)
                release()
                self._done(key)

    def _done(self, key: Key) -> None:
        with self._cond:
            left = self._pending[key] - 1
            if left:
                self._pending[key] = left
            else:
                del self._pending[key]
            self._cond.notify_all()
