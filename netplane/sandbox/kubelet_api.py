"""The kubelet's writes to the apiserver, from one thread (like the kubelet's status manager).

Pod workers never talk to the apiserver themselves: they hand over the newest status of their
pod (coalesced: only the latest per pod is sent), Events, and the final DELETE. One thread, one
keep-alive connection per kubelet, whatever the number of pods; a slow apiserver delays status
reports but never a pod's processes. Statuses go out before queued actions, so a pod's final
status precedes its DELETE.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from netplane.errors import ApiUnavailableError, ConflictError, NetplaneError, NotFoundError
from netplane.k8s.client import Client, resource_path

log = logging.getLogger("netplane.sandbox.kubelet")

RETRY_DELAY = 1.0


class ApiWriter:
    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._statuses: dict[str, tuple[str, dict[str, Any]]] = {}
        self._actions: collections.deque[tuple[str, Callable[[], object]]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"{name} api writer")

    def start(self) -> None:
        self._stop.clear()
        if not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=self._thread.name)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (within `timeout`), then end the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was sent (tests, orderly shutdown)."""
        return self._idle.wait(timeout)

    # ----------------------------------------------------------------------------- queueing

    def put_status(self, uid: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = resource_path("v1", "pods", namespace, name, "status")
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "status": status}
        with self._lock:
            self._statuses[uid] = (path, body)
            self._idle.clear()
        self._wake.set()

    def delete_pod(self, uid: str, namespace: str, name: str) -> None:
        """DELETE with gracePeriodSeconds=0 and a uid precondition (never a newer namesake)."""
        path = resource_path("v1", "pods", namespace, name)

        def delete() -> None:
            try:
                self.client.request("DELETE", path, query={"gracePeriodSeconds": "0"}, body={
                    "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid}})
                log.info("pod %s/%s: deleted", namespace, name)
            except (NotFoundError, ConflictError):
                pass  # already gone, or the name belongs to a newer pod now
        self._action(f"delete pod {namespace}/{name}", delete)

    def create(self, what: str, path: str, body: dict[str, Any]) -> None:
        self._action(what, lambda: self.client.create(path, body))

    def _action(self, what: str, fn: Callable[[], object]) -> None:
        with self._lock:
            self._actions.append((what, fn))
            self._idle.clear()
        self._wake.set()

    # -------------------------------------------------------------------------------- loop

    def _run(self) -> None:
        while True:
            self._wake.wait(RETRY_DELAY)
            self._wake.clear()
            with self._lock:
                statuses, self._statuses = self._statuses, {}
                actions = list(self._actions)
                self._actions.clear()
            failed = False
            for uid, (path, body) in statuses.items():
                try:
                    self.client.update(path, body)
                except (NotFoundError, ConflictError):
                    pass  # the pod is gone (or replaced): nothing to report
                except ApiUnavailableError as e:
                    failed = True
                    log.warning("status of %s not sent (%s); retrying", path, e)
                    with self._lock:
                        self._statuses.setdefault(uid, (path, body))  # unless superseded
                except NetplaneError as e:
                    log.warning("status of %s rejected: %s", path, e)
            if failed:  # keep the order: these wait for the statuses before them
                with self._lock:
                    self._actions.extendleft(reversed(actions))
                actions = []
            for i, (what, fn) in enumerate(actions):
                try:
                    fn()
                except ApiUnavailableError as e:
                    failed = True
                    log.warning("%s failed (%s); retrying", what, e)
                    with self._lock:
                        self._actions.extendleft(reversed(actions[i:]))
                    break
                except NetplaneError as e:
                    log.warning("%s failed: %s", what, e)
            with self._lock:
                pending = bool(self._statuses or self._actions)
                if not pending:
                    self._idle.set()
            if self._stop.is_set() and (not pending or failed):
                return
            if failed:
                self._stop.wait(RETRY_DELAY)
                self._wake.set()
