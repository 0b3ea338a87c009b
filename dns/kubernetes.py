"""The kubernetes plugin: answers the cluster zone from a ClusterZone snapshot (pure resolver).

Behaviour follows the Kubernetes DNS spec 1.1.0 and CoreDNS's kubernetes plugin (dns.md §1-§5):
NXDOMAIN versus NODATA (both with the zone's SOA in authority), SERVFAIL instead of NXDOMAIN
until the informers have synced, REFUSED for zone transfers, owner names exactly as asked (0x20
case preserved, including the zone part of SRV targets and of the SOA), and `fallthrough`
zones whose NXDOMAIN goes to the next plugin.

Reverse names (in-addr.arpa, ip6.arpa) are answered when they match a service or endpoint IP.
Otherwise they belong to the next plugin (forward), unless the address is inside one of
`reverse_cidrs` (the service/pod ranges), where this plugin is authoritative and says NXDOMAIN.

ExternalName targets outside the zone are not resolved here unless an `upstream` callable is
given (CoreDNS's Upstreamer: it should resolve through the server's own chain). Without one the
answer is the CNAME alone, which stub resolvers and the server may chase.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dnslib
from dnslib import QTYPE, RCODE, RR, DNSLabel

from netplane.dns.chain import Handler, Plugin, Request, Response, make_reply
from netplane.dns.names import (
    Labels,
    address_from_reverse,
    parse_cluster_name,
    reverse_zone_of,
    split_zone,
    text,
    zone_labels,
)
from netplane.dns.records import Backend, find_backends, nameserver_hosts, ptr_targets
from netplane.dns.zone import ClusterZone, ZoneSnapshot
from netplane.errors import ConfigError

log = logging.getLogger(__name__)

DNS_SCHEMA_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800
_MAX_CNAME_CHAIN = 8  # CoreDNS stops following in-zone CNAMEs after 8 records
_CLASS_IN = 1

# Resolves (name, qtype) elsewhere (e.g. through the server's chain); None on failure.
Upstream = Callable[[str, int], Sequence[RR] | None]


@dataclass(frozen=True)
class KubernetesOptions:
    zone: str = "cluster.local"
    ttl: int = 5
    pods: str = "disabled"  # disabled | insecure
    endpoint_pod_names: bool = False
    fallthrough: tuple[str, ...] = ()  # zones whose NXDOMAIN goes to the next plugin ("." = all)
    # Our own addresses, for the NS record's glue and ns.dns.<zone> (CoreDNS uses the
    # interface addresses); empty gives an NS record without glue.
    ns_addresses: tuple[str, ...] = ()
    # Service/pod CIDRs whose reverse names this plugin is authoritative for (NXDOMAIN instead
    # of passing an unknown address on to the next plugin).
    reverse_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not zone_labels(self.zone):
            raise ConfigError("kubernetes: zone must not be empty")
        if not 0 <= self.ttl <= 3600:
            raise ConfigError(f"kubernetes: ttl {self.ttl} is outside 0-3600")
        if self.pods not in ("disabled", "insecure"):
            raise ConfigError(f"kubernetes: pods {self.pods!r} is not supported "
                              "(disabled or insecure)")
        for cidr in self.reverse_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"kubernetes: reverse CIDR {cidr!r}: {exc}") from exc
        for address in self.ns_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError as exc:
                raise ConfigError(f"kubernetes: ns address {address!r}: {exc}") from exc


def kubernetes_plugin(zone: ClusterZone, options: KubernetesOptions,
                      upstream: Upstream | None = None) -> Plugin:
    def build(next_handler: Handler | None) -> Handler:
        return KubernetesHandler(zone, options, upstream)
    return build


def _label(labels: Labels) -> DNSLabel:
    return DNSLabel(list(labels))


def _lower(labels: Labels) -> Labels:
    return tuple(label.lower() for label in labels)


class KubernetesHandler:
    name = "kubernetes"

    def __init__(self, zone: ClusterZone, options: KubernetesOptions,
                 upstream: Upstream | None = None) -> None:
        self._zone = zone
        self._opts = options
        self._upstream = upstream
        self._zone_labels = zone_labels(options.zone)
        self._ttl = options.ttl
        self._fallthrough = tuple(zone_labels(z) for z in options.fallthrough)
        self._reverse_nets = tuple(ipaddress.ip_network(c, strict=False)
                                   for c in options.reverse_cidrs)

    # ------------------------------------------------------------------------------- entry

    def serve(self, req: Request) -> Response | None:
        record = req.record
        if len(record.questions) != 1 or record.header.opcode != 0:
            return None  # not a standard query: the server answers FORMERR/NOTIMP
        question = record.questions[0]
        if question.qclass != _CLASS_IN:
            return None
        labels = question.qname.label
        snap = self._zone.snapshot()
        split = split_zone(labels, self._zone_labels)
        if split is not None:
            return self._serve_cluster(req, snap, split[0], split[1])
        if reverse_zone_of(labels) is not None:
            return self._serve_reverse(req, snap, labels)
        return None

    # ------------------------------------------------------------------------ cluster zone

    def _serve_cluster(self, req: Request, snap: ZoneSnapshot, relative: Labels,
                       zone_part: Labels) -> Response | None:
        question = req.record.questions[0]
        qtype = question.qtype
        if qtype in (QTYPE.AXFR, QTYPE.IXFR):
            # Zone transfers need CoreDNS's transfer plugin, which we do not have.
            return Response(make_reply(req, RCODE.REFUSED), cacheable=True, plugin=self.name)
        owner = question.qname
        if not relative:
            return self._serve_apex(req, snap, qtype, zone_part)
        names = [text(label) for label in relative]
        if names == ["dns-version"]:
            if qtype != QTYPE.TXT:
                # CoreDNS quirk kept on purpose: the name exists only for TXT.
                return self._name_error(req, snap, zone_part)
            txt = RR(owner, QTYPE.TXT, ttl=DNS_VERSION_TTL, rdata=dnslib.TXT(DNS_SCHEMA_VERSION))
            return self._answer(req, [txt], [])
        if names == ["ns", "dns"]:
            family = {QTYPE.A: 4, QTYPE.AAAA: 6}.get(qtype)
            hosts = nameserver_hosts(snap, self._opts.ns_addresses, zone_part)
            answer = [self._address(owner, ip, fam) for _, ip, fam in hosts if fam == family]
            return self._answer_or_nodata(req, snap, zone_part, answer, [])
        parsed = parse_cluster_name(relative)
        backends = None if parsed is None else find_backends(
            snap, parsed, zone_part, pods=self._opts.pods,
            endpoint_pod_names=self._opts.endpoint_pod_names)
        if backends is None:
            return self._name_error(req, snap, zone_part)
        answer: list[RR] = []
        extra: list[RR] = []
        cacheable = True
        if qtype in (QTYPE.A, QTYPE.AAAA):
            answer, cacheable = self._addresses(snap, owner, backends, qtype, [])
        elif qtype == QTYPE.SRV:
            answer, extra = self._srv(owner, backends)
        elif qtype == QTYPE.CNAME:
            if backends and backends[0].family == 0:
                answer = [self._cname(owner, backends[0].host)]
        # Every other type of an existing name (TXT, MX, PTR, SOA or NS below the apex...) is
        # NODATA; CoreDNS decides existence with a fake A lookup, as find_backends does.
        return self._answer_or_nodata(req, snap, zone_part, answer, extra, cacheable=cacheable)

    def _serve_apex(self, req: Request, snap: ZoneSnapshot, qtype: int,
                    zone_part: Labels) -> Response:
        if qtype == QTYPE.SOA:
            return self._answer(req, [self._soa(snap, zone_part)], [])
        if qtype == QTYPE.NS:
            owner = req.record.questions[0].qname
            hosts = nameserver_hosts(snap, self._opts.ns_addresses, zone_part)
            answer: list[RR] = []
            extra: list[RR] = []
            seen: set[Labels] = set()
            for name, ip, family in hosts:
                if _lower(name) not in seen:
                    seen.add(_lower(name))
                    answer.append(RR(owner, QTYPE.NS, ttl=self._ttl, rdata=dnslib.NS(_label(name))))
                extra.append(self._address(_label(name), ip, family))
            if not answer:
                # A zone always has a nameserver, even when we do not know our address.
                ns = _label((b"ns", b"dns") + zone_part)
                answer.append(RR(owner, QTYPE.NS, ttl=self._ttl, rdata=dnslib.NS(ns)))
            return self._answer(req, answer, extra)
        return self._nodata(req, snap, zone_part)

    # ------------------------------------------------------------------------ record types

    def _address(self, owner: DNSLabel, ip: str, family: int) -> RR:
        if family == 4:
            return RR(owner, QTYPE.A, ttl=self._ttl, rdata=dnslib.A(ip))
        return RR(owner, QTYPE.AAAA, ttl=self._ttl, rdata=dnslib.AAAA(ip))

    def _cname(self, owner: DNSLabel, target: str) -> RR:
        return RR(owner, QTYPE.CNAME, ttl=self._ttl, rdata=dnslib.CNAME(_name_labels(target)))

    def _addresses(self, snap: ZoneSnapshot, owner: DNSLabel, backends: list[Backend],
                   qtype: int, previous: list[RR]) -> tuple[list[RR], bool]:
        """A/AAAA records for `backends` (deduplicated by IP), following ExternalName CNAMEs:
        in-zone targets are resolved here, others through `upstream` when there is one.
        Returns (records, cacheable)."""
        family = 4 if qtype == QTYPE.A else 6
        out: list[RR] = []
        seen: set[str] = set()
        cacheable = True
        for backend in backends:
            if backend.family == family:
                if backend.host not in seen:
                    seen.add(backend.host)
                    out.append(self._address(owner, backend.host, family))
                continue
            if backend.family != 0:
                continue
            target = _name_labels(backend.host)
            if _lower(target.label) == _lower(owner.label) or len(previous) >= _MAX_CNAME_CHAIN:
                continue  # x CNAME x, or a chain too long: cut off
            cname = self._cname(owner, backend.host)
            if any(_lower(rr.rdata.label.label) == _lower(target.label) for rr in previous):
                continue  # a CNAME loop
            split = split_zone(target.label, self._zone_labels)
            if split is not None:
                parsed = parse_cluster_name(split[0])
                inner = None if parsed is None else find_backends(
                    snap, parsed, split[1], pods=self._opts.pods,
                    endpoint_pod_names=self._opts.endpoint_pod_names)
                if inner:
                    records, inner_cacheable = self._addresses(snap, target, inner, qtype,
                                                               previous + [cname])
                    cacheable = cacheable and inner_cacheable
                    if records:
                        out.append(cname)
                        out.extend(records)
                continue
            out.append(cname)
            if self._upstream is not None:
                cacheable = False  # the answer now depends on the outside world
                try:
                    resolved = self._upstream(str(target), qtype)
                except Exception:
                    log.exception("kubernetes: resolving ExternalName target %s failed", target)
                    resolved = None
                out.extend(resolved or ())
        return out, cacheable

    def _srv(self, owner: DNSLabel, backends: list[Backend]) -> tuple[list[RR], list[RR]]:
        """SRV records with the addresses in additional. Weight = floor(100/N) (min 1) where N
        counts every address backend before deduplication, as CoreDNS does."""
        items = [b for b in backends if b.family != 0]  # no SRV for ExternalName
        if not items:
            return [], []
        weight = max(1, 100 // len(items))
        answer: list[RR] = []
        extra: list[RR] = []
        seen_srv: set[tuple[Labels, int]] = set()
        seen_addr: set[tuple[Labels, str]] = set()
        for backend in items:
            if backend.port < 0:
                continue
            target = _label(backend.target)
            key = _lower(backend.target)
            if (key, backend.port) not in seen_srv:
                seen_srv.add((key, backend.port))
                answer.append(RR(owner, QTYPE.SRV, ttl=self._ttl,
                                 rdata=dnslib.SRV(0, weight, backend.port, target)))
            if (key, backend.host) not in seen_addr:
                seen_addr.add((key, backend.host))
                extra.append(self._address(target, backend.host, backend.family))
        return answer, extra

    def _soa(self, snap: ZoneSnapshot, zone_part: Labels) -> RR:
        serial = int(snap.modified) & 0xFFFFFFFF
        return RR(_label(zone_part), QTYPE.SOA, ttl=min(self._ttl, 300),
                  rdata=dnslib.SOA(_label((b"ns", b"dns") + zone_part),
                                   _label((b"hostmaster",) + zone_part),
                                   (serial, 7200, 1800, 86400, self._ttl)))

    # ---------------------------------------------------------------------- reverse zones

    def _serve_reverse(self, req: Request, snap: ZoneSnapshot, labels: Labels
                       ) -> Response | None:
        ip = address_from_reverse(labels)
        if ip is None:
            return None
        qtype = req.record.questions[0].qtype
        targets = ptr_targets(snap, ip, self._zone_labels,
                              endpoint_pod_names=self._opts.endpoint_pod_names)
        soa_zone = self._reverse_soa_zone(labels, ip)
        if targets:
            if qtype != QTYPE.PTR:
                return self._nodata(req, snap, soa_zone or labels[-2:])
            owner = req.record.questions[0].qname
            answer = [RR(owner, QTYPE.PTR, ttl=self._ttl, rdata=dnslib.PTR(_label(t)))
                      for t in targets]
            return self._answer(req, answer, [])
        if soa_zone is None:
            return None  # not an address of ours: let the next plugin (forward) answer
        return self._name_error(req, snap, soa_zone)

    def _reverse_soa_zone(self, labels: Labels, ip: str) -> Labels | None:
        """The reverse zone (as asked) of the configured CIDR that holds `ip`, rounded out to
        whole labels (a /12 lives in x.10.in-addr.arpa zones), or None."""
        addr = ipaddress.ip_address(ip)
        for net in self._reverse_nets:
            if addr.version == net.version and addr in net:
                bits = 8 if addr.version == 4 else 4
                kept = max(1, -(-net.prefixlen // bits))
                return labels[len(labels) - 2 - kept:]
        return None

    # ------------------------------------------------------------------ replies and rcodes

    def _answer(self, req: Request, answer: list[RR], extra: list[RR], *,
                cacheable: bool = True) -> Response:
        reply = make_reply(req, RCODE.NOERROR, aa=True)
        reply.rr.extend(answer)
        # Additional records go before the OPT record make_reply may have added.
        reply.ar[0:0] = extra
        reply.set_header_qa()
        return Response(reply, cacheable=cacheable, plugin=self.name)

    def _answer_or_nodata(self, req: Request, snap: ZoneSnapshot, zone_part: Labels,
                          answer: list[RR], extra: list[RR], *,
                          cacheable: bool = True) -> Response:
        if not answer:
            return self._nodata(req, snap, zone_part)
        return self._answer(req, answer, extra, cacheable=cacheable)

    def _nodata(self, req: Request, snap: ZoneSnapshot, zone_part: Labels) -> Response:
        reply = make_reply(req, RCODE.NOERROR, aa=True)
        reply.auth.append(self._soa(snap, zone_part))
        reply.set_header_qa()
        return Response(reply, cacheable=True, plugin=self.name)

    def _name_error(self, req: Request, snap: ZoneSnapshot, zone_part: Labels
                    ) -> Response | None:
        if self._falls_through(req.record.questions[0].qname.label):
            return None
        if not snap.synced:
            # We cannot know yet that the name does not exist: a transient failure, never
            # cached, rather than an NXDOMAIN clients would remember.
            reply = make_reply(req, RCODE.SERVFAIL, aa=True)
            reply.auth.append(self._soa(snap, zone_part))
            reply.set_header_qa()
            return Response(reply, cacheable=False, plugin=self.name)
        reply = make_reply(req, RCODE.NXDOMAIN, aa=True)
        reply.auth.append(self._soa(snap, zone_part))
        reply.set_header_qa()
        return Response(reply, cacheable=True, plugin=self.name)

    def _falls_through(self, labels: Labels) -> bool:
        return any(split_zone(labels, zone) is not None for zone in self._fallthrough)


def _name_labels(name: str) -> DNSLabel:
    """A DNS name from text (an ExternalName value), without IDNA surprises."""
    parts = [p for p in name.strip().rstrip(".").split(".") if p]
    return DNSLabel([p.encode("ascii", "replace") for p in parts])
