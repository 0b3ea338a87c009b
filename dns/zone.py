"""ClusterZone: the cluster state DNS answers from, fed by informer handlers.

Writers (the Service, EndpointSlice and Namespace informer threads) serialise on one lock, keep
per-service working state, and after every *effective* change publish a new immutable
`ZoneSnapshot` by swapping one reference. Readers (the resolver, on any thread) call
`snapshot()` once per query and never lock. Each event costs O(the service it touches): the
service's record is rebuilt from its own slices and the snapshot's maps are persistent
(`pmap.PMap`), so nothing cluster-sized is copied.

What a snapshot holds is already reduced to what DNS needs (dns.md §1-§3):

- per service: kind (ClusterIP / headless / ExternalName), cluster IPs, named ports, and the
  *ready* endpoints (`conditions.ready` true or unset; publishNotReadyAddresses already makes
  the EndpointSlice controller publish them as ready) with their DNS labels precomputed;
- the namespaces that exist;
- reverse indexes IP → services (cluster IPs) and IP → services (endpoint addresses) for PTR.

Endpoints of slices whose Service does not exist (yet) are kept aside and appear as soon as the
Service does; they are never answered on their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from netplane.dns.names import canonical_ip, dashed_ip
from netplane.dns.pmap import PMap
from netplane.k8s.objects import EndpointSlice, Namespace, Service

log = logging.getLogger(__name__)

ServiceKey = tuple[str, str]  # (namespace, name)

CLUSTER_IP = "ClusterIP"
HEADLESS = "Headless"
EXTERNAL_NAME = "ExternalName"

# CoreDNS ignores targetRef names that could not be a DNS label (endpoint_pod_names).
_MAX_LABEL = 63


@dataclass(frozen=True, slots=True)
class PortRecord:
    name: str  # lowercase; "" for an unnamed port
    protocol: str  # lowercase: tcp, udp, sctp
    port: int  # -1: the port is unset (an EndpointSlice port without a number)


# A service or slice without ports still has addresses; CoreDNS models that as one port -1,
# which answers A/AAAA but never SRV.
NO_PORTS: tuple[PortRecord, ...] = (PortRecord("", "", -1),)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    ip: str  # canonical text form
    family: int  # 4 or 6
    label: str  # hostname, else the dashed IP
    pod_label: str  # hostname, else the targetRef pod name (<64 chars), else the dashed IP
    ports: tuple[PortRecord, ...]  # the slice's ports (NO_PORTS when it has none)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    namespace: str
    name: str
    kind: str  # CLUSTER_IP | HEADLESS | EXTERNAL_NAME
    cluster_ips: tuple[tuple[str, int], ...] = ()  # (canonical ip, family)
    ports: tuple[PortRecord, ...] = NO_PORTS
    external_name: str = ""  # as written in the spec, without a trailing dot
    endpoints: tuple[EndpointRecord, ...] = ()  # ready ones only, ordered by slice name

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)

    def endpoint_ips(self) -> frozenset[str]:
        return frozenset(ep.ip for ep in self.endpoints)


# ------------------------------------------------------------------------- pure conversions


def _ports(raw: Iterable[tuple[str, str, int | None]]) -> tuple[PortRecord, ...]:
    ports = tuple(PortRecord(name.lower(), protocol.lower(), -1 if port is None else port)
                  for name, protocol, port in raw)
    return ports or NO_PORTS


def service_kind(service: Service) -> str:
    if service.type == "ExternalName":
        return EXTERNAL_NAME
    if service.headless:
        return HEADLESS
    return CLUSTER_IP


def slice_endpoints(endpoint_slice: EndpointSlice) -> list[EndpointRecord]:
    """The ready addresses of one slice, in slice order. FQDN slices and non-IP addresses are
    skipped: they cannot be answered as A/AAAA."""
    ports = _ports((p.name, p.protocol, p.port) for p in endpoint_slice.ports)
    out: list[EndpointRecord] = []
    for endpoint in endpoint_slice.endpoints:
        if not endpoint.ready:
            continue
        hostname = endpoint.hostname.lower()
        ref = endpoint.target_ref
        pod_name = ref.name.lower() if ref is not None and len(ref.name) <= _MAX_LABEL else ""
        for address in endpoint.addresses:
            parsed = canonical_ip(address)
            if parsed is None:
                continue
            ip, family = parsed
            dashed = dashed_ip(ip)
            out.append(EndpointRecord(ip=ip, family=family, label=hostname or dashed,
                                      pod_label=hostname or pod_name or dashed, ports=ports))
    return out


def build_service_record(service: Service,
                         slices: Iterable[EndpointSlice] = ()) -> ServiceRecord:
    """The DNS view of a Service and its EndpointSlices (pure)."""
    kind = service_kind(service)
    ips: list[tuple[str, int]] = []
    if kind == CLUSTER_IP:
        for raw in service.cluster_ips:
            parsed = canonical_ip(raw)
            if parsed is not None and parsed not in ips:
                ips.append(parsed)
    endpoints: list[EndpointRecord] = []
    for endpoint_slice in sorted(slices, key=lambda s: s.name):
        endpoints.extend(slice_endpoints(endpoint_slice))
    return ServiceRecord(
        namespace=service.namespace,
        name=service.name,
        kind=kind,
        cluster_ips=tuple(ips),
        ports=_ports((p.name, p.protocol, p.port) for p in service.ports),
        external_name=service.external_name.strip().rstrip(".") if kind == EXTERNAL_NAME else "",
        endpoints=tuple(endpoints),
    )


# ------------------------------------------------------------------------------ the snapshot


@dataclass(frozen=True, slots=True)
class ZoneSnapshot:
    """One consistent, immutable view of the cluster for answering queries."""

    zone: str
    generation: int = 0
    modified: float = 0.0  # unix time of the last effective change (the SOA serial)
    synced: bool = False
    services: PMap[ServiceKey, ServiceRecord] = field(default_factory=PMap)
    namespaces: PMap[str, bool] = field(default_factory=PMap)
    cluster_ip_index: PMap[str, tuple[ServiceKey, ...]] = field(default_factory=PMap)
    endpoint_ip_index: PMap[str, tuple[ServiceKey, ...]] = field(default_factory=PMap)

    def service(self, namespace: str, name: str) -> ServiceRecord | None:
        return self.services.get((namespace, name))

    def namespace_exists(self, namespace: str) -> bool:
        return namespace in self.namespaces

    def services_with_cluster_ip(self, ip: str) -> list[ServiceRecord]:
        return self._resolve(self.cluster_ip_index.get(ip, ()))

    def services_with_endpoint_ip(self, ip: str) -> list[ServiceRecord]:
        return self._resolve(self.endpoint_ip_index.get(ip, ()))

    def _resolve(self, keys: Iterable[ServiceKey] | None) -> list[ServiceRecord]:
        out = []
        for key in keys or ():
            record = self.services.get(key)
            if record is not None:
                out.append(record)
        return out


def _index_delta(index: PMap[str, tuple[ServiceKey, ...]], key: ServiceKey,
                 old_ips: frozenset[str], new_ips: frozenset[str]
                 ) -> PMap[str, tuple[ServiceKey, ...]]:
    """Move `key` from the IPs it left to the IPs it gained (touches only those IPs)."""
    upserts: dict[str, tuple[ServiceKey, ...]] = {}
    deletes: list[str] = []
    for ip in old_ips - new_ips:
        keys = tuple(k for k in index.get(ip, ()) if k != key)
        if keys:
            upserts[ip] = keys
        else:
            deletes.append(ip)
    for ip in new_ips - old_ips:
        upserts[ip] = tuple(sorted(set(index.get(ip, ())) | {key}))
    return index.update(upserts, deletes)


def _cluster_ips(record: ServiceRecord | None) -> frozenset[str]:
    return frozenset(ip for ip, _ in record.cluster_ips) if record else frozenset()


def _endpoint_ips(record: ServiceRecord | None) -> frozenset[str]:
    return record.endpoint_ips() if record else frozenset()


# ------------------------------------------------------------------------------ the writer


class ClusterZone:
    """The cluster zone's state; informer handlers write, `snapshot()` readers never lock."""

    def __init__(self, zone: str = "cluster.local", *,
                 clock: Callable[[], float] = time.time) -> None:
        self.zone = zone.strip().rstrip(".").lower() or "cluster.local"
        self._clock = clock
        self._lock = threading.Lock()
        self._services: dict[ServiceKey, Service] = {}
        self._slices: dict[ServiceKey, dict[str, EndpointSlice]] = {}
        self._slice_owner: dict[tuple[str, str], ServiceKey] = {}  # slice key → its service
        self._snapshot = ZoneSnapshot(zone=self.zone, modified=clock())

    # ---------------------------------------------------------------------------- readers

    def snapshot(self) -> ZoneSnapshot:
        return self._snapshot

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    @property
    def modified(self) -> float:
        return self._snapshot.modified

    def has_synced(self) -> bool:
        return self._snapshot.synced

    # ---------------------------------------------------------------------------- writers

    def mark_synced(self) -> None:
        """All three informers have listed: unknown names are now NXDOMAIN, not SERVFAIL."""
        with self._lock:
            if not self._snapshot.synced:
                self._publish(synced=True)

    def on_namespace(self, old: Namespace | None, new: Namespace | None) -> None:
        with self._lock:
            snap = self._snapshot
            if new is None:
                if old is not None and old.name in snap.namespaces:
                    self._publish(namespaces=snap.namespaces.delete(old.name))
            elif new.name not in snap.namespaces:
                self._publish(namespaces=snap.namespaces.set(new.name, True))

    def on_service(self, old: Service | None, new: Service | None) -> None:
        with self._lock:
            if old is not None and (new is None or old.key != new.key):
                key = (old.namespace, old.name)
                self._services.pop(key, None)
                self._refresh(key)
            if new is not None:
                key = (new.namespace, new.name)
                self._services[key] = new
                self._refresh(key)

    def on_endpoint_slice(self, old: EndpointSlice | None, new: EndpointSlice | None) -> None:
        with self._lock:
            touched: set[ServiceKey] = set()
            if old is not None:
                touched |= self._drop_slice(old)
            if new is not None:
                touched |= self._drop_slice(new)  # it may have moved to another service
                if new.service_name:
                    owner = (new.namespace, new.service_name)
                    self._slices.setdefault(owner, {})[new.name] = new
                    self._slice_owner[(new.namespace, new.name)] = owner
                    touched.add(owner)
            for key in sorted(touched):
                self._refresh(key)

    # Informer-shaped adapters (Informer.add_handler(on_add, on_update, on_delete)).
    def add_service(self, new: Service) -> None:
        self.on_service(None, new)

    def update_service(self, old: Service, new: Service) -> None:
        self.on_service(old, new)

    def delete_service(self, old: Service) -> None:
        self.on_service(old, None)

    def add_endpoint_slice(self, new: EndpointSlice) -> None:
        self.on_endpoint_slice(None, new)

    def update_endpoint_slice(self, old: EndpointSlice, new: EndpointSlice) -> None:
        self.on_endpoint_slice(old, new)

    def delete_endpoint_slice(self, old: EndpointSlice) -> None:
        self.on_endpoint_slice(old, None)

    def add_namespace(self, new: Namespace) -> None:
        self.on_namespace(None, new)

    def update_namespace(self, old: Namespace, new: Namespace) -> None:
        self.on_namespace(old, new)

    def delete_namespace(self, old: Namespace) -> None:
        self.on_namespace(old, None)

    # ---------------------------------------------------------------------------- internals

    def _drop_slice(self, endpoint_slice: EndpointSlice) -> set[ServiceKey]:
        owner = self._slice_owner.pop((endpoint_slice.namespace, endpoint_slice.name), None)
        if owner is None:
            return set()
        slices = self._slices.get(owner)
        if slices is not None:
            slices.pop(endpoint_slice.name, None)
            if not slices:
                del self._slices[owner]
        return {owner}

    def _refresh(self, key: ServiceKey) -> None:
        """Rebuild one service's record from its Service and slices; publish if it changed."""
        snap = self._snapshot
        old = snap.services.get(key)
        service = self._services.get(key)
        new = (build_service_record(service, self._slices.get(key, {}).values())
               if service is not None else None)
        if new == old:
            return
        services = snap.services.set(key, new) if new is not None else snap.services.delete(key)
        self._publish(
            services=services,
            cluster_ip_index=_index_delta(snap.cluster_ip_index, key,
                                          _cluster_ips(old), _cluster_ips(new)),
            endpoint_ip_index=_index_delta(snap.endpoint_ip_index, key,
                                           _endpoint_ips(old), _endpoint_ips(new)),
        )

    def _publish(self, **changes: object) -> None:
        snap = self._snapshot
        fields = {
            "zone": snap.zone,
            "generation": snap.generation + 1,
            "modified": self._clock(),
            "synced": snap.synced,
            "services": snap.services,
            "namespaces": snap.namespaces,
            "cluster_ip_index": snap.cluster_ip_index,
            "endpoint_ip_index": snap.endpoint_ip_index,
        }
        fields.update(changes)
        # One reference assignment: a reader holds either the old or the new snapshot.
        self._snapshot = ZoneSnapshot(**fields)  # type: ignore[arg-type]
