"""A small scheduler: binds pods without `spec.nodeName` to a schedulable, Ready node that
matches their `nodeSelector` and tolerates its NoSchedule/NoExecute taints, choosing the node
running the fewest non-terminated pods (ties by name).

Binding goes through the `pods/binding` subresource as kube-scheduler's does (a pod's spec may
not change nodeName). A pod that fits nowhere gets PodScheduled=False (reason Unschedulable, a
message as kube-scheduler words it) and a FailedScheduling event, and is retried whenever nodes
or pods change, and on every resync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.errors import ApiError, ConflictError, NotFoundError
from netplane.k8s import resource_path
from netplane.sandbox.controllers_base import (
    ControllerInformers,
    Obj,
    condition_status,
    get_in,
    is_terminating,
    key_of,
    labels_of,
    name_of,
    namespace_of,
    now_rfc3339,
    pod_is_terminated,
    record_event,
    selector_matches,
)
from netplane.sandbox.controllers_worker import Worker

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"
_KEY = "pending"  # choices depend on each other (pod counts): one pass over all pending pods


def needs_scheduling(pod: Obj) -> bool:
    """Unbound, not being deleted, not finished, ours (schedulerName), not gated."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    return (not spec.get("nodeName") and not is_terminating(pod) and not pod_is_terminated(pod)
            and (spec.get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME
            and not spec.get("schedulingGates"))


def node_is_ready(node: Obj) -> bool:
    return condition_status(node, "Ready") == "True"


def _tolerates(tolerations: Iterable[Any], taint: Mapping[str, Any]) -> bool:
    """upstream Toleration.ToleratesTaint."""
    for tol in tolerations:
        if not isinstance(tol, Mapping):
            continue
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("key") and tol.get("key") != taint.get("key"):
            continue
        operator = tol.get("operator") or "Equal"
        if operator == "Exists" or (operator == "Equal" and tol.get("key")
                                    and (tol.get("value") or "") == (taint.get("value") or "")):
            return True
    return False


def _untolerated_taint(pod: Obj, node: Obj) -> Mapping[str, Any] | None:
    tolerations = get_in(pod, "spec", "tolerations", default=()) or ()
    for taint in get_in(node, "spec", "taints", default=()) or ():
        if (isinstance(taint, Mapping) and taint.get("effect") in ("NoSchedule", "NoExecute")
                and not _tolerates(tolerations, taint)):
            return taint
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    node: str | None  # None: unschedulable
    message: str = ""  # why not, as kube-scheduler's FailedScheduling message


def choose_node(pod: Obj, nodes: Iterable[Obj], pod_counts: Mapping[str, int]) -> Decision:
    """Where `pod` goes: among the nodes it fits, the one with the fewest pods, then by name."""
    nodes = sorted(nodes, key=name_of)
    if not nodes:
        return Decision(None, "no nodes available to schedule pods")
    selector = get_in(pod, "spec", "nodeSelector", default={}) or {}
    reasons: dict[str, int] = {}
    fits: list[str] = []
    for node in nodes:
        taint = _untolerated_taint(pod, node)
        if get_in(node, "spec", "unschedulable"):
            why = "node(s) were unschedulable"
        elif not node_is_ready(node):
            why = "node(s) were not ready"
        elif not selector_matches(selector, labels_of(node)):
            why = "node(s) didn't match Pod's node affinity/selector"
        elif taint is not None:
            why = (f"node(s) had untolerated taint {{{taint.get('key', '')}: "
                   f"{taint.get('value', '')}}}")
        else:
            fits.append(name_of(node))
            continue
        reasons[why] = reasons.get(why, 0) + 1
    if not fits:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return Decision(None, f"0/{len(nodes)} nodes are available: {detail}.")
    return Decision(min(fits, key=lambda n: (pod_counts.get(n, 0), n)))


def compute_bindings(pods: Iterable[Obj], nodes: Iterable[Obj]) -> dict[str, Decision]:
    """A Decision for every pod that needs scheduling (namespace/name -> Decision), oldest pod
    first; each binding counts towards the next choice, so a batch spreads over the nodes."""
    pods, nodes = list(pods), list(nodes)
    counts: dict[str, int] = {}
    for pod in pods:
        node = get_in(pod, "spec", "nodeName")
        if node and not pod_is_terminated(pod):
            counts[node] = counts.get(node, 0) + 1
    pending = sorted((p for p in pods if needs_scheduling(p)),
                     key=lambda p: (str(get_in(p, "metadata", "creationTimestamp", default="")),
                                    namespace_of(p), name_of(p)))
    out: dict[str, Decision] = {}
    for pod in pending:
        decision = choose_node(pod, nodes, counts)
        if decision.node is not None:
            counts[decision.node] = counts.get(decision.node, 0) + 1
        out[key_of(pod)] = decision
    return out


def _unschedulable_condition(pod: Obj) -> tuple[str | None, str | None]:
    for cond in get_in(pod, "status", "conditions", default=()) or ():
        if isinstance(cond, Mapping) and cond.get("type") == "PodScheduled":
            if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                return "Unschedulable", cond.get("message")
            return cond.get("status"), None
    return None, None


