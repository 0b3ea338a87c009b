"""The kubernetes plugin against a fake cluster, CoreDNS-style: tables of (qname, qtype) →
rcode and sections as zone text. Rows follow dns.md §1 (spec records), §3 (CoreDNS extras),
§4 (rcodes) and §5 (TTL/SOA)."""

from __future__ import annotations

import ipaddress

import dnslib
import pytest

from netplane.dns.kubernetes import KubernetesOptions, kubernetes_plugin

Z = "cluster.local."
SOA = f"{Z} 5 IN SOA ns.dns.{Z} hostmaster.{Z} 1499347823 7200 1800 86400 5"
T = "testns.svc.cluster.local."
NOERROR, NXDOMAIN = dnslib.RCODE.NOERROR, dnslib.RCODE.NXDOMAIN


def row(qname, qtype, rcode, answer=(), ns=(), extra=()):
    return pytest.param(qname, qtype, rcode, list(answer), list(ns), list(extra),
                        id=f"{qname} {qtype}")


def nodata(qname, qtype):
    return row(qname, qtype, NOERROR, ns=[SOA])


def nxdomain(qname, qtype):
    return row(qname, qtype, NXDOMAIN, ns=[SOA])


SVC6_REVERSE = ipaddress.ip_address("1234:abcd::1").reverse_pointer + "."
HDLS1_A = [f"hdls1.{T} 5 IN A 172.0.0.{i}" for i in (2, 3, 4, 5)]
HDLS1_SRV_ANSWER = [f"_http._tcp.hdls1.{T} 5 IN SRV 0 16 80 {t}.hdls1.{T}"
                    for t in ("172-0-0-2", "172-0-0-3", "dup-name", "5678-abcd--1",
                              "5678-abcd--2")]
HDLS1_SRV_EXTRA = [
    f"172-0-0-2.hdls1.{T} 5 IN A 172.0.0.2", f"172-0-0-3.hdls1.{T} 5 IN A 172.0.0.3",
    f"dup-name.hdls1.{T} 5 IN A 172.0.0.4", f"dup-name.hdls1.{T} 5 IN A 172.0.0.5",
    f"5678-abcd--1.hdls1.{T} 5 IN AAAA 5678:abcd::1",
    f"5678-abcd--2.hdls1.{T} 5 IN AAAA 5678:abcd::2",
]

