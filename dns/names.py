"""Pure parsing of query names: cluster-zone forms, reverse (PTR) forms, pod and endpoint labels.

Names arrive as dnslib label tuples (bytes, case as received). Matching is case-insensitive
(spec §3), so everything here compares lowercased text, but callers keep the original labels to
build owner names, which must echo the query's case.

The cluster forms follow CoreDNS's parseRequest, read from the zone outwards:

    [svc|pod] . <namespace> . <service> . <endpoint>                 (1-4 labels)
    [svc|pod] . <namespace> . <service> . <protocol> . <port>        (5 labels; "_" optional)

A first label other than `svc`/`pod`, or more than 5 labels, is an invalid name (NXDOMAIN).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Labels = tuple[bytes, ...]

SVC = "svc"
POD = "pod"


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """What a name below the cluster zone asks for; empty strings are "not given"."""

    pod_or_svc: str = ""  # "" for the interior names svc.<zone> / pod.<zone> themselves
    namespace: str = ""
    service: str = ""  # the service name, or the dashed-IP pod label under pod.<zone>
    endpoint: str = ""
    port: str = ""  # SRV port name without the leading underscore
    protocol: str = ""  # SRV protocol without the leading underscore


def text(label: bytes) -> str:
    """A label as lowercase text for matching. latin-1 never fails and maps bytes 1:1, so a
    label with odd bytes simply matches nothing."""
    return label.decode("latin-1").lower()


def split_zone(labels: Labels, zone: Labels) -> tuple[Labels, Labels] | None:
    """(labels below the zone, the zone part as asked) when `labels` is in `zone`, else None.

    `zone` must be lowercase; the returned zone part keeps the query's case.
    """
    n = len(zone)
    if len(labels) < n:
        return None
    tail = labels[len(labels) - n:]
    if any(a.lower() != b for a, b in zip(tail, zone)):
        return None
    return labels[:len(labels) - n], tail


def zone_labels(zone: str) -> Labels:
    """'cluster.local' / 'cluster.local.' → (b'cluster', b'local'), lowercased."""
    zone = zone.strip().rstrip(".").lower()
    return tuple(part.encode("ascii") for part in zone.split(".")) if zone else ()


def _strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


def parse_cluster_name(relative: Labels) -> RecordRequest | None:
    """Parse the labels below the cluster zone. None means the name cannot exist (NXDOMAIN);
    an empty relative name (the apex) is the caller's business and also gives RecordRequest()."""
    segs = [text(label) for label in relative]
    if not segs:
        return RecordRequest()
    kind = segs[-1]
    if kind not in (SVC, POD):
        return None
    rest = segs[:-1]
    if not rest:
        return RecordRequest(pod_or_svc="")  # svc.<zone> or pod.<zone>: an interior name
    namespace = rest[-1]
    if len(rest) == 1:
        return RecordRequest(pod_or_svc=kind, namespace=namespace)
    service = rest[-2]
    if len(rest) == 2:
        return RecordRequest(pod_or_svc=kind, namespace=namespace, service=service)
    if len(rest) == 3:
        return RecordRequest(pod_or_svc=kind, namespace=namespace, service=service,
                             endpoint=rest[0])
    if len(rest) == 4:
        return RecordRequest(pod_or_svc=kind, namespace=namespace, service=service,
                             port=_strip_underscore(rest[0]), protocol=_strip_underscore(rest[1]))
    return None


# ----------------------------------------------------------------------------- reverse names

IN_ADDR_ARPA: Labels = (b"in-addr", b"arpa")
IP6_ARPA: Labels = (b"ip6", b"arpa")
_HEX = frozenset("0123456789abcdef")


def reverse_zone_of(labels: Labels) -> Labels | None:
    """IN_ADDR_ARPA or IP6_ARPA when the name is below one of them."""
    for zone in (IN_ADDR_ARPA, IP6_ARPA):
        if split_zone(labels, zone) is not None:
            return zone
    return None


def address_from_reverse(labels: Labels) -> str | None:
    """The IP of a complete reverse name (4 octets under in-addr.arpa, 32 nibbles under
    ip6.arpa), in canonical text form; None for partial or malformed names."""
    v4 = split_zone(labels, IN_ADDR_ARPA)
    if v4 is not None:
        octets = [text(label) for label in v4[0]]
        if len(octets) != 4 or not all(o.isdigit() and o.isascii() for o in octets):
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(octets))))
        except ValueError:  # 256, or a leading zero
            return None
    v6 = split_zone(labels, IP6_ARPA)
    if v6 is not None:
        nibbles = [text(label) for label in v6[0]]
        if len(nibbles) != 32 or not all(len(n) == 1 and n in _HEX for n in nibbles):
            return None
        return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    return None


def reverse_labels(ip: str) -> Labels:
    """The reverse name of an IP, e.g. '10.0.0.1' → 1.0.0.10.in-addr.arpa labels."""
    addr = ipaddress.ip_address(ip)
    return tuple(addr.reverse_pointer.encode("ascii").split(b"."))


# ------------------------------------------------------------------------- pod/endpoint labels


def canonical_ip(value: str) -> tuple[str, int] | None:
    """(canonical text, 4 or 6) for an IP string, None if it is not one."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    return str(addr), addr.version


def dashed_ip(ip: str) -> str:
    """The label CoreDNS derives from an endpoint IP: 10-0-0-1, 5678-abcd--1; an IPv6 address
    ending in '::' would end in '-', which is not a valid label end, so '0' is appended."""
    if "." in ip:
        return ip.replace(".", "-")
    label = ip.replace(":", "-")
    return label + "0" if label.endswith("-") else label


def pod_ip_from_label(label: str) -> str | None:
    """The IP named by a pod label (`1-2-3-4`, `fd00--1`), or None when it names no IP.

    Like CoreDNS: exactly three dashes and no '--' means IPv4, anything else is read as IPv6.
    """
    if label.count("-") == 3 and "--" not in label:
        candidate = label.replace("-", ".")
    else:
        candidate = label.replace("-", ":")
    parsed = canonical_ip(candidate)
    return parsed[0] if parsed else None