class SchedulerController:
    """Binds pending pods. `start()`/`stop()` run its worker; the informers are started and
    stopped by their owner (see `ControlPlane`)."""

    def __init__(self, client: Any, informers: ControllerInformers, *,
                 resync_period: float = 30.0) -> None:
        self._client = client
        self._pods = informers.pods
        self._nodes = informers.nodes
        self._lock = threading.Lock()
        # Bindings done that the pod cache does not show yet (kube-scheduler's "assumed" pods):
        # without them the next pass would count the node short and bind the pod twice.
        self._assumed: dict[str, tuple[str, str]] = {}  # pod key -> (uid, node)
        # Unschedulable messages written, until the cache shows them (no duplicate writes/events).
        self._told: dict[str, tuple[str, str]] = {}  # pod key -> (uid, message)
        self._handlers_added = False
        self.bound = 0  # bindings done, for tests and status
        self.worker = Worker("scheduler", self.reconcile, resync_keys=lambda: [_KEY],
                             ready=lambda: self._pods.has_synced() and self._nodes.has_synced(),
                             resync_period=resync_period)

    def start(self) -> None:
        if not self._handlers_added:
            self._handlers_added = True
            enqueue = lambda *_: self.worker.enqueue(_KEY)  # noqa: E731
            # Any pod change may free room or need a node; any node change may make room.
            self._pods.add_handler(on_add=enqueue, on_update=enqueue, on_delete=enqueue)
            self._nodes.add_handler(on_add=enqueue, on_update=enqueue, on_delete=enqueue)
        self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.worker.stop(timeout)

    def _view(self) -> list[Obj]:
        pods = self._pods.list()
        with self._lock:
            by_key = {key_of(p): p for p in pods}
            for key, (uid, _node) in list(self._assumed.items()):
                pod = by_key.get(key)
                if (pod is None or get_in(pod, "metadata", "uid") != uid
                        or get_in(pod, "spec", "nodeName")):
                    del self._assumed[key]
            for key in [k for k in self._told if k not in by_key
                        or not needs_scheduling(by_key[k])]:
                del self._told[key]  # bound or gone: a later pod of that name starts afresh
            view: list[Obj] = []
            for pod in pods:
                held = self._assumed.get(key_of(pod))
                if held is not None:
                    pod = {**pod, "spec": {**pod.get("spec", {}), "nodeName": held[1]}}
                view.append(pod)
        return view

    def reconcile(self, key: str) -> None:
        pods = self._view()
        by_key = {key_of(p): p for p in pods}
        failed: list[str] = []
        for pod_key, decision in compute_bindings(pods, self._nodes.list()).items():
            pod = by_key[pod_key]
            try:
                if decision.node is not None:
                    self._bind(pod, decision.node)
                else:
                    self._mark_unschedulable(pod, decision.message)
            except NotFoundError:
                continue  # deleted meanwhile
            except ApiError as exc:
                failed.append(f"{pod_key}: {exc}")
        if failed:
            raise ApiError(0, "SchedulingFailed", "; ".join(failed))

    def _bind(self, pod: Obj, node: str) -> None:
        ns, name = namespace_of(pod), name_of(pod)
        uid = str(get_in(pod, "metadata", "uid", default=""))
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": name, "namespace": ns, "uid": uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            self._client.create(resource_path("v1", "pods", ns, name, "binding"), binding)
        except ConflictError as exc:
            # Already bound (by us, on a pass the cache did not show yet) or being deleted.
            log.info("pod %s/%s: not bound: %s", ns, name, exc.message)
            return
        with self._lock:
            self._assumed[key_of(pod)] = (uid, node)
        self.bound += 1
        log.info("pod %s/%s: bound to node %s", ns, name, node)
        record_event(self._client, {"kind": "Pod", **pod}, reason="Scheduled",
                     message=f"Successfully assigned {ns}/{name} to {node}",
                     component=SCHEDULER_NAME)

    def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        status, old_message = _unschedulable_condition(pod)
        uid = str(get_in(pod, "metadata", "uid", default=""))
        with self._lock:
            told = self._told.get(key_of(pod)) == (uid, message)
        if told or (status == "Unschedulable" and old_message == message):
            return  # already says so: no write, no event
        ns, name = namespace_of(pod), name_of(pod)
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": message, "lastProbeTime": None}
        if status != "Unschedulable":
            condition["lastTransitionTime"] = now_rfc3339()
        # Strategic merge: conditions merge by type, so other conditions stay as they are.
        self._client.patch(resource_path("v1", "pods", ns, name, "status"),
                           {"status": {"conditions": [condition]}}, patch_type="strategic")
        with self._lock:
            self._told[key_of(pod)] = (uid, message)
        log.info("pod %s/%s: unschedulable: %s", ns, name, message)
        record_event(self._client, {"kind": "Pod", **pod}, reason="FailedScheduling",
                     message=message, event_type="Warning", component=SCHEDULER_NAME)