CASES = [
    # ---- §1 spec records ------------------------------------------------------------------
    row(f"dns-version.{Z}", "TXT", NOERROR, [f'dns-version.{Z} 28800 IN TXT "1.1.0"']),
    row(f"svc1.{T}", "A", NOERROR, [f"svc1.{T} 5 IN A 10.0.0.1"]),
    nodata(f"svc1.{T}", "AAAA"),  # v4-only: NODATA, never NXDOMAIN (coredns#779)
    row(f"svc6.{T}", "AAAA", NOERROR, [f"svc6.{T} 5 IN AAAA 1234:abcd::1"]),
    nodata(f"svc6.{T}", "A"),
    row(f"svc-dual-stack.{T}", "A", NOERROR, [f"svc-dual-stack.{T} 5 IN A 10.0.0.3"]),
    row(f"svc-dual-stack.{T}", "AAAA", NOERROR, [f"svc-dual-stack.{T} 5 IN AAAA 10::3"]),
    row(f"svcempty.{T}", "A", NOERROR, [f"svcempty.{T} 5 IN A 10.0.0.4"]),
    row(f"_http._tcp.svc1.{T}", "SRV", NOERROR,
        [f"_http._tcp.svc1.{T} 5 IN SRV 0 100 80 svc1.{T}"], extra=[f"svc1.{T} 5 IN A 10.0.0.1"]),
    row(f"_http._tcp.svc6.{T}", "SRV", NOERROR,
        [f"_http._tcp.svc6.{T} 5 IN SRV 0 100 80 svc6.{T}"],
        extra=[f"svc6.{T} 5 IN AAAA 1234:abcd::1"]),
    row(f"svc-dual-stack.{T}", "SRV", NOERROR,  # 2 backends before dedup: weight 50
        [f"svc-dual-stack.{T} 5 IN SRV 0 50 80 svc-dual-stack.{T}"],
        extra=[f"svc-dual-stack.{T} 5 IN A 10.0.0.3", f"svc-dual-stack.{T} 5 IN AAAA 10::3"]),
    row(f"_dns._udp.multiport.{T}", "SRV", NOERROR,
        [f"_dns._udp.multiport.{T} 5 IN SRV 0 100 53 multiport.{T}"],
        extra=[f"multiport.{T} 5 IN A 10.0.0.5"]),
    nxdomain(f"_dns._tcp.multiport.{T}", "SRV"),  # no such (port, protocol)
    nxdomain(f"_nope._tcp.svc1.{T}", "SRV"),
    row(f"1.0.0.10.in-addr.arpa.", "PTR", NOERROR,
        [f"1.0.0.10.in-addr.arpa. 5 IN PTR svc1.{T}"]),
    row(SVC6_REVERSE, "PTR", NOERROR, [f"{SVC6_REVERSE} 5 IN PTR svc6.{T}"]),
    row(f"hdls1.{T}", "A", NOERROR, HDLS1_A),  # 172.0.0.9 is not ready
    row(f"hdls1.{T}", "AAAA", NOERROR,
        [f"hdls1.{T} 5 IN AAAA 5678:abcd::1", f"hdls1.{T} 5 IN AAAA 5678:abcd::2"]),
    nxdomain(f"hdlsnone.{T}", "A"),  # headless, no ready endpoint: NXDOMAIN
    nxdomain(f"hdlsnone.{T}", "AAAA"),
    row(f"172-0-0-2.hdls1.{T}", "A", NOERROR, [f"172-0-0-2.hdls1.{T} 5 IN A 172.0.0.2"]),
    row(f"dup-name.hdls1.{T}", "A", NOERROR,
        [f"dup-name.hdls1.{T} 5 IN A 172.0.0.4", f"dup-name.hdls1.{T} 5 IN A 172.0.0.5"]),
    row(f"5678-abcd--2.hdls1.{T}", "AAAA", NOERROR,
        [f"5678-abcd--2.hdls1.{T} 5 IN AAAA 5678:abcd::2"]),
    nxdomain(f"172-0-0-9.hdls1.{T}", "A"),  # not ready
    nxdomain(f"bogusendpoint.hdls1.{T}", "A"),
    nxdomain(f"bogusendpoint.svc0.{T}", "A"),
    row(f"_http._tcp.hdls1.{T}", "SRV", NOERROR, HDLS1_SRV_ANSWER, extra=HDLS1_SRV_EXTRA),
    row(f"2.0.0.172.in-addr.arpa.", "PTR", NOERROR,
        [f"2.0.0.172.in-addr.arpa. 5 IN PTR 172-0-0-2.hdls1.{T}"]),
    row(f"4.0.0.172.in-addr.arpa.", "PTR", NOERROR,
        [f"4.0.0.172.in-addr.arpa. 5 IN PTR dup-name.hdls1.{T}"]),
    row(f"external.{T}", "CNAME", NOERROR, [f"external.{T} 5 IN CNAME ext.interwebs.test."]),
    row(f"external-to-service.{T}", "A", NOERROR,
        [f"external-to-service.{T} 5 IN CNAME svc1.{T}", f"svc1.{T} 5 IN A 10.0.0.1"]),
    # ---- §3 CoreDNS extras ----------------------------------------------------------------
    row(Z, "SOA", NOERROR, [SOA]),
    row(Z, "NS", NOERROR, [f"{Z} 5 IN NS kube-dns.kube-system.svc.{Z}"],
        extra=[f"kube-dns.kube-system.svc.{Z} 5 IN A 10.96.0.10"]),
    nodata(Z, "A"),
    nodata(Z, "TXT"),
    row(f"ns.dns.{Z}", "A", NOERROR, [f"ns.dns.{Z} 5 IN A 10.96.0.10"]),
    nodata(f"ns.dns.{Z}", "AAAA"),
    row(f"noports.{T}", "A", NOERROR, [f"noports.{T} 5 IN A 10.0.0.6"]),
    nodata(f"noports.{T}", "SRV"),  # internal port -1: A yes, SRV no
    row(f"svc1.{T}", "SRV", NOERROR, [f"svc1.{T} 5 IN SRV 0 100 80 svc1.{T}"],
        extra=[f"svc1.{T} 5 IN A 10.0.0.1"]),
    row(f"multiport.{T}", "SRV", NOERROR,
        [f"multiport.{T} 5 IN SRV 0 33 {p} multiport.{T}" for p in (80, 443, 53)],
        extra=[f"multiport.{T} 5 IN A 10.0.0.5"]),
    row(f"hdls1.{T}", "SRV", NOERROR,
        [line.replace("_http._tcp.", "", 1) for line in HDLS1_SRV_ANSWER], extra=HDLS1_SRV_EXTRA),
    nodata(f"hdlsprtls.{T}", "SRV"),
    row(f"hdlsprtls.{T}", "A", NOERROR, [f"hdlsprtls.{T} 5 IN A 172.0.0.20"]),
    row(f"172-0-0-20.hdlsprtls.{T}", "A", NOERROR,
        [f"172-0-0-20.hdlsprtls.{T} 5 IN A 172.0.0.20"]),
    row(f"ep1a.svc1.{T}", "A", NOERROR, [f"ep1a.svc1.{T} 5 IN A 172.0.0.1"]),  # under ClusterIP
    nxdomain(f"172-0-0-1.svc1.{T}", "A"),  # the hostname is the endpoint's name
    row(f"_http._tcp.svc1.{T}", "A", NOERROR, [f"_http._tcp.svc1.{T} 5 IN A 10.0.0.1"]),
    row(f"1.1.0.172.in-addr.arpa.", "PTR", NOERROR,  # one IP in 2 slices of 1 service: 1 PTR
        [f"1.1.0.172.in-addr.arpa. 5 IN PTR 172-0-1-1.ptr-a.{T}"]),
    row(f"2.1.0.172.in-addr.arpa.", "PTR", NOERROR,  # one IP in 2 services: 2 PTRs
        [f"2.1.0.172.in-addr.arpa. 5 IN PTR 172-0-1-2.ptr-b.{T}",
         f"2.1.0.172.in-addr.arpa. 5 IN PTR c.ptr-c.{T}"]),
    row(f"external.{T}", "A", NOERROR, [f"external.{T} 5 IN CNAME ext.interwebs.test."]),
    nodata(f"external.{T}", "SRV"),
    nodata(f"external.{T}", "TXT"),
    nxdomain(f"endpoint.external.{T}", "CNAME"),
    nxdomain(f"endpoint.external.{T}", "A"),
    nodata(f"external-to-service.{T}", "AAAA"),
    nodata(f"external-loop.{T}", "A"),  # x CNAME x is cut off
    nxdomain(f"external-ip.{T}", "A"),
    nxdomain(f"*.{T}", "A"),  # wildcards were removed in CoreDNS 1.9
    nxdomain(f"any.{T}", "A"),
    row(f"172-0-2-1.web.{T}", "A", NOERROR, [f"172-0-2-1.web.{T} 5 IN A 172.0.2.1"]),
    nxdomain(f"web-7d4b9c.web.{T}", "A"),  # pod names only with endpoint_pod_names
    # ---- §4 rcodes ------------------------------------------------------------------------
    nodata(f"svc.{Z}", "A"),
    nodata(f"pod.{Z}", "A"),
    nodata(f"testns.svc.{Z}", "A"),
    nodata(f"emptyns.svc.{Z}", "A"),
    nodata(f"svc.{Z}", "NS"),
    nodata(f"testns.svc.{Z}", "NS"),
    nxdomain(f"nons.svc.{Z}", "A"),
    nxdomain(f"svc1.nons.svc.{Z}", "A"),
    nxdomain(f"svc0.{T}", "A"),
    nxdomain(f"svc0.{T}", "AAAA"),
    nxdomain(f"foo.{Z}", "NS"),
    nxdomain(f"foo.svc.{Z}", "NS"),
    nxdomain(f"svc1.testns.foo.{Z}", "A"),  # second label neither svc nor pod
    nxdomain(f"a.b._http._tcp.svc1.{T}", "A"),  # too many labels
    nodata(f"svc1.{T}", "SOA"),
    nodata(f"svc1.{T}", "TXT"),
    nodata(f"svc1.{T}", "MX"),
    nodata(f"svc1.{T}", "PTR"),
    nodata(f"svc1.{T}", "CNAME"),
    nodata(f"svc1.{T}", "HINFO"),
    nxdomain(f"svc0.{T}", "MX"),
    nxdomain(f"svc0.{T}", "TXT"),
    nxdomain(f"svc0.{T}", "SRV"),
    nxdomain(f"dns-version.{Z}", "A"),  # the name exists only for TXT (CoreDNS quirk)
    nxdomain(f"dns-version.{Z}", "AAAA"),
    nxdomain(f"1-2-3-4.testns.pod.{Z}", "A"),  # pods disabled
    nxdomain(f"testns.pod.{Z}", "A"),
]


