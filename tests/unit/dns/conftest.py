"""A fake cluster (in the spirit of CoreDNS's APIConnServeTest) and query helpers for the DNS
unit tests. Objects go through the real `from_dict` conversions and ClusterZone handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dnslib
import pytest

from netplane.dns.chain import Request, Response
from netplane.dns.zone import ClusterZone
from netplane.k8s.objects import EndpointSlice, Namespace, Service

SERIAL = 1499347823


def namespace(name: str) -> Namespace:
    return Namespace.from_dict({"metadata": {"name": name}})


def service(ns: str, name: str, cluster_ips: list[str] | None = None,
            ports: list[tuple[str, str, int]] = (), *, type_: str = "ClusterIP",
            external_name: str = "") -> Service:
    spec: dict[str, Any] = {
        "type": type_,
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
    }
    if cluster_ips is not None:
        spec["clusterIPs"] = cluster_ips
        spec["clusterIP"] = cluster_ips[0] if cluster_ips else ""
    if external_name:
        spec["externalName"] = external_name
    return Service.from_dict({"metadata": {"namespace": ns, "name": name}, "spec": spec})


def endpoint(ip: str, *, hostname: str = "", ready: bool | None = True,
             pod: str = "") -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    if hostname:
        ep["hostname"] = hostname
    if pod:
        ep["targetRef"] = {"kind": "Pod", "namespace": "x", "name": pod}
    return ep


def endpoint_slice(ns: str, name: str, svc: str, endpoints: list[dict[str, Any]],
                   ports: list[tuple[str, str, int | None]] = (),
                   address_type: str = "IPv4") -> EndpointSlice:
    return EndpointSlice.from_dict({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "protocol": p, **({"port": port} if port is not None else {})}
                  for n, p, port in ports],
    })


HTTP = [("http", "TCP", 80)]


def populate(zone: ClusterZone) -> ClusterZone:
    """The fake cluster every table test runs against."""
    for ns in ("testns", "kube-system", "emptyns"):
        zone.on_namespace(None, namespace(ns))
    objects: list[Service | EndpointSlice] = [
        service("testns", "svc1", ["10.0.0.1"], HTTP),
        endpoint_slice("testns", "svc1-a", "svc1",
                       [endpoint("172.0.0.1", hostname="ep1a")], HTTP),
        service("testns", "svcempty", ["10.0.0.4"], HTTP),
        endpoint_slice("testns", "svcempty-a", "svcempty", [], HTTP),
        service("testns", "svc6", ["1234:abcd::1"], HTTP),
        service("testns", "svc-dual-stack", ["10.0.0.3", "10::3"], HTTP),
        service("testns", "multiport", ["10.0.0.5"],
                [("http", "TCP", 80), ("https", "TCP", 443), ("dns", "UDP", 53)]),
        service("testns", "noports", ["10.0.0.6"], []),
        service("testns", "hdls1", ["None"]),
        endpoint_slice("testns", "hdls1-v4", "hdls1", [
            endpoint("172.0.0.2"),
            endpoint("172.0.0.3", ready=None),  # unset condition counts as ready
            endpoint("172.0.0.4", hostname="dup-name"),
            endpoint("172.0.0.5", hostname="dup-name"),
            endpoint("172.0.0.9", ready=False),  # not ready: never answered
        ], HTTP),
        endpoint_slice("testns", "hdls1-v6", "hdls1",
                       [endpoint("5678:abcd::1"), endpoint("5678:abcd::2")], HTTP,
                       address_type="IPv6"),
        service("testns", "hdlsprtls", ["None"]),
        endpoint_slice("testns", "hdlsprtls-a", "hdlsprtls", [endpoint("172.0.0.20")]),
        service("testns", "hdlsnone", ["None"], HTTP),
        endpoint_slice("testns", "hdlsnone-a", "hdlsnone",
                       [endpoint("172.0.0.30", ready=False)], HTTP),
        service("testns", "web", ["None"], HTTP),
        endpoint_slice("testns", "web-a", "web", [
            endpoint("172.0.2.1", pod="web-7d4b9c"),
            endpoint("172.0.2.2", pod="p" * 64),  # too long for a label: dashed IP instead
            endpoint("172.0.2.3", pod="web-x", hostname="named"),
        ], HTTP),
        service("testns", "external", None, HTTP, type_="ExternalName",
                external_name="ext.interwebs.test"),
        service("testns", "external-to-service", None, HTTP, type_="ExternalName",
                external_name="svc1.testns.svc.cluster.local."),
        service("testns", "external-loop", None, [], type_="ExternalName",
                external_name="external-loop.testns.svc.cluster.local"),
        service("testns", "external-ip", None, [], type_="ExternalName",
                external_name="1.2.3.4"),
        # PTR deduplication (dns.md §3): one IP in two slices of one service gives one PTR,
        # one IP in two services gives two.
        service("testns", "ptr-a", ["None"]),
        endpoint_slice("testns", "ptr-a-1", "ptr-a", [endpoint("172.0.1.1")]),
        endpoint_slice("testns", "ptr-a-2", "ptr-a", [endpoint("172.0.1.1")]),
        service("testns", "ptr-b", ["None"]),
        endpoint_slice("testns", "ptr-b-1", "ptr-b", [endpoint("172.0.1.2")]),
        service("testns", "ptr-c", ["None"]),
        endpoint_slice("testns", "ptr-c-1", "ptr-c", [endpoint("172.0.1.2", hostname="c")]),
        service("kube-system", "kube-dns", ["10.96.0.10"],
                [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]),
        endpoint_slice("kube-system", "kube-dns-a", "kube-dns", [endpoint("10.244.0.5")],
                       [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]),
    ]
    for obj in objects:
        if isinstance(obj, Service):
            zone.on_service(None, obj)
        else:
            zone.on_endpoint_slice(None, obj)
    return zone


@pytest.fixture
def zone() -> ClusterZone:
    z = populate(ClusterZone("cluster.local", clock=lambda: SERIAL))
    z.mark_synced()
    return z


def make_request(qname: str, qtype: str | int, *, edns: bool = False,
                 do: bool = False) -> Request:
    q = dnslib.DNSRecord.question(qname, qtype if isinstance(qtype, str)
                                  else dnslib.QTYPE.get(qtype))
    if edns:
        q.add_ar(dnslib.EDNS0(udp_len=4096, flags="do" if do else ""))
    return Request(record=q, proto="udp", client=("127.0.0.1", 5353),
                   max_size=4096 if edns else 512)


def rr_text(rr: dnslib.RR) -> str:
    return " ".join(str(rr).split())


def section(rrs: list[dnslib.RR]) -> list[str]:
    """A section as sorted zone-text lines, without the OPT pseudo-record."""
    return sorted(rr_text(rr) for rr in rrs if rr.rtype != dnslib.QTYPE.OPT)


def norm(lines: list[str]) -> list[str]:
    return sorted(" ".join(line.split()) for line in lines)


@pytest.fixture
def ask() -> Callable[..., Response | None]:
    def _ask(handler: Any, qname: str, qtype: str | int, **kw: Any) -> Response | None:
        return handler.serve(make_request(qname, qtype, **kw))
    return _ask


@pytest.fixture
def k8s() -> Any:
    """The builders and helpers above, for test modules (conftest is not importable under
    --import-mode=importlib)."""
    import types
    return types.SimpleNamespace(
        namespace=namespace, service=service, endpoint=endpoint, endpoint_slice=endpoint_slice,
        populate=populate, make_request=make_request, rr_text=rr_text, section=section,
        norm=norm, SERIAL=SERIAL, HTTP=HTTP)
