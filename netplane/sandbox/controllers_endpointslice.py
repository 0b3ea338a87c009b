"""The EndpointSlice controller's loop: keeps each selector Service's managed EndpointSlices and
its legacy Endpoints object equal to what `controllers_slices` computes from the caches.

Triggers (all enqueue namespace/service keys): Service changes; pod changes, for the Services
whose selector matches the pod's old or new labels; node changes, for the Services of pods on
that node (the zone label); changes to our own slices and Endpoints (someone edited or deleted
them: the reconcile puts them back). A reconcile writes nothing when nothing differs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

from netplane.errors import ConflictError, NotFoundError
from netplane.k8s import resource_path
from netplane.sandbox.controllers_base import (
    SERVICE_NAME_LABEL,
    ControllerInformers,
    Obj,
    WriteTracker,
    get_in,
    key_of,
    labels_of,
    name_of,
    namespace_of,
    selector_matches,
)
from netplane.sandbox.controllers_worker import Requeue, Worker
from netplane.sandbox.controllers_slices import (
    MAX_ENDPOINTS_PER_SLICE,
    compute_endpoint_slices,
    compute_endpoints,
    endpoints_content,
    plan_slices,
    service_is_managed,
)

log = logging.getLogger(__name__)

SLICES_API = "discovery.k8s.io/v1"


def _rv(obj: Obj) -> str:
    return str(get_in(obj, "metadata", "resourceVersion", default=""))


class EndpointSliceController:
    """EndpointSlices and Endpoints for Services with selectors. `start()`/`stop()` run its
    worker; the informers are started and stopped by their owner (see `ControlPlane`)."""

    def __init__(
        self,
        client: Any,
        informers: ControllerInformers,
        *,
        resync_period: float = 30.0,
        max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
    ) -> None:
        self._client = client
        self._informers = informers
        self._services = informers.services
        self._pods = informers.pods
        self._nodes = informers.nodes
        self._slices = informers.endpoint_slices
        self._endpoints = informers.endpoints
        self.max_endpoints_per_slice = max_endpoints_per_slice
        self._slice_writes = WriteTracker()
        self._endpoints_writes = WriteTracker()
        self._handlers_added = False
        self.writes = 0  # API writes issued (creates, updates, deletes), for tests and status
        self.worker = Worker(
            "endpointslice", self.reconcile, resync_keys=self._all_keys,
            ready=lambda: all(inf.has_synced() for inf in informers.all()),
            resync_period=resync_period)

    # ------------------------------------------------------------------------------ running

    def start(self) -> None:
        if not self._handlers_added:
            self._handlers_added = True
            self._add_handlers()
        self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.worker.stop(timeout)

    def _add_handlers(self) -> None:
        enqueue = self.worker.enqueue
        self._services.add_handler(
            on_add=lambda s: enqueue(key_of(s)),
            on_update=lambda old, new: enqueue(key_of(new)),
            on_delete=lambda s: enqueue(key_of(s)))
        self._pods.add_handler(
            on_add=self._pod_changed,
            on_update=lambda old, new: self._pod_changed(old, new),
            on_delete=self._pod_changed)
        self._nodes.add_handler(
            on_add=self._node_changed,
            on_update=lambda old, new: (labels_of(old) != labels_of(new)
                                        and self._node_changed(new)),
            on_delete=self._node_changed)
        owner = lambda s: enqueue(  # noqa: E731
            f"{namespace_of(s)}/{labels_of(s).get(SERVICE_NAME_LABEL, '')}"
            if labels_of(s).get(SERVICE_NAME_LABEL) else "")
        self._slices.add_handler(on_add=owner, on_update=lambda old, new: owner(new),
                                 on_delete=owner)
        self._endpoints.add_handler(
            on_add=lambda e: enqueue(key_of(e)),
            on_update=lambda old, new: enqueue(key_of(new)),
            on_delete=lambda e: enqueue(key_of(e)))

    def _pod_changed(self, *pods: Obj) -> None:
        ns = namespace_of(pods[-1])
        for svc in self._services.by_index("namespace", ns):
            if not service_is_managed(svc):
                continue
            selector = get_in(svc, "spec", "selector", default={})
            if any(selector_matches(selector, labels_of(p)) for p in pods):
                self.worker.enqueue(key_of(svc))

    def _node_changed(self, node: Obj) -> None:
        for pod in self._pods.by_index("node", name_of(node)):
            self._pod_changed(pod)

    def _all_keys(self) -> Iterable[str]:
        keys = set(self._services.keys()) | set(self._endpoints.keys())
        for s in self._slices.list():
            svc = labels_of(s).get(SERVICE_NAME_LABEL)
            if svc:
                keys.add(f"{namespace_of(s)}/{svc}")
        return sorted(keys)

    # ---------------------------------------------------------------------------- reconcile

    def reconcile(self, key: str) -> None:
        ns, _, name = key.partition("/")
        if not ns or not name:
            return
        svc = self._services.get(key)
        existing = self._slices.by_index("service", key)
        current_ep = self._endpoints.get(key)
        if self._slice_writes.stale(key, {name_of(s): _rv(s) for s in existing}):
            raise Requeue("the EndpointSlice cache has not seen our last write yet")
        if self._endpoints_writes.stale(key, {name: _rv(current_ep)} if current_ep else {}):
            raise Requeue("the Endpoints cache has not seen our last write yet")
        managed = svc is not None and service_is_managed(svc)
        pods = self._pods.by_index("namespace", ns) if managed else []
        desired = (compute_endpoint_slices(svc, pods, self._nodes.snapshot(),
                                           max_endpoints=self.max_endpoints_per_slice)
                   if managed and svc is not None else [])
        creates, updates, deletes = plan_slices(desired, existing,
                                                max_endpoints=self.max_endpoints_per_slice)
        collection = resource_path(SLICES_API, "endpointslices", ns)
        # Creates and updates before deletes, so an endpoint moving between slices never
        # disappears from the Service in between.
        for obj in creates:
            done = self._client.create(collection, obj)
            self.writes += 1
            self._slice_writes.wrote(key, name_of(done), _rv(done))
            log.info("service %s: created EndpointSlice %s (%d endpoints)", key,
                     name_of(done), len(obj.get("endpoints") or ()))
        for obj in updates:
            done = self._client.update(f"{collection}/{name_of(obj)}", obj)
            self.writes += 1
            self._slice_writes.wrote(key, name_of(obj), _rv(done))
            log.info("service %s: updated EndpointSlice %s (%d endpoints)", key, name_of(obj),
                     len(obj.get("endpoints") or ()))
        for obj in deletes:
            try:
                self._client.delete(f"{collection}/{name_of(obj)}")
                self.writes += 1
            except NotFoundError:
                pass
            self._slice_writes.deleted(key, name_of(obj))
            log.info("service %s: deleted EndpointSlice %s", key, name_of(obj))
        self._sync_endpoints(key, svc if managed else None, pods, current_ep)

    def _sync_endpoints(self, key: str, svc: Obj | None, pods: list[Obj],
                        current: Obj | None) -> None:
        ns, _, name = key.partition("/")
        path = resource_path("v1", "endpoints", ns, name)
        desired = compute_endpoints(svc, pods) if svc is not None else None
        if desired is None:
            if current is not None:  # ours (labelled): the Service is gone or unmanaged now
                try:
                    self._client.delete(path)
                    self.writes += 1
                except NotFoundError:
                    pass
                self._endpoints_writes.deleted(key, name)
                log.info("service %s: deleted Endpoints", key)
            return
        if current is not None and endpoints_content(current) == endpoints_content(desired):
            return
        if current is None:
            try:
                done = self._client.create(resource_path("v1", "endpoints", ns), desired)
            except ConflictError:
                # There is one we do not manage yet (written by hand, or not in our cache):
                # a selector Service's Endpoints are the controller's, as upstream.
                current = self._client.get(path)
                done = self._client.update(path, _overwrite(current, desired))
        else:
            done = self._client.update(path, _overwrite(current, desired))
        self.writes += 1
        self._endpoints_writes.wrote(key, name, _rv(done))
        log.info("service %s: wrote Endpoints", key)


def _overwrite(current: Obj, desired: Obj) -> dict[str, Any]:
    """`current` (name, resourceVersion, annotations kept) with the desired labels/subsets."""
    out = copy.deepcopy(dict(current))
    out.setdefault("metadata", {})["labels"] = copy.deepcopy(
        get_in(desired, "metadata", "labels", default={}))
    if desired.get("subsets"):
        out["subsets"] = copy.deepcopy(desired["subsets"])
    else:
        out.pop("subsets", None)
    return out
