"""Which endpoints each kind of traffic may use: kube-proxy's CategorizeEndpoints (topology.go).

Pure: a backend calls categorize_endpoints per service-port while compiling its rules.

- Cluster-policy traffic uses ready endpoints, narrowed to the node's zone when topology-aware
  routing applies; with no ready endpoint it falls back to every serving+terminating one
  (cluster-wide, and without topology). Not-serving endpoints are never used.
- Local-policy traffic uses this node's ready endpoints, else its serving+terminating ones.
- `all_reachable` is what needs endpoint chains; `has_any_endpoints` tells REJECT (no usable
  endpoint anywhere) from DROP (some exist, but none for this traffic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netplane.proxy.model import EndpointInfo, NodeContext, ServicePortInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointCategories:
    cluster: tuple[EndpointInfo, ...]  # for Cluster-policy traffic (() if none usable)
    local: tuple[EndpointInfo, ...]  # for Local-policy traffic
    all_reachable: tuple[EndpointInfo, ...]  # union: what needs endpoint chains
    has_any_endpoints: bool  # any usable endpoint anywhere (REJECT vs DROP)


def _serving_terminating(ep: EndpointInfo) -> bool:
    return ep.serving and ep.terminating


def _select(endpoints: Sequence[EndpointInfo],
            keep: Callable[[EndpointInfo], bool]) -> tuple[EndpointInfo, ...]:
    return tuple(ep for ep in endpoints if keep(ep))


def can_use_topology(svc: ServicePortInfo, endpoints: Sequence[EndpointInfo],
                     node: NodeContext) -> bool:
    """Zone filtering applies only if the service asks for it, the node has a zone, every ready
    endpoint carries hints and at least one is hinted for this node's zone."""
    if not svc.topology_aware or not node.zone:
        return False
    for_zone = False
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.zone_hints:
            log.debug("%s: endpoint %s has no zone hint; not filtering by topology", svc.name, ep)
            return False
        if node.zone in ep.zone_hints:
            for_zone = True
    return for_zone


def categorize_endpoints(svc: ServicePortInfo, endpoints: Sequence[EndpointInfo],
                         node: NodeContext) -> EndpointCategories:
    def is_local(ep: EndpointInfo) -> bool:
        return bool(ep.node_name) and ep.node_name == node.name

    cluster: tuple[EndpointInfo, ...] = ()
    has_any = False
    use_topology = False
    if svc.uses_cluster_endpoints:
        use_topology = can_use_topology(svc, endpoints, node)
        cluster = _select(endpoints, lambda ep: ep.ready and (
            not use_topology or node.zone in (ep.zone_hints or ())))
        if not cluster:
            # Best effort for draining services: topology is deliberately not applied here.
            cluster = _select(endpoints, _serving_terminating)
        has_any = bool(cluster)

    if not svc.uses_local_endpoints:
        return EndpointCategories(cluster, (), cluster, has_any)

    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or is_local(ep)
        elif _serving_terminating(ep):
            has_any = True
            local_terminating = local_terminating or is_local(ep)
    local: tuple[EndpointInfo, ...] = ()
    if local_ready:
        local = _select(endpoints, lambda ep: is_local(ep) and ep.ready)
    elif local_terminating:
        local = _select(endpoints, lambda ep: is_local(ep) and _serving_terminating(ep))

    if not svc.uses_cluster_endpoints:
        return EndpointCategories((), local, local, has_any)
    if not use_topology and not (local and not local_ready):
        # cluster holds every ready endpoint and local only ready ones: cluster ⊇ local.
        return EndpointCategories(cluster, local, cluster, has_any)
    wanted = {(ep.ip, ep.port) for ep in cluster} | {(ep.ip, ep.port) for ep in local}
    reachable = _select(endpoints, lambda ep: (ep.ip, ep.port) in wanted)
    return EndpointCategories(cluster, local, reachable, has_any)
