"""Change tracking in kube-proxy's style: informer events in, immutable ProxyState snapshots out.

ServiceChangeTracker / EndpointSliceChangeTracker keep, per namespaced name, the object as the
last snapshot saw it (`previous`) and as it is now (`current`); a pair whose two sides are equal
is dropped, so add+delete between two syncs costs nothing. ProxyStateBuilder.apply() drains both
and merges them into its maps, reporting which ServicePortNames changed.

Conversion is also validation: every string that a backend may later write into rule text
(names, IPs, ports, CIDRs) is checked here, and whatever does not pass is dropped with a warning
naming the object, so nothing an API object contains can inject rule text.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from netplane.k8s.objects import EndpointSlice, Service, pairs_get
from netplane.proxy.model import (
    PROTOCOLS,
    EndpointInfo,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)

log = logging.getLogger(__name__)

TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"  # deprecated spelling
_ZONAL_TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone")

# Conservative versions of the API's name rules: only these characters ever reach rule text.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MAX_AFFINITY_TIMEOUT = 86400
_DEFAULT_AFFINITY_TIMEOUT = 10800

Report = Callable[[int, str], None]  # (logging level, message): see _OnceLogger

# ----------------------------------------------------------------------------------- validation


def _ipv4(value: str) -> str | None:
    """Canonical IPv4 text, or None (IPv6 and garbage alike: callers tell them apart)."""
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        return None


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value.strip())
    except ValueError:
        return False
    return True


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def _protocol(value: str) -> str | None:
    proto = (value or "TCP").strip().upper()
    return proto if proto in PROTOCOLS else None


def _ipv4_list(values: Iterable[str], what: str, report: Report) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        ip = _ipv4(raw)
        if ip is None:
            if _is_ipv6(raw):
                report(logging.DEBUG, f"ignoring IPv6 {what} {raw!r} (IPv4 only)")
            else:
                report(logging.WARNING, f"dropping invalid {what} {raw!r}")
        elif ip not in out:
            out.append(ip)
    return tuple(out)


def _source_ranges(values: Iterable[str], report: Report) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        try:
            net = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            report(logging.WARNING, f"dropping invalid loadBalancerSourceRange {raw!r}")
            continue
        if net.version != 4:
            report(logging.DEBUG, f"ignoring IPv6 loadBalancerSourceRange {raw!r} (IPv4 only)")
        elif str(net) not in out:
            out.append(str(net))
    return tuple(out)


def _topology_aware(svc: Service) -> bool:
    mode = pairs_get(svc.annotations, TOPOLOGY_MODE_ANNOTATION)
    if mode is None:
        mode = pairs_get(svc.annotations, TOPOLOGY_HINTS_ANNOTATION)
    if mode is not None and mode.lower() == "auto":
        return True
    return svc.traffic_distribution in _ZONAL_TRAFFIC_DISTRIBUTIONS


# ------------------------------------------------------------------------------- conversions


def service_port_infos(svc: Service, report: Report) -> dict[ServicePortName, ServicePortInfo]:
    """kube-proxy's serviceToServiceMap: one ServicePortInfo per usable port of `svc`.

    Skipped with a report: headless, ExternalName and IPv6-only services, invalid names, and
    ports with an invalid name, protocol or number. Invalid list entries are dropped.
    """
    if not _OBJECT_NAME.match(svc.namespace) or not _OBJECT_NAME.match(svc.name):
        report(logging.WARNING, "skipping service: invalid namespace or name")
        return {}
    if svc.type == "ExternalName":
        report(logging.DEBUG, "skipping ExternalName service")
        return {}
    if svc.headless or not svc.cluster_ips:
        report(logging.DEBUG, "skipping service without a cluster IP (headless)")
        return {}
    cluster_ip = next((ip for ip in map(_ipv4, svc.cluster_ips) if ip), None)
    if cluster_ip is None:
        if all(_is_ipv6(ip) for ip in svc.cluster_ips):
            report(logging.DEBUG, "skipping service without an IPv4 cluster IP")
        else:
            report(logging.WARNING, f"skipping service: invalid cluster IPs {svc.cluster_ips!r}")
        return {}

    external_ips = _ipv4_list(svc.external_ips, "externalIP", report)
    lb_ips = _ipv4_list(svc.load_balancer_ips, "load balancer ingress IP", report)
    source_ranges = _source_ranges(svc.load_balancer_source_ranges, report)
    affinity = 0
    if svc.session_affinity == "ClientIP":
        affinity = svc.session_affinity_timeout
        if not 1 <= affinity <= _MAX_AFFINITY_TIMEOUT:
            report(logging.WARNING, f"invalid sessionAffinity timeout {affinity}; using "
                                    f"{_DEFAULT_AFFINITY_TIMEOUT}")
            affinity = _DEFAULT_AFFINITY_TIMEOUT
    externally_accessible = svc.type in ("NodePort", "LoadBalancer") or (
        svc.type == "ClusterIP" and bool(svc.external_ips))
    external_local = externally_accessible and svc.external_traffic_policy == "Local"
    hcnp = 0
    if svc.type == "LoadBalancer" and external_local:
        hcnp = svc.health_check_node_port
        if not _port_ok(hcnp):
            report(logging.WARNING, f"invalid healthCheckNodePort {hcnp}; no health check")
            hcnp = 0
    topology_aware = _topology_aware(svc)

    out: dict[ServicePortName, ServicePortInfo] = {}
    for sp in svc.ports:
        label = f"port {sp.name or sp.port!r}"
        proto = _protocol(sp.protocol)
        if proto is None:
            report(logging.WARNING, f"skipping {label}: unsupported protocol {sp.protocol!r}")
            continue
        if sp.name and not _PORT_NAME.match(sp.name):
            report(logging.WARNING, f"skipping port {sp.name!r}: invalid port name")
            continue
        if not _port_ok(sp.port):
            report(logging.WARNING, f"skipping {label}: invalid port number {sp.port!r}")
            continue
        target = sp.target_port
        if isinstance(target, str):
            if not _PORT_NAME.match(target):
                report(logging.WARNING, f"skipping {label}: invalid targetPort {target!r}")
                continue
        elif not _port_ok(target):
            target = sp.port  # the API's default
        node_port = sp.node_port
        if node_port and not _port_ok(node_port):
            report(logging.WARNING, f"{label}: ignoring invalid nodePort {node_port!r}")
            node_port = 0
        name = ServicePortName(svc.namespace, svc.name, sp.name, proto)
        if name in out:
            report(logging.WARNING, f"skipping duplicate {label}/{proto}")
            continue
        out[name] = ServicePortInfo(
            name=name, cluster_ip=cluster_ip, port=sp.port, protocol=proto, target_port=target,
            node_port=node_port, external_ips=external_ips, load_balancer_ips=lb_ips,
            load_balancer_source_ranges=source_ranges, affinity_timeout=affinity,
            external_policy_local=external_local,
            internal_policy_local=svc.internal_traffic_policy == "Local",
            health_check_node_port=hcnp, topology_aware=topology_aware,
        )
    return out


def slice_usable(s: EndpointSlice, report: Report) -> bool:
    """Whether a slice contributes endpoints at all (IPv4, labelled with a valid service)."""
    if s.address_type != "IPv4":
        report(logging.DEBUG, f"ignoring {s.address_type} EndpointSlice (IPv4 only)")
        return False
    if not s.service_name:
        report(logging.DEBUG, "ignoring EndpointSlice without a kubernetes.io/service-name label")
        return False
    if not _OBJECT_NAME.match(s.namespace) or not _OBJECT_NAME.match(s.service_name):
        report(logging.WARNING, "ignoring EndpointSlice: invalid namespace or service name")
        return False
    return True


def _better(new: EndpointInfo, old: EndpointInfo) -> bool:
    """Between two slices listing the same ip:port, the ready one wins."""
    return new.ready and not old.ready


def slices_to_endpoints(
    slices: Iterable[EndpointSlice], report: Callable[[EndpointSlice, int, str], None],
) -> dict[ServicePortName, tuple[EndpointInfo, ...]]:
    """Merge the (usable) slices of one service into endpoints per service-port.

    Like kube-proxy, endpoints are keyed by the slice port's name and protocol (which is how a
    ServicePort's targetPort, named or not, resolves), and only an endpoint's first address is
    used. Slices are visited in name order so the outcome does not depend on arrival order.
    """
    merged: dict[ServicePortName, dict[tuple[str, int], EndpointInfo]] = {}
    for s in sorted(slices, key=lambda x: x.name):
        for ep_port in s.ports:
            proto = _protocol(ep_port.protocol)
            if proto is None or (ep_port.name and not _PORT_NAME.match(ep_port.name)):
                report(s, logging.WARNING, f"ignoring port {ep_port.name!r}/{ep_port.protocol}: "
                                           "invalid name or protocol")
                continue
            if not _port_ok(ep_port.port):
                report(s, logging.WARNING, f"ignoring port {ep_port.name!r}: invalid number "
                                           f"{ep_port.port!r}")
                continue
            assert ep_port.port is not None
            name = ServicePortName(s.namespace, s.service_name, ep_port.name, proto)
            by_addr = merged.setdefault(name, {})
            for ep in s.endpoints:
                if not ep.addresses:
                    continue
                ip = _ipv4(ep.addresses[0])
                if ip is None:
                    report(s, logging.WARNING, f"ignoring endpoint {ep.addresses[0]!r}: not IPv4")
                    continue
                info = EndpointInfo(
                    ip=ip, port=ep_port.port, ready=ep.ready, serving=ep.serving,
                    terminating=ep.terminating, node_name=ep.node_name, zone=ep.zone,
                    zone_hints=ep.hints_zones or None,
                )
                old = by_addr.get((ip, ep_port.port))
                if old is None or _better(info, old):
                    by_addr[(ip, ep_port.port)] = info
    return {
        name: tuple(sorted(eps.values(),
                           key=lambda e: (int(ipaddress.IPv4Address(e.ip)), e.port)))
        for name, eps in merged.items() if eps
    }


# ----------------------------------------------------------------------------------- trackers

T = TypeVar("T")


class _OnceLogger:
    """Logs each (object, message) once until the object is deleted, so an object that is
    skipped on every update does not flood the log."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def reporter(self, key: str) -> Report:
        def report(level: int, message: str) -> None:
            with self._lock:
                seen = self._seen.setdefault(key, set())
                if message in seen:
                    return
                seen.add(message)
            log.log(level, "%s %s: %s", self._kind, key, message)
        return report

    def forget(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)