@pytest.fixture
def handler(zone):
    return kubernetes_plugin(zone, KubernetesOptions(ns_addresses=("10.244.0.5",)))(None)


@pytest.mark.parametrize("qname,qtype,rcode,answer,ns,extra", CASES)
def test_table(handler, k8s, qname, qtype, rcode, answer, ns, extra):
    req = k8s.make_request(qname, qtype)
    resp = handler.serve(req)
    assert resp is not None, "the plugin passed on a name it owns"
    reply = resp.record
    assert reply.header.rcode == rcode
    assert reply.header.aa == 1 and reply.header.qr == 1
    assert reply.header.id == req.record.header.id
    assert reply.questions == req.record.questions
    assert k8s.section(reply.rr) == k8s.norm(answer)
    assert k8s.section(reply.auth) == k8s.norm(ns)
    assert k8s.section(reply.ar) == k8s.norm(extra)
    assert resp.cacheable is True
    assert resp.plugin == "kubernetes"
    # What the server will send must survive a round trip through the wire format.
    again = dnslib.DNSRecord.parse(reply.pack())
    assert k8s.section(again.rr) == k8s.norm(answer)


def test_cname_precedes_its_target(handler, ask):
    reply = ask(handler, f"external-to-service.{T}", "A").record
    assert [dnslib.QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "A"]


