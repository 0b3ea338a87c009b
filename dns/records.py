"""Pure lookups over a ZoneSnapshot: which backends a cluster name has, PTR targets, NS hosts.

A "backend" is CoreDNS's msg.Service in small: one (address or CNAME target, port) pair plus the
name a SRV record would point at. The resolver (kubernetes.py) turns backends into records per
query type; whether the name exists at all is decided here (None = NXDOMAIN), so every query
type agrees on NXDOMAIN versus NODATA.
"""

from __future__ import annotations

from dataclasses import dataclass

from netplane.dns.names import (
    POD,
    Labels,
    RecordRequest,
    canonical_ip,
    pod_ip_from_label,
)
from netplane.dns.zone import (
    CLUSTER_IP,
    EXTERNAL_NAME,
    NO_PORTS,
    PortRecord,
    ServiceRecord,
    ZoneSnapshot,
)

_SVC = b"svc"
_POD = b"pod"


@dataclass(frozen=True, slots=True)
class Backend:
    host: str  # an IP (family 4 or 6) or, for ExternalName, the CNAME target (family 0)
    family: int
    port: int  # -1: no port (answers A/AAAA, never SRV)
    target: Labels  # the record's own name, e.g. what a SRV record points at


def _ascii(value: str) -> bytes:
    return value.encode("ascii", "replace")


def _match_port(req: RecordRequest, port: PortRecord) -> bool:
    # An absent port/protocol label matches every port, as CoreDNS's matchPortAndProtocol.
    return ((not req.port or req.port == port.name)
            and (not req.protocol or req.protocol == port.protocol))


def endpoint_label(endpoint_pod_names: bool, label: str, pod_label: str) -> str:
    return pod_label if endpoint_pod_names else label


def find_backends(snap: ZoneSnapshot, req: RecordRequest, zone_part: Labels, *,
                  pods: str = "disabled", endpoint_pod_names: bool = False
                  ) -> list[Backend] | None:
    """The backends of a name below the cluster zone: None if the name does not exist, [] for
    an existing name without addresses (NODATA). Mirrors CoreDNS's Records/findServices."""
    if not req.pod_or_svc:
        return []  # svc.<zone> / pod.<zone>: interior names, NODATA
    if not snap.namespace_exists(req.namespace):
        return None
    if req.pod_or_svc == POD:
        return _find_pod(req, zone_part, pods)
    if not req.service:
        return []  # <ns>.svc.<zone> of an existing namespace: NODATA
    svc = snap.service(req.namespace, req.service)
    if svc is None:
        return None
    if svc.kind == EXTERNAL_NAME:
        return _external(svc, req, zone_part)
    if svc.kind != CLUSTER_IP or req.endpoint:
        return _endpoints(svc, req, zone_part, endpoint_pod_names)
    own_name = (_ascii(svc.name), _ascii(svc.namespace), _SVC) + zone_part
    out: list[Backend] = []
    matched = False
    for port in svc.ports:
        if not _match_port(req, port):
            continue
        matched = True
        out.extend(Backend(ip, family, port.port, own_name) for ip, family in svc.cluster_ips)
    return out if matched else None


def _external(svc: ServiceRecord, req: RecordRequest, zone_part: Labels) -> list[Backend] | None:
    # Nothing exists below an ExternalName service, and an IP "name" is not answered (CoreDNS
    # only serves ExternalName values that are host names).
    if req.endpoint or not svc.external_name or canonical_ip(svc.external_name) is not None:
        return None
    own_name = (_ascii(svc.name), _ascii(svc.namespace), _SVC) + zone_part
    return [Backend(svc.external_name, 0, 0, own_name)]


def _endpoints(svc: ServiceRecord, req: RecordRequest, zone_part: Labels,
               endpoint_pod_names: bool) -> list[Backend] | None:
    """Headless services and endpoint names (also under ClusterIP services): one backend per
    (ready address × matching port); none at all is NXDOMAIN."""
    suffix = (_ascii(svc.name), _ascii(svc.namespace), _SVC) + zone_part
    out: list[Backend] = []
    for ep in svc.endpoints:
        label = endpoint_label(endpoint_pod_names, ep.label, ep.pod_label)
        if req.endpoint and req.endpoint != label:
            continue
        target = (_ascii(label),) + suffix
        for port in ep.ports:
            if _match_port(req, port):
                out.append(Backend(ep.ip, ep.family, port.port, target))
    return out or None


def _find_pod(req: RecordRequest, zone_part: Labels, pods: str) -> list[Backend] | None:
    if pods != "insecure":
        return None
    if not req.service:
        return []  # <ns>.pod.<zone>: NODATA
    if req.endpoint or req.port or req.protocol:
        return None  # nothing exists below a pod name
    ip = pod_ip_from_label(req.service)
    if ip is None:
        return None
    parsed = canonical_ip(ip)
    assert parsed is not None
    target = (_ascii(req.service), _ascii(req.namespace), _POD) + zone_part
    return [Backend(parsed[0], parsed[1], NO_PORTS[0].port, target)]


def ptr_targets(snap: ZoneSnapshot, ip: str, zone: Labels, *,
                endpoint_pod_names: bool = False) -> list[Labels]:
    """PTR targets for an IP: the first service whose cluster IP it is; otherwise one name per
    (service, endpoint label) that has the address, deduplicated (dns.md §3)."""
    for svc in snap.services_with_cluster_ip(ip):
        return [(_ascii(svc.name), _ascii(svc.namespace), _SVC) + zone]
    out: list[Labels] = []
    for svc in snap.services_with_endpoint_ip(ip):
        for ep in svc.endpoints:
            if ep.ip != ip:
                continue
            label = endpoint_label(endpoint_pod_names, ep.label, ep.pod_label)
            target = (_ascii(label), _ascii(svc.name), _ascii(svc.namespace), _SVC) + zone
            if target not in out:
                out.append(target)
    return out


def nameserver_hosts(snap: ZoneSnapshot, own_addresses: tuple[str, ...], zone_part: Labels
                     ) -> list[tuple[Labels, str, int]]:
    """(name, ip, family) of this server for NS/glue: the ClusterIP Services that have one of
    our addresses as an endpoint (e.g. kube-dns), else ns.dns.<zone> with our own addresses."""
    out: list[tuple[Labels, str, int]] = []
    for address in own_addresses:
        parsed = canonical_ip(address)
        if parsed is None:
            continue
        for svc in snap.services_with_endpoint_ip(parsed[0]):
            if svc.kind != CLUSTER_IP:
                continue
            name = (_ascii(svc.name), _ascii(svc.namespace), _SVC) + zone_part
            for ip, family in svc.cluster_ips:
                if (name, ip, family) not in out:
                    out.append((name, ip, family))
    if out:
        return out
    default = (b"ns", b"dns") + zone_part
    for address in own_addresses:
        parsed = canonical_ip(address)
        if parsed is not None and (default, parsed[0], parsed[1]) not in out:
            out.append((default, parsed[0], parsed[1]))
    return out