class _ChangeTracker(Generic[T]):
    """Pending {previous, current} per namespaced name; a pair that cancels out is dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[T, T]] = {}
        self.updates_total = 0

    def _record(self, key: str, previous: T, current: T) -> bool:
        with self._lock:
            self.updates_total += 1
            first, _ = self._items.get(key, (previous, current))
            if first == current:
                self._items.pop(key, None)
            else:
                self._items[key] = (first, current)
            return bool(self._items)

    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    def drain(self) -> dict[str, tuple[T, T]]:
        """Take every pending change (the caller merges them)."""
        with self._lock:
            items, self._items = self._items, {}
        return items


ServiceMap = Mapping[ServicePortName, ServicePortInfo]


class ServiceChangeTracker(_ChangeTracker[ServiceMap]):
    """Services are converted when they arrive, so a change that does not alter any
    ServicePortInfo (a label, a selector) never triggers a sync."""

    def __init__(self) -> None:
        super().__init__()
        self._logs = _OnceLogger("service")

    def update(self, previous: Service | None, current: Service | None) -> bool:
        """Record one event (add: previous None; delete: current None). True while any
        change is pending."""
        svc = current if current is not None else previous
        if svc is None:
            return self.pending() > 0
        key = svc.key
        report = self._logs.reporter(key)
        prev_map = service_port_infos(previous, report) if previous is not None else {}
        cur_map = service_port_infos(current, report) if current is not None else {}
        if current is None:
            self._logs.forget(key)
        return self._record(key, prev_map, cur_map)


SliceOrNone = EndpointSlice | None


class EndpointSliceChangeTracker(_ChangeTracker[SliceOrNone]):
    """Slices that contribute nothing (IPv6, FQDN, unlabelled) are tracked as absent."""

    def __init__(self) -> None:
        super().__init__()
        self._logs = _OnceLogger("endpointslice")

    def report(self, s: EndpointSlice, level: int, message: str) -> None:
        self._logs.reporter(s.key)(level, message)

    def update(self, previous: EndpointSlice | None, current: EndpointSlice | None) -> bool:
        s = current if current is not None else previous
        if s is None:
            return self.pending() > 0
        key = s.key
        report = self._logs.reporter(key)
        prev = _routing_view(previous) if previous is not None and slice_usable(previous, report) else None
        cur = _routing_view(current) if current is not None and slice_usable(current, report) else None
        if current is None:
            self._logs.forget(key)
        return self._record(key, prev, cur)


def _routing_view(s: EndpointSlice) -> EndpointSlice:
    """The slice without its labels (already used by slice_usable): a label-only update, e.g.
    the EndpointSlice controller copying a Service label, is not a change, as in kube-proxy."""
    return dataclasses.replace(s, labels=()) if s.labels else s


# ------------------------------------------------------------------------------------ builder


class ProxyStateBuilder:
    """Holds the merged service-port and endpoint maps; apply() folds in pending changes.

    Only the thread that runs syncs may call apply(); the trackers take events from any thread.
    Work per apply is proportional to the changed services plus one copy of each map.
    """

    def __init__(self, services: ServiceChangeTracker,
                 slices: EndpointSliceChangeTracker) -> None:
        self.service_changes = services
        self.slice_changes = slices
        self._services: dict[ServicePortName, ServicePortInfo] = {}
        self._endpoints: dict[ServicePortName, tuple[EndpointInfo, ...]] = {}
        # service (ns, name) → slice name → slice, and → the endpoint names it produced
        self._slices: dict[tuple[str, str], dict[str, EndpointSlice]] = {}
        self._endpoint_names: dict[tuple[str, str], frozenset[ServicePortName]] = {}
        self._first = True

    def apply(self) -> ProxyState:
        changed: set[ServicePortName] = set()
        self._apply_services(changed)
        self._apply_slices(changed)
        if self._first:
            changed = set(self._services) | set(self._endpoints)
            self._first = False
        return ProxyState(
            services=MappingProxyType(dict(self._services)),
            endpoints=MappingProxyType(dict(self._endpoints)),
            changed=frozenset(changed),
        )

    def _apply_services(self, changed: set[ServicePortName]) -> None:
        for previous, current in self.service_changes.drain().values():
            for name in previous:
                if name not in current and self._services.pop(name, None) is not None:
                    changed.add(name)
            for name, info in current.items():
                if self._services.get(name) != info:
                    self._services[name] = info
                    changed.add(name)

    def _apply_slices(self, changed: set[ServicePortName]) -> None:
        affected: set[tuple[str, str]] = set()
        for previous, current in self.slice_changes.drain().values():
            if previous is not None:
                svc = (previous.namespace, previous.service_name)
                group = self._slices.get(svc, {})
                group.pop(previous.name, None)
                if not group:
                    self._slices.pop(svc, None)
                affected.add(svc)
            if current is not None:
                svc = (current.namespace, current.service_name)
                self._slices.setdefault(svc, {})[current.name] = current
                affected.add(svc)
        for svc in affected:
            fresh = slices_to_endpoints(self._slices.get(svc, {}).values(),
                                        self.slice_changes.report)
            for name in self._endpoint_names.get(svc, frozenset()) - fresh.keys():
                del self._endpoints[name]
                changed.add(name)
            for name, eps in fresh.items():
                if self._endpoints.get(name) != eps:
                    self._endpoints[name] = eps
                    changed.add(name)
            if fresh:
                self._endpoint_names[svc] = frozenset(fresh)
            else:
                self._endpoint_names.pop(svc, None)
