"""What the sandbox controllers share besides their worker loop (`controllers_worker`): the
informers they read, slim object forms, a tracker of our own writes, events, and small pure
helpers on API-shaped dicts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from netplane.errors import NetplaneError
from netplane.k8s import Informer, resource_path

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.netplane.io"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"


# ------------------------------------------------------------------------- pure dict helpers


def get_in(obj: Any, *path: str, default: Any = None) -> Any:
    """obj[p0][p1]... tolerating missing keys and wrong types (objects come from users)."""
    for key in path:
        if not isinstance(obj, Mapping):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def name_of(obj: Obj) -> str:
    return str(get_in(obj, "metadata", "name", default=""))


def namespace_of(obj: Obj) -> str:
    return str(get_in(obj, "metadata", "namespace", default=""))


def key_of(obj: Obj) -> str:
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def labels_of(obj: Obj) -> Mapping[str, str]:
    labels = get_in(obj, "metadata", "labels", default={})
    return labels if isinstance(labels, Mapping) else {}


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service selector / nodeSelector: every key=value must be present. An empty or missing
    selector matches everything (callers decide whether "no selector" means "select nothing")."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def condition_status(obj: Obj, cond_type: str) -> str | None:
    for cond in get_in(obj, "status", "conditions", default=()) or ():
        if isinstance(cond, Mapping) and cond.get("type") == cond_type:
            return str(cond.get("status"))
    return None


def pod_is_ready(pod: Obj) -> bool:
    return condition_status(pod, "Ready") == "True"


def pod_is_terminated(pod: Obj) -> bool:
    return get_in(pod, "status", "phase") in ("Succeeded", "Failed")


def is_terminating(obj: Obj) -> bool:
    return bool(get_in(obj, "metadata", "deletionTimestamp"))


def pod_ips(pod: Obj) -> list[str]:
    """status.podIPs (primary first), else status.podIP."""
    ips = [e.get("ip") for e in get_in(pod, "status", "podIPs", default=()) or ()
           if isinstance(e, Mapping) and isinstance(e.get("ip"), str) and e.get("ip")]
    if not ips:
        single = get_in(pod, "status", "podIP")
        ips = [single] if isinstance(single, str) and single else []
    return ips


def now_rfc3339(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def prune(value: Any) -> Any:
    """Drop None, "", {} and [] recursively: how semantic comparisons ignore the difference
    between an absent field and an empty one (the server may store either)."""
    if isinstance(value, Mapping):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", {}, [])}
    if isinstance(value, (list, tuple)):
        return [prune(v) for v in value]
    return value


def rv_newer_or_equal(seen: str | None, wrote: str) -> bool:
    """Whether the cached resourceVersion `seen` is at least the one our write returned.
    Versions are opaque by contract but integers on both etcd and netplane's apiserver."""
    if seen is None:
        return False
    try:
        return int(seen) >= int(wrote)
    except ValueError:
        return seen == wrote


# ------------------------------------------------------------------------------ slim forms
#
# Controllers cache raw-shaped dicts, cut down to the fields they read. Dropping the rest
# (managedFields, annotations, heartbeat times, resourceVersion) keeps the caches small and makes
# the informer drop updates nobody here cares about (it compares converted values).


def _pick(obj: Any, keys: Iterable[str]) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        return {}
    return {k: obj[k] for k in keys if obj.get(k) is not None}


def slim_pod(raw: dict[str, Any]) -> dict[str, Any]:
    meta = _pick(raw.get("metadata"), ("name", "namespace", "uid", "labels", "creationTimestamp",
                                       "deletionTimestamp"))
    spec_in = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    spec = _pick(spec_in, ("nodeName", "nodeSelector", "hostname", "subdomain", "schedulerName",
                           "schedulingGates", "tolerations", "hostNetwork"))
    for field in ("containers", "initContainers"):
        containers = [_pick(c, ("name", "ports", "restartPolicy"))
                      for c in spec_in.get(field) or () if isinstance(c, Mapping)]
        if containers:
            spec[field] = containers
    status_in = raw.get("status") if isinstance(raw.get("status"), Mapping) else {}
    status = _pick(status_in, ("phase", "podIP", "podIPs"))
    conditions = [c for c in status_in.get("conditions") or ()
                  if isinstance(c, Mapping) and c.get("type") in ("Ready", "PodScheduled")]
    if conditions:
        status["conditions"] = conditions
    return {"metadata": meta, "spec": spec, "status": status}


def slim_node(raw: dict[str, Any]) -> dict[str, Any]:
    meta = _pick(raw.get("metadata"), ("name", "uid", "labels", "creationTimestamp",
                                       "deletionTimestamp"))
    spec = _pick(raw.get("spec"), ("podCIDR", "podCIDRs", "unschedulable", "taints"))
    # Only type and status: kubelets bump heartbeat times every few seconds.
    conditions = [{"type": c.get("type"), "status": c.get("status")}
                  for c in get_in(raw, "status", "conditions", default=()) or ()
                  if isinstance(c, Mapping) and c.get("type") == "Ready"]
    return {"metadata": meta, "spec": spec, "status": {"conditions": conditions}}


