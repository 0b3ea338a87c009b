"""Query-name parsing (the CoreDNS parse_test.go table, plus reverse and pod/endpoint labels)."""

from __future__ import annotations

import pytest

from netplane.dns.names import (
    RecordRequest,
    address_from_reverse,
    dashed_ip,
    parse_cluster_name,
    pod_ip_from_label,
    reverse_labels,
    reverse_zone_of,
    split_zone,
    zone_labels,
)

ZONE = zone_labels("cluster.local")


def labels(name: str) -> tuple[bytes, ...]:
    return tuple(p.encode() for p in name.rstrip(".").split(".") if p)


def parse(name: str) -> RecordRequest | None:
    split = split_zone(labels(name), ZONE)
    assert split is not None
    return parse_cluster_name(split[0])


@pytest.mark.parametrize("name,expected", [
    ("cluster.local", RecordRequest()),
    ("svc.cluster.local", RecordRequest()),
    ("pod.cluster.local", RecordRequest()),
    ("testns.svc.cluster.local", RecordRequest("svc", "testns")),
    ("webs.mynamespace.svc.cluster.local", RecordRequest("svc", "mynamespace", "webs")),
    ("endpoint.webs.mynamespace.svc.cluster.local",
     RecordRequest("svc", "mynamespace", "webs", endpoint="endpoint")),
    ("_http._tcp.webs.mynamespace.svc.cluster.local",
     RecordRequest("svc", "mynamespace", "webs", port="http", protocol="tcp")),
    ("http.tcp.webs.mynamespace.svc.cluster.local",  # the underscores are optional
     RecordRequest("svc", "mynamespace", "webs", port="http", protocol="tcp")),
    ("_HTTP._TCP.WEBS.MyNamespace.SVC.Cluster.Local",  # matching is case-insensitive
     RecordRequest("svc", "mynamespace", "webs", port="http", protocol="tcp")),
    ("1-2-3-4.ns.pod.cluster.local", RecordRequest("pod", "ns", "1-2-3-4")),
    ("too.long._http._tcp.webs.mynamespace.svc.cluster.local", None),
    ("webs.mynamespace.notsvc.cluster.local", None),
    ("dns-version.cluster.local", None),  # handled before parsing
    ("*.mynamespace.svc.cluster.local", RecordRequest("svc", "mynamespace", "*")),
])
def test_parse_cluster_name(name, expected):
    assert parse(name) == expected


@pytest.mark.parametrize("name,zone,relative,zone_part", [
    ("a.b.Cluster.LOCAL.", "cluster.local", (b"a", b"b"), (b"Cluster", b"LOCAL")),
    ("cluster.local.", "cluster.local.", (), (b"cluster", b"local")),
    ("local.", "cluster.local", None, None),
    ("acluster.local.", "cluster.local", None, None),
    ("anything.example.", ".", (b"anything", b"example"), ()),
])
def test_split_zone_keeps_the_query_case(name, zone, relative, zone_part):
    result = split_zone(labels(name), zone_labels(zone))
    if relative is None:
        assert result is None
    else:
        assert result == (relative, zone_part)


@pytest.mark.parametrize("name,ip", [
    ("1.0.0.10.in-addr.arpa", "10.0.0.1"),
    ("1.0.0.10.IN-ADDR.ARPA", "10.0.0.1"),
    ("0.0.10.in-addr.arpa", None),  # partial: a zone, not an address
    ("256.0.0.10.in-addr.arpa", None),
    ("01.0.0.10.in-addr.arpa", None),
    ("x.0.0.10.in-addr.arpa", None),
    ("1." + ".".join("0" * 30) + ".f.ip6.arpa", "f000::1"),
    ("1." + ".".join("0" * 30) + ".F.IP6.ARPA", "f000::1"),
    ("1." + ".".join("0" * 29) + ".f.ip6.arpa", None),  # 31 nibbles
    ("10." + ".".join("0" * 30) + ".f.ip6.arpa", None),
    ("example.com", None),
])
def test_address_from_reverse(name, ip):
    assert address_from_reverse(labels(name)) == ip


@pytest.mark.parametrize("ip", ["10.96.0.10", "5678:abcd::1", "::1"])
def test_reverse_labels_round_trip(ip):
    assert address_from_reverse(reverse_labels(ip)) == ip
    assert reverse_zone_of(reverse_labels(ip)) is not None


@pytest.mark.parametrize("ip,label", [
    ("172.17.0.222", "172-17-0-222"),
    ("5678:abcd::1", "5678-abcd--1"),
    ("fd00::", "fd00--0"),  # a label cannot end in '-'
])
def test_dashed_ip(ip, label):
    assert dashed_ip(ip) == label


@pytest.mark.parametrize("label,ip", [
    ("1-2-3-4", "1.2.3.4"),
    ("fd00--1", "fd00::1"),
    ("fd00--0", "fd00::"),
    ("1-2-3-4-5-6-7-8", "1:2:3:4:5:6:7:8"),
    ("1-2-3", None),
    ("1-2-3-256", None),
    ("1-2--3-4", "1:2::3:4"),  # not v4-shaped: read as IPv6
    ("not-an-ip", None),
])
def test_pod_ip_from_label(label, ip):
    assert pod_ip_from_label(label) == ip
