"""Slim, immutable views of the Kubernetes objects netplane consumes.

Raw API objects are large and mostly irrelevant to a data plane (managedFields alone can dwarf
the spec). Converting at ingest, as CoreDNS's kubernetes plugin does with object.ToService, keeps
the informer caches small and makes equality meaningful: two conversions are equal exactly when
nothing netplane cares about changed, so the informer drops status-only or annotation-only
updates before any handler sees them. `resource_version` is carried for bookkeeping but excluded
from equality for that reason.

Every `from_dict` accepts anything (the apiserver, a fake, a hand-written test dict) and never
raises: missing or mistyped fields fall back to the API's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
SERVICE_ANNOTATION_PREFIX = "service.kubernetes.io/"
_LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"

Pairs = tuple[tuple[str, str], ...]

# ------------------------------------------------------------------------- tolerant field access


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _at(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]..., or None as soon as a hop is not a mapping."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _str(value: Any, default: str = "") -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def _bool(value: Any, default: bool = False) -> bool:
    return value if isinstance(value, bool) else default


def _opt_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(s for s in _list(value) if isinstance(s, str) and s)


def _pairs(value: Any) -> Pairs:
    """A string map as sorted (key, value) pairs: hashable and order-independent."""
    if not isinstance(value, Mapping):
        return ()
    return tuple(sorted((k, _str(v)) for k, v in value.items() if isinstance(k, str)))


def _meta(d: Any) -> dict[str, Any]:
    return _dict(_at(d, "metadata"))


def pairs_get(pairs: Pairs, key: str, default: str | None = None) -> str | None:
    """Look a key up in a label/selector/annotation pairs tuple."""
    for k, v in pairs:
        if k == key:
            return v
    return default


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


# ----------------------------------------------------------------------------------- Service


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str = ""
    protocol: str = "TCP"
    port: int = 0
    target_port: int | str = 0  # a number, or the name of a container port
    node_port: int = 0
    app_protocol: str = ""

    @classmethod
    def from_dict(cls, d: Any) -> ServicePort:
        d = _dict(d)
        port = _int(d.get("port"))
        raw_target = d.get("targetPort")
        target: int | str
        if isinstance(raw_target, str) and raw_target:
            target = raw_target
        else:
            # The API defaults targetPort to port.
            target = _int(raw_target, port) or port
        return cls(
            name=_str(d.get("name")),
            protocol=_str(d.get("protocol")) or "TCP",
            port=port,
            target_port=target,
            node_port=_int(d.get("nodePort")),
            app_protocol=_str(d.get("appProtocol")),
        )


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    selector: Pairs = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"
    session_affinity_timeout: int = 0  # seconds; 10800 by default when affinity is ClientIP
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    external_name: str = ""
    ip_families: tuple[str, ...] = ()
    labels: Pairs = ()
    publish_not_ready_addresses: bool = False
    # Only annotations under SERVICE_ANNOTATION_PREFIX (e.g. service.kubernetes.io/topology-mode):
    # keeping all of them would make kubectl's last-applied-configuration churn every consumer.
    annotations: Pairs = ()
    traffic_distribution: str = ""  # spec.trafficDistribution, e.g. "PreferClose"
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return _key(self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return "None" in self.cluster_ips

    @classmethod
    def from_dict(cls, d: Any) -> Service:
        meta = _meta(d)
        spec = _dict(_at(d, "spec"))
        cluster_ips = _strs(spec.get("clusterIPs"))
        if not cluster_ips and _str(spec.get("clusterIP")):
            cluster_ips = (_str(spec.get("clusterIP")),)
        affinity = _str(spec.get("sessionAffinity")) or "None"
        timeout = _int(_at(spec, "sessionAffinityConfig", "clientIP", "timeoutSeconds"))
        if affinity == "ClientIP" and timeout <= 0:
            timeout = 10800
        lb_ips = tuple(
            ip for ip in (_str(_dict(i).get("ip")) for i in
                          _list(_at(d, "status", "loadBalancer", "ingress")))
            if ip
        )
        return cls(
            namespace=_str(meta.get("namespace")),
            name=_str(meta.get("name")),
            uid=_str(meta.get("uid")),
            type=_str(spec.get("type")) or "ClusterIP",
            cluster_ips=cluster_ips,
            ports=tuple(ServicePort.from_dict(p) for p in _list(spec.get("ports"))
                        if isinstance(p, dict)),
            selector=_pairs(spec.get("selector")),
            external_ips=_strs(spec.get("externalIPs")),
            load_balancer_ips=lb_ips,
            load_balancer_source_ranges=_strs(spec.get("loadBalancerSourceRanges")),
            session_affinity=affinity,
            session_affinity_timeout=timeout if affinity == "ClientIP" else 0,
            external_traffic_policy=_str(spec.get("externalTrafficPolicy")) or "Cluster",
            internal_traffic_policy=_str(spec.get("internalTrafficPolicy")) or "Cluster",
            health_check_node_port=_int(spec.get("healthCheckNodePort")),
            external_name=_str(spec.get("externalName")),
            ip_families=_strs(spec.get("ipFamilies")),
            labels=_pairs(meta.get("labels")),
            publish_not_ready_addresses=_bool(spec.get("publishNotReadyAddresses")),
            annotations=tuple((k, v) for k, v in _pairs(meta.get("annotations"))
                              if k.startswith(SERVICE_ANNOTATION_PREFIX)),
            traffic_distribution=_str(spec.get("trafficDistribution")),
            resource_version=_str(meta.get("resourceVersion")),
        )


# ----------------------------------------------------------------------------- EndpointSlice


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str = ""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...] = ()
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hostname: str = ""
    target_ref: TargetRef | None = None
    hints_zones: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any) -> Endpoint:
        d = _dict(d)
        cond = _dict(d.get("conditions"))
        # The API's reading of unset conditions: ready nil means ready; serving nil means "same
        # as ready"; terminating nil means not terminating.
        ready_raw = _opt_bool(cond.get("ready"))
        ready = True if ready_raw is None else ready_raw
        serving_raw = _opt_bool(cond.get("serving"))
        serving = ready if serving_raw is None else serving_raw
        terminating = _bool(cond.get("terminating"))
        ref_raw = d.get("targetRef")
        ref = None
        if isinstance(ref_raw, dict):
            ref = TargetRef(kind=_str(ref_raw.get("kind")),
                            namespace=_str(ref_raw.get("namespace")),
                            name=_str(ref_raw.get("name")))
        zones = tuple(
            z for z in (_str(_dict(h).get("name")) for h in
                        _list(_at(d, "hints", "forZones")))
            if z
        )
        return cls(
            addresses=_strs(d.get("addresses")),
            ready=ready,
            serving=serving,
            terminating=terminating,
            node_name=_str(d.get("nodeName")),
            zone=_str(d.get("zone")),
            hostname=_str(d.get("hostname")),
            target_ref=ref,
            hints_zones=zones,
        )


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str = ""
    port: int | None = None  # None: the API's "all ports" (unset port)
    protocol: str = "TCP"
    app_protocol: str = ""

    @classmethod
    def from_dict(cls, d: Any) -> EndpointPort:
        d = _dict(d)
        raw = d.get("port")
        port = _int(raw, -1)
        return cls(
            name=_str(d.get("name")),
            port=None if raw is None or port < 0 else port,
            protocol=_str(d.get("protocol")) or "TCP",
            app_protocol=_str(d.get("appProtocol")),
        )


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str = ""
    name: str = ""
    service_name: str = ""  # label kubernetes.io/service-name
    address_type: str = "IPv4"
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    labels: Pairs = ()
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return _key(self.namespace, self.name)

    @property
    def service_key(self) -> str:
        """The namespace/name key of the Service this slice belongs to ("" if unlabelled)."""
        return _key(self.namespace, self.service_name) if self.service_name else ""

    @classmethod
    def from_dict(cls, d: Any) -> EndpointSlice:
        meta = _meta(d)
        labels = _pairs(meta.get("labels"))
        return cls(
            namespace=_str(meta.get("namespace")),
            name=_str(meta.get("name")),
            service_name=pairs_get(labels, SERVICE_NAME_LABEL) or "",
            address_type=_str(_dict(d).get("addressType")) or "IPv4",
            endpoints=tuple(Endpoint.from_dict(e) for e in _list(_dict(d).get("endpoints"))
                            if isinstance(e, dict)),
            ports=tuple(EndpointPort.from_dict(p) for p in _list(_dict(d).get("ports"))
                        if isinstance(p, dict)),
            labels=labels,
            resource_version=_str(meta.get("resourceVersion")),
        )


# --------------------------------------------------------------------------------------- Pod


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    node_name: str = ""
    pod_ips: tuple[str, ...] = ()
    host_ip: str = ""
    phase: str = "Pending"
    host_network: bool = False
    labels: Pairs = ()
    hostname: str = ""
    subdomain: str = ""
    deletion_timestamp: str | None = None
    ready: bool = False  # the Ready condition is "True"
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return _key(self.namespace, self.name)

    @classmethod
    def from_dict(cls, d: Any) -> Pod:
        meta = _meta(d)
        spec = _dict(_at(d, "spec"))
        status = _dict(_at(d, "status"))
        ips = tuple(ip for ip in (_str(_dict(p).get("ip")) for p in _list(status.get("podIPs")))
                    if ip)
        if not ips and _str(status.get("podIP")):
            ips = (_str(status.get("podIP")),)
        ready = any(
            _dict(c).get("type") == "Ready" and _dict(c).get("status") == "True"
            for c in _list(status.get("conditions"))
        )
        return cls(
            namespace=_str(meta.get("namespace")),
            name=_str(meta.get("name")),
            uid=_str(meta.get("uid")),
            node_name=_str(spec.get("nodeName")),
            pod_ips=ips,
            host_ip=_str(status.get("hostIP")),
            phase=_str(status.get("phase")) or "Pending",
            host_network=_bool(spec.get("hostNetwork")),
            labels=_pairs(meta.get("labels")),
            hostname=_str(spec.get("hostname")),
            subdomain=_str(spec.get("subdomain")),
            deletion_timestamp=_opt_str(meta.get("deletionTimestamp")),
            ready=ready,
            resource_version=_str(meta.get("resourceVersion")),
        )


# -------------------------------------------------------------------------------------- Node


@dataclass(frozen=True, slots=True)
class Node:
    name: str = ""
    uid: str = ""
    pod_cidrs: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address), e.g. ("InternalIP", "10.0.0.1")
    labels: Pairs = ()
    annotations: Pairs = ()
    zone: str = ""
    unschedulable: bool = False
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return self.name

    def address(self, address_type: str) -> str | None:
        """The first address of a type (InternalIP, ExternalIP, Hostname...)."""
        for t, a in self.addresses:
            if t == address_type:
                return a
        return None

    @classmethod
    def from_dict(cls, d: Any) -> Node:
        meta = _meta(d)
        spec = _dict(_at(d, "spec"))
        cidrs = _strs(spec.get("podCIDRs"))
        if not cidrs and _str(spec.get("podCIDR")):
            cidrs = (_str(spec.get("podCIDR")),)
        addresses = tuple(
            (_str(a.get("type")), _str(a.get("address")))
            for a in _list(_at(d, "status", "addresses"))
            if isinstance(a, dict) and _str(a.get("address"))
        )
        labels = _pairs(meta.get("labels"))
        zone = pairs_get(labels, ZONE_LABEL) or pairs_get(labels, _LEGACY_ZONE_LABEL) or ""
        return cls(
            name=_str(meta.get("name")),
            uid=_str(meta.get("uid")),
            pod_cidrs=cidrs,
            addresses=addresses,
            labels=labels,
            annotations=_pairs(meta.get("annotations")),
            zone=zone,
            unschedulable=_bool(spec.get("unschedulable")),
            resource_version=_str(meta.get("resourceVersion")),
        )


# --------------------------------------------------------------------------------- Namespace


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str = ""
    labels: Pairs = ()
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, d: Any) -> Namespace:
        meta = _meta(d)
        return cls(
            name=_str(meta.get("name")),
            labels=_pairs(meta.get("labels")),
            resource_version=_str(meta.get("resourceVersion")),
        )