def test_axfr_and_ixfr_are_refused(handler, ask):
    for qtype in ("AXFR", "IXFR"):
        reply = ask(handler, Z, qtype).record
        assert reply.header.rcode == dnslib.RCODE.REFUSED
        assert reply.auth == [] and reply.rr == []


def test_names_outside_our_zones_are_passed_on(handler, ask):
    assert ask(handler, "example.com.", "A") is None
    assert ask(handler, "cluster.local.example.com.", "A") is None
    assert ask(handler, "9.9.9.9.in-addr.arpa.", "PTR") is None  # no such service or endpoint
    assert ask(handler, "9.0.0.172.in-addr.arpa.", "PTR") is None  # an unready endpoint's IP
    assert ask(handler, "0.0.172.in-addr.arpa.", "PTR") is None  # not a complete address


def test_other_classes_are_passed_on(handler, k8s):
    req = k8s.make_request(f"svc1.{T}", "A")
    req.record.questions[0].qclass = dnslib.CLASS.CH
    assert handler.serve(req) is None


def test_query_case_is_preserved(handler, ask, k8s):
    """handler_case_test.go: owner names as asked; the zone part of the SRV target and the SOA
    keep the query's case too."""
    resp = ask(handler, "_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", "SRV").record
    assert k8s.section(resp.rr) == [
        "_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL."]
    assert k8s.section(resp.ar) == ["svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]
    assert str(resp.questions[0].qname) == "_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL."
    neg = ask(handler, "not-a-service.testns.svc.ClUsTeR.lOcAl.", "A").record
    assert neg.header.rcode == NXDOMAIN
    assert k8s.section(neg.auth) == [
        "ClUsTeR.lOcAl. 5 IN SOA ns.dns.ClUsTeR.lOcAl. hostmaster.ClUsTeR.lOcAl. "
        "1499347823 7200 1800 86400 5"]
    a = ask(handler, "SvC1.TeStNs.SvC.cLuStEr.LoCaL.", "A").record
    assert k8s.section(a.rr) == ["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]


def test_edns_is_echoed_after_the_additional_records(handler, ask):
    reply = ask(handler, f"_http._tcp.svc1.{T}", "SRV", edns=True, do=True).record
    assert [dnslib.QTYPE[rr.rtype] for rr in reply.ar] == ["A", "OPT"]
    opt = reply.ar[-1]
    assert opt.rclass == 1232 and opt.ttl & (1 << 15)
