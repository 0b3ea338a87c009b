"""Node IPAM, as kube-controller-manager's range allocator: every Node without `spec.podCIDR`
gets the lowest free `/mask` subnet of the cluster CIDR (`podCIDR` and `podCIDRs`).

"Free" means not overlapping any podCIDR already set on a node, so subnets set before start-up
(by us in an earlier run, or by hand) are respected, and a deleted node's subnet is free again.
Running out logs an error and puts a `CIDRNotAvailable` event on the node; the node is retried
whenever nodes change.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from netplane.errors import ApiError, NotFoundError
from netplane.k8s import resource_path
from netplane.sandbox.controllers_base import (
    ControllerInformers,
    Obj,
    get_in,
    name_of,
    record_event,
)
from netplane.sandbox.controllers_worker import Worker

log = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_KEY = "nodes"  # allocation is global (lowest free across all nodes): one queue key for all


def node_pod_cidrs(node: Obj) -> list[str]:
    cidrs = [c for c in get_in(node, "spec", "podCIDRs", default=()) or () if isinstance(c, str)]
    single = get_in(node, "spec", "podCIDR")
    if not cidrs and isinstance(single, str) and single:
        cidrs = [single]
    return cidrs


def _parse(cidr: str) -> IpNetwork | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


def compute_pod_cidrs(
    nodes: Iterable[Obj], cluster_cidr: str, mask: int
) -> dict[str, str | None]:
    """podCIDRs for the nodes that have none: node name -> CIDR, or None when the cluster CIDR
    has no free subnet left for it. Nodes are served oldest first (creationTimestamp, then
    name), each taking the lowest subnet that overlaps no node's existing podCIDR.

    Raises ValueError for a bad cluster CIDR or a mask it cannot be split into.
    """
    cluster = ipaddress.ip_network(cluster_cidr, strict=True)
    if not cluster.prefixlen <= mask <= cluster.max_prefixlen:
        raise ValueError(f"node CIDR mask /{mask} does not fit cluster CIDR {cluster_cidr}")
    nodes = list(nodes)
    used: list[IpNetwork] = []
    for node in nodes:
        for cidr in node_pod_cidrs(node):
            net = _parse(cidr)
            if net is not None and net.version == cluster.version and net.overlaps(cluster):
                used.append(net)
    exact = {n for n in used if n.prefixlen == mask}
    others = [n for n in used if n.prefixlen != mask]
    pending = sorted((n for n in nodes if not node_pod_cidrs(n)),
                     key=lambda n: (str(get_in(n, "metadata", "creationTimestamp", default="")),
                                    name_of(n)))
    out: dict[str, str | None] = {}
    # One pass over the candidates for all pending nodes: lowest-first means each later node
    # can only get a higher subnet than the one before it.
    candidates = cluster.subnets(new_prefix=mask)
    for node in pending:
        chosen = None
        for cand in candidates:
            if cand not in exact and not any(cand.overlaps(o) for o in others):
                chosen = cand
                break
        out[name_of(node)] = str(chosen) if chosen is not None else None
    return out


class NodeIpamController:
    """Assigns podCIDRs to nodes. `start()`/`stop()` run its worker; the informers are started
    and stopped by their owner (see `ControlPlane`)."""

    COMPONENT = "cidrAllocator"

    def __init__(
        self,
        client: Any,
        informers: ControllerInformers,
        *,
        cluster_cidr: str,
        node_cidr_mask: int,
        resync_period: float = 30.0,
    ) -> None:
        compute_pod_cidrs((), cluster_cidr, node_cidr_mask)  # fail early on a bad configuration
        self._client = client
        self._nodes = informers.nodes
        self.cluster_cidr = cluster_cidr
        self.node_cidr_mask = node_cidr_mask
        self._lock = threading.Lock()
        # Subnets we patched onto nodes, until the node cache shows them: computing from a cache
        # that lags our own writes would hand the same subnet to the next node.
        self._assigned: dict[str, tuple[str, str]] = {}  # node -> (uid, cidr)
        self._reported: set[str] = set()  # nodes told CIDRNotAvailable (one event, not a storm)
        self._handlers_added = False
        self.worker = Worker("node-ipam", self.reconcile, resync_keys=lambda: [_KEY],
                             ready=self._nodes.has_synced, resync_period=resync_period)

    def start(self) -> None:
        if not self._handlers_added:
            self._handlers_added = True
            enqueue = lambda *_: self.worker.enqueue(_KEY)  # noqa: E731
            self._nodes.add_handler(on_add=enqueue, on_update=enqueue, on_delete=enqueue)
        self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.worker.stop(timeout)

    def _view(self) -> list[Mapping[str, Any]]:
        """The cached nodes with our not-yet-seen assignments filled in."""
        nodes = self._nodes.list()
        by_name = {name_of(n): n for n in nodes}
        with self._lock:
            for name, (uid, _cidr) in list(self._assigned.items()):
                node = by_name.get(name)
                if node is None or get_in(node, "metadata", "uid") != uid or node_pod_cidrs(node):
                    del self._assigned[name]  # seen, or the node is gone: nothing to remember
            view = []
            for node in nodes:
                held = self._assigned.get(name_of(node))
                if held is not None:
                    node = {**node, "spec": {**node.get("spec", {}), "podCIDR": held[1],
                                             "podCIDRs": [held[1]]}}
                view.append(node)
            self._reported &= {name_of(n) for n in nodes if not node_pod_cidrs(n)}
        return view

    def reconcile(self, key: str) -> None:
        view = self._view()
        by_name = {name_of(n): n for n in view}
        failed: list[str] = []
        for name, cidr in compute_pod_cidrs(view, self.cluster_cidr, self.node_cidr_mask).items():
            node = by_name[name]
            if cidr is None:
                self._exhausted(node)
                continue
            try:
                self._client.patch(resource_path("v1", "nodes", name=name),
                                   {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
            except NotFoundError:
                continue  # deleted meanwhile; its delete event re-runs the allocation
            except ApiError as exc:
                if exc.code == 422:
                    # It got a podCIDR from someone else meanwhile (set once, immutable).
                    log.info("node %s: podCIDR %s not set: %s", name, cidr, exc.message)
                    continue
                failed.append(f"{name}: {exc}")
                continue
            log.info("node %s: podCIDR %s", name, cidr)
            with self._lock:
                self._assigned[name] = (str(get_in(node, "metadata", "uid", default="")), cidr)
                self._reported.discard(name)
        if failed:
            raise ApiError(0, "NodeIpamFailed", "; ".join(failed))

    def _exhausted(self, node: Obj) -> None:
        name = name_of(node)
        with self._lock:
            first = name not in self._reported
            self._reported.add(name)
        if not first:
            return
        log.error("node %s: no free /%d subnet left in cluster CIDR %s (CIDRNotAvailable)",
                  name, self.node_cidr_mask, self.cluster_cidr)
        record_event(self._client, {"kind": "Node", **node}, reason="CIDRNotAvailable",
                     message=f"Node {name} status is now: CIDRNotAvailable",
                     component=self.COMPONENT)