def slim_service(raw: dict[str, Any]) -> dict[str, Any]:
    meta = _pick(raw.get("metadata"), ("name", "namespace", "uid", "labels"))
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    return {"metadata": meta, "spec": spec}


def slim_owned(raw: dict[str, Any]) -> dict[str, Any]:
    """Objects we write (EndpointSlices, Endpoints): everything but managedFields, since an
    update is written from the cached object."""
    meta = raw.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        raw = {**raw, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return raw


def _slice_service_key(obj: Obj) -> list[str]:
    svc = labels_of(obj).get(SERVICE_NAME_LABEL)
    return [f"{namespace_of(obj)}/{svc}"] if svc else []


class ControllerInformers:
    """The informers the controllers share: one list+watch per collection for all three."""

    def __init__(self, client: Any, *, relist_period: float | None = None) -> None:
        by_ns = {"namespace": lambda o: [namespace_of(o)]}
        common: dict[str, Any] = {"relist_period": relist_period}
        self.nodes: Informer[dict[str, Any]] = Informer(
            client, resource_path("v1", "nodes"), slim_node, name="controllers/nodes", **common)
        self.pods: Informer[dict[str, Any]] = Informer(
            client, resource_path("v1", "pods"), slim_pod, name="controllers/pods",
            indexers={**by_ns, "node": lambda o: [get_in(o, "spec", "nodeName", default="")]},
            **common)
        self.services: Informer[dict[str, Any]] = Informer(
            client, resource_path("v1", "services"), slim_service, name="controllers/services",
            indexers=by_ns, **common)
        # Only what we manage: slices of other controllers (or users) are none of our business.
        self.endpoint_slices: Informer[dict[str, Any]] = Informer(
            client, resource_path("discovery.k8s.io/v1", "endpointslices"), slim_owned,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}", name="controllers/endpointslices",
            indexers={"service": _slice_service_key}, **common)
        self.endpoints: Informer[dict[str, Any]] = Informer(
            client, resource_path("v1", "endpoints"), slim_owned,
            label_selector=f"{SKIP_MIRROR_LABEL}=true", name="controllers/endpoints", **common)

    def all(self) -> list[Informer[dict[str, Any]]]:
        return [self.nodes, self.pods, self.services, self.endpoint_slices, self.endpoints]

    def start(self) -> None:
        for inf in self.all():
            inf.start()

    def stop(self, timeout: float = 10.0) -> None:
        for inf in self.all():
            inf.stop(timeout)

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in self.all():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not inf.wait_for_sync(left):
                return False
        return True


# ---------------------------------------------------------------------------- write tracker


class WriteTracker:
    """Remembers the resourceVersion of each object we wrote (None: we deleted it) until the
    informer cache shows it, so a reconcile can tell it would act on a cache that does not yet
    contain its own last write (and, say, create a second slice for the same endpoints).

    An expectation older than `ttl` is dropped: the object may have been changed or deleted by
    someone else in a way the cache will never show as "our" version.
    """

    def __init__(self, ttl: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._by_owner: dict[str, dict[str, tuple[str | None, float]]] = {}

    def wrote(self, owner: str, name: str, rv: str | None) -> None:
        with self._lock:
            self._by_owner.setdefault(owner, {})[name] = (rv or None, self._clock())

    def deleted(self, owner: str, name: str) -> None:
        self.wrote(owner, name, None)

    def forget(self, owner: str) -> None:
        with self._lock:
            self._by_owner.pop(owner, None)

    def stale(self, owner: str, cached: Mapping[str, str]) -> bool:
        """True while `cached` (name -> resourceVersion in the informer) misses one of our
        writes for `owner`. Expectations the cache has caught up with are dropped."""
        now = self._clock()
        with self._lock:
            entries = self._by_owner.get(owner)
            if not entries:
                return False
            stale = False
            for name, (rv, when) in list(entries.items()):
                if now - when > self._ttl:
                    del entries[name]
                elif rv is None:
                    if name in cached:
                        stale = True
                    else:
                        del entries[name]
                elif rv_newer_or_equal(cached.get(name), rv):
                    del entries[name]
                else:
                    stale = True
            if not entries:
                del self._by_owner[owner]
            return stale


# ---------------------------------------------------------------------------------- events


def record_event(
    client: Any,
    involved: Obj,
    *,
    reason: str,
    message: str,
    event_type: str = "Normal",
    component: str,
    clock: Callable[[], float] = time.time,
) -> None:
    """Create a core/v1 Event about `involved` (what `kubectl describe` lists). Best effort:
    an event that cannot be written is logged, never an error for the caller."""
    kind = str(involved.get("kind") or "")
    meta = involved.get("metadata") if isinstance(involved.get("metadata"), Mapping) else {}
    name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    stamp = now_rfc3339(clock)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        # As client-go's recorder: <object>.<hex nanoseconds>; cluster-scoped objects' events
        # live in "default".
        "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": ns or "default"},
        "involvedObject": {k: v for k, v in (
            ("apiVersion", "v1"), ("kind", kind), ("namespace", ns), ("name", name),
            ("uid", meta.get("uid") or "")) if v},
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": component,
    }
    try:
        client.create(resource_path("v1", "events", ns or "default"), event)
    except NetplaneError as exc:
        log.debug("event %s on %s %s/%s not recorded: %s", reason, kind, ns, name, exc)
