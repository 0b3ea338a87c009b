"""The backend-neutral proxy model: what every backend's sync gets (frozen, no I/O, IPv4 only).

The tracker (tracker.py) is the only producer and validates everything on the way in, so a
backend may put any field of these objects into rule text without escaping it: names match
DNS-label-like patterns, IPs are canonical IPv4, ports are 1-65535 and ranges are CIDRs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """One service-port. `port` is the ServicePort's name ("" for a single unnamed port)."""

    namespace: str
    name: str
    port: str
    protocol: str

    def __str__(self) -> str:
        # "ns/name:port/PROTO"; an unnamed port is left out as kube-proxy does ("ns/name/TCP").
        return f"{self.kube_string()}/{self.protocol}"

    def kube_string(self) -> str:
        """kube-proxy's ServicePortName.String(): "ns/name:port", or "ns/name" when unnamed.
        Chain-name hashes are computed from this plus the lower-case protocol."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service_key(self) -> tuple[str, str]:
        """(namespace, name) of the Service: what health-check ports are keyed by."""
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    name: ServicePortName
    cluster_ip: str  # "" never happens: headless/ExternalName are skipped by the tracker
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"
    target_port: int | str  # number, or a port name resolved through the EndpointSlice
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()  # normalised CIDRs
    affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    external_policy_local: bool = False  # externalTrafficPolicy: Local (NodePort/LB/extIP only)
    internal_policy_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0
    topology_aware: bool = False  # topology-mode=Auto / topology-aware-hints=auto /
    # spec.trafficDistribution=PreferClose

    @property
    def externally_accessible(self) -> bool:
        """Reachable from outside the cluster: a NodePort, an LB ingress IP or an external IP."""
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Some traffic to this port is routed with the Cluster policy (kube-proxy's
        UsesClusterEndpoints). Externally accessible ports always need them: even with
        externalTrafficPolicy Local, pods and the node short-circuit to every endpoint."""
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        """Some traffic to this port is routed with the Local policy."""
        return self.internal_policy_local or (
            self.externally_accessible and self.external_policy_local)


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: tuple[str, ...] | None = None  # None: the endpoint has no hints

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a backend knows about its own node."""

    name: str
    zone: str = ""
    node_ips: tuple[str, ...] = ()  # the node's own addresses (NodePort destinations)
    cluster_cidr: str = ""  # local-traffic detector; "" = no detector
    masquerade_all: bool = False
    node_port_addresses: tuple[str, ...] = ()  # CIDRs; () = every local address


@dataclass(frozen=True, slots=True)
class ProxyState:
    """One immutable snapshot handed to a backend's sync.

    `endpoints` is keyed like kube-proxy's EndpointsMap, by the EndpointSlice ports' names, so
    it may hold names no Service has (yet); `changed` holds every name whose service info or
    endpoints differ from the previous snapshot, deleted ones included (all names on the first).
    """

    services: Mapping[ServicePortName, ServicePortInfo]
    endpoints: Mapping[ServicePortName, tuple[EndpointInfo, ...]]  # deduplicated, sorted
    changed: frozenset[ServicePortName]
