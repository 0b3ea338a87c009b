"""Plugin options (pods, endpoint_pod_names, ttl, fallthrough, reverse CIDRs, NS addresses,
upstream), the unsynced state, and cluster changes showing up in the very next answer."""

from __future__ import annotations

import ipaddress

import dnslib
import pytest

from netplane.dns.chain import build_chain
from netplane.dns.kubernetes import KubernetesOptions, kubernetes_plugin
from netplane.dns.zone import ClusterZone
from netplane.errors import ConfigError

Z = "cluster.local."
T = "testns.svc.cluster.local."
SOA = f"{Z} 5 IN SOA ns.dns.{Z} hostmaster.{Z} 1499347823 7200 1800 86400 5"
RC = dnslib.RCODE


def plugin(zone, **options):
    return kubernetes_plugin(zone, KubernetesOptions(**options))(None)


def check(resp, k8s, rcode, answer=(), ns=(), extra=()):
    assert resp is not None
    assert resp.record.header.rcode == rcode
    assert k8s.section(resp.record.rr) == k8s.norm(list(answer))
    assert k8s.section(resp.record.auth) == k8s.norm(list(ns))
    assert k8s.section(resp.record.ar) == k8s.norm(list(extra))


# ------------------------------------------------------------------------------------- pods

@pytest.mark.parametrize("qname,qtype,rcode,answer", [
    (f"1-2-3-4.testns.pod.{Z}", "A", RC.NOERROR, [f"1-2-3-4.testns.pod.{Z} 5 IN A 1.2.3.4"]),
    (f"1-2-3-4.testns.pod.{Z}", "AAAA", RC.NOERROR, []),
    (f"fd00--1.testns.pod.{Z}", "AAAA", RC.NOERROR, [f"fd00--1.testns.pod.{Z} 5 IN AAAA fd00::1"]),
    (f"1-2-3-4.nons.pod.{Z}", "A", RC.NXDOMAIN, []),  # insecure still needs the namespace
    (f"not-an-ip.testns.pod.{Z}", "A", RC.NXDOMAIN, []),
    (f"1-2-3-256.testns.pod.{Z}", "A", RC.NXDOMAIN, []),
    (f"x.1-2-3-4.testns.pod.{Z}", "A", RC.NXDOMAIN, []),
    (f"testns.pod.{Z}", "A", RC.NOERROR, []),
    (f"nons.pod.{Z}", "A", RC.NXDOMAIN, []),
])
def test_pods_insecure(zone, ask, k8s, qname, qtype, rcode, answer):
    resp = ask(plugin(zone, pods="insecure"), qname, qtype)
    check(resp, k8s, rcode, answer, [] if answer else [SOA])


# ------------------------------------------------------------------------ endpoint_pod_names

def test_endpoint_pod_names(zone, ask, k8s):
    h = plugin(zone, endpoint_pod_names=True)
    check(ask(h, f"web-7d4b9c.web.{T}", "A"), k8s, RC.NOERROR,
          [f"web-7d4b9c.web.{T} 5 IN A 172.0.2.1"])
    # A pod name of 64 characters cannot be a label: the dashed IP is used instead.
    check(ask(h, f"172-0-2-2.web.{T}", "A"), k8s, RC.NOERROR,
          [f"172-0-2-2.web.{T} 5 IN A 172.0.2.2"])
    # An explicit hostname still wins over the pod name.
    check(ask(h, f"named.web.{T}", "A"), k8s, RC.NOERROR, [f"named.web.{T} 5 IN A 172.0.2.3"])
    check(ask(h, f"web-x.web.{T}", "A"), k8s, RC.NXDOMAIN, ns=[SOA])
    check(ask(h, f"_http._tcp.web.{T}", "SRV"), k8s, RC.NOERROR,
          [f"_http._tcp.web.{T} 5 IN SRV 0 33 80 {n}.web.{T}"
           for n in ("web-7d4b9c", "172-0-2-2", "named")],
          extra=[f"web-7d4b9c.web.{T} 5 IN A 172.0.2.1", f"172-0-2-2.web.{T} 5 IN A 172.0.2.2",
                 f"named.web.{T} 5 IN A 172.0.2.3"])
    check(ask(h, "1.2.0.172.in-addr.arpa.", "PTR"), k8s, RC.NOERROR,
          [f"1.2.0.172.in-addr.arpa. 5 IN PTR web-7d4b9c.web.{T}"])


# -------------------------------------------------------------------------------- TTL / SOA

def test_ttl_option_applies_to_records_and_soa(zone, ask, k8s):
    h = plugin(zone, ttl=30)
    check(ask(h, f"svc1.{T}", "A"), k8s, RC.NOERROR, [f"svc1.{T} 30 IN A 10.0.0.1"])
    check(ask(h, f"svc1.{T}", "AAAA"), k8s, RC.NOERROR,
          ns=[f"{Z} 30 IN SOA ns.dns.{Z} hostmaster.{Z} 1499347823 7200 1800 86400 30"])
    # dns-version keeps its own TTL.
    check(ask(h, f"dns-version.{Z}", "TXT"), k8s, RC.NOERROR,
          [f'dns-version.{Z} 28800 IN TXT "1.1.0"'])


def test_soa_ttl_is_capped_at_300_but_minimum_is_the_ttl(zone, ask, k8s):
    h = plugin(zone, ttl=3600)
    check(ask(h, Z, "SOA"), k8s, RC.NOERROR,
          [f"{Z} 300 IN SOA ns.dns.{Z} hostmaster.{Z} 1499347823 7200 1800 86400 3600"])


def test_soa_serial_is_the_time_of_the_last_change(k8s, ask):
    now = [1000.0]
    zone = ClusterZone(clock=lambda: now[0])
    zone.on_namespace(None, k8s.namespace("testns"))
    zone.mark_synced()
    h = plugin(zone)
    serial = lambda: ask(h, Z, "SOA").record.rr[0].rdata.times[0]  # noqa: E731
    assert serial() == 1000
    now[0] = 2000.5
    zone.on_service(None, k8s.service("testns", "late", ["10.0.9.9"], k8s.HTTP))
    assert serial() == 2000
    now[0] = 3000.0
    zone.on_service(None, k8s.service("testns", "late", ["10.0.9.9"], k8s.HTTP))  # no change
    assert serial() == 2000


@pytest.mark.parametrize("options", [
    {"ttl": -1}, {"ttl": 3601}, {"pods": "verified"}, {"zone": "."},
    {"reverse_cidrs": ("10.0.0.0/33",)}, {"ns_addresses": ("not-an-ip",)},
])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="kubernetes"):
        KubernetesOptions(**options)


# ------------------------------------------------------------------------------ fallthrough

def test_fallthrough_passes_nxdomain_on_but_not_answers(zone, ask, k8s):
    h = plugin(zone, fallthrough=("cluster.local",))
    assert ask(h, f"svc0.{T}", "A") is None
    check(ask(h, f"svc1.{T}", "A"), k8s, RC.NOERROR, [f"svc1.{T} 5 IN A 10.0.0.1"])
    check(ask(h, f"svc1.{T}", "AAAA"), k8s, RC.NOERROR, ns=[SOA])  # NODATA is not passed on
    other = plugin(zone, fallthrough=("in-addr.arpa",))
    check(ask(other, f"svc0.{T}", "A"), k8s, RC.NXDOMAIN, ns=[SOA])
    everything = plugin(zone, fallthrough=(".",))
    assert ask(everything, f"svc0.{T}", "A") is None


def test_fallthrough_reaches_the_next_plugin_in_a_chain(zone, k8s):
    class Next:
        name = "forward"

        def serve(self, req):
            from netplane.dns.chain import Response, make_reply
            return Response(make_reply(req, RC.NOERROR), plugin=self.name)

    chain = build_chain([kubernetes_plugin(zone, KubernetesOptions(fallthrough=(".",))),
                         lambda nxt: Next()])
    assert chain.serve(k8s.make_request(f"svc0.{T}", "A")).plugin == "forward"
    assert chain.serve(k8s.make_request(f"svc1.{T}", "A")).plugin == "kubernetes"


# ------------------------------------------------------------------------------- not synced

def test_unsynced_nxdomain_becomes_uncacheable_servfail(k8s, ask):
    zone = k8s.populate(ClusterZone(clock=lambda: k8s.SERIAL))
    h = plugin(zone)
    resp = ask(h, f"svc0.{T}", "A")
    check(resp, k8s, RC.SERVFAIL, ns=[SOA])
    assert resp.cacheable is False
    # What is already known is served.
    check(ask(h, f"svc1.{T}", "A"), k8s, RC.NOERROR, [f"svc1.{T} 5 IN A 10.0.0.1"])
    generation = zone.generation
    zone.mark_synced()
    assert zone.generation > generation
    resp = ask(h, f"svc0.{T}", "A")
    check(resp, k8s, RC.NXDOMAIN, ns=[SOA])
    assert resp.cacheable is True


# ---------------------------------------------------------------------------- reverse zones

def test_reverse_cidrs_make_unknown_addresses_nxdomain(zone, ask, k8s):
    h = plugin(zone, reverse_cidrs=("10.0.0.0/16", "172.0.0.0/12", "fd00::/48"))
    ip4_soa = "0.10.in-addr.arpa. 5 IN SOA ns.dns.0.10.in-addr.arpa. hostmaster.0.10.in-addr.arpa. "
    check(ask(h, "99.9.0.10.in-addr.arpa.", "PTR"), k8s, RC.NXDOMAIN,
          ns=[ip4_soa + "1499347823 7200 1800 86400 5"])
    # A /12 is served as whole-label zones: 172.0.0.0/12 answers from 0.172.in-addr.arpa.
    resp = ask(h, "9.0.0.172.in-addr.arpa.", "PTR")
    assert resp.record.header.rcode == RC.NXDOMAIN
    assert str(resp.record.auth[0].rname) == "0.172.in-addr.arpa."
    v6 = ipaddress.ip_address("fd00::1").reverse_pointer + "."
    resp = ask(h, v6, "PTR")
    assert resp.record.header.rcode == RC.NXDOMAIN
    assert str(resp.record.auth[0].rname) == "0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."  # /48: 12 nibbles
    assert ask(h, "1.1.1.1.in-addr.arpa.", "PTR") is None  # outside: the forwarder's
    # A known address answers other types with NODATA.
    check(ask(h, "1.0.0.10.in-addr.arpa.", "A"), k8s, RC.NOERROR,
          ns=[ip4_soa + "1499347823 7200 1800 86400 5"])


def test_reverse_fallthrough_wins_over_cidrs(zone, ask):
    h = plugin(zone, reverse_cidrs=("10.0.0.0/16",), fallthrough=("in-addr.arpa", "ip6.arpa"))
    assert ask(h, "99.9.0.10.in-addr.arpa.", "PTR") is None
    assert ask(h, "1.0.0.10.in-addr.arpa.", "PTR").record.rr  # known addresses still answered


# --------------------------------------------------------------------------------- NS hosts

def test_ns_without_a_dns_service_uses_ns_dns_and_own_addresses(zone, ask, k8s):
    h = plugin(zone, ns_addresses=("192.0.2.53", "2001:db8::53"))
    check(ask(h, Z, "NS"), k8s, RC.NOERROR, [f"{Z} 5 IN NS ns.dns.{Z}"],
          extra=[f"ns.dns.{Z} 5 IN A 192.0.2.53", f"ns.dns.{Z} 5 IN AAAA 2001:db8::53"])
    check(ask(h, f"ns.dns.{Z}", "AAAA"), k8s, RC.NOERROR, [f"ns.dns.{Z} 5 IN AAAA 2001:db8::53"])
    bare = plugin(zone)
    check(ask(bare, Z, "NS"), k8s, RC.NOERROR, [f"{Z} 5 IN NS ns.dns.{Z}"])
    check(ask(bare, f"ns.dns.{Z}", "A"), k8s, RC.NOERROR, ns=[SOA])


# --------------------------------------------------------------------------------- upstream

def test_upstream_resolves_external_targets_and_makes_the_answer_uncacheable(zone, ask, k8s):
    asked = []

    def upstream(name, qtype):
        asked.append((name, qtype))
        return [dnslib.RR("ext.interwebs.test.", dnslib.QTYPE.A, ttl=60,
                          rdata=dnslib.A("1.2.3.4"))]

    h = kubernetes_plugin(zone, KubernetesOptions(), upstream=upstream)(None)
    resp = ask(h, f"external.{T}", "A")
    check(resp, k8s, RC.NOERROR, [f"external.{T} 5 IN CNAME ext.interwebs.test.",
                                  "ext.interwebs.test. 60 IN A 1.2.3.4"])
    assert [dnslib.QTYPE[rr.rtype] for rr in resp.record.rr] == ["CNAME", "A"]
    assert resp.cacheable is False
    assert asked == [("ext.interwebs.test.", dnslib.QTYPE.A)]
    # In-zone targets never go upstream.
    ask(h, f"external-to-service.{T}", "A")
    assert len(asked) == 1


def test_failing_upstream_still_gives_the_cname(zone, ask, k8s):
    def upstream(name, qtype):
        raise OSError("upstream down")

    h = kubernetes_plugin(zone, KubernetesOptions(), upstream=upstream)(None)
    check(ask(h, f"external.{T}", "A"), k8s, RC.NOERROR,
          [f"external.{T} 5 IN CNAME ext.interwebs.test."])


# ----------------------------------------------------------------- changes are visible now

def test_create_scale_delete_visible_in_the_next_answer(zone, ask, k8s):
    h = plugin(zone)
    name = f"new.{T}"
    check(ask(h, name, "A"), k8s, RC.NXDOMAIN, ns=[SOA])
    zone.on_service(None, k8s.service("testns", "new", ["None"], k8s.HTTP))
    check(ask(h, name, "A"), k8s, RC.NXDOMAIN, ns=[SOA])  # headless, no endpoints yet
    one = k8s.endpoint_slice("testns", "new-a", "new", [k8s.endpoint("172.9.0.1")], k8s.HTTP)
    zone.on_endpoint_slice(None, one)
    check(ask(h, name, "A"), k8s, RC.NOERROR, [f"{name} 5 IN A 172.9.0.1"])
    three = k8s.endpoint_slice("testns", "new-a", "new",
                               [k8s.endpoint(f"172.9.0.{i}") for i in (1, 2, 3)], k8s.HTTP)
    zone.on_endpoint_slice(one, three)
    check(ask(h, name, "A"), k8s, RC.NOERROR, [f"{name} 5 IN A 172.9.0.{i}" for i in (1, 2, 3)])
    assert ask(h, "3.0.9.172.in-addr.arpa.", "PTR").record.rr
    zone.on_endpoint_slice(three, one)  # scale down
    check(ask(h, name, "A"), k8s, RC.NOERROR, [f"{name} 5 IN A 172.9.0.1"])
    assert ask(h, "3.0.9.172.in-addr.arpa.", "PTR") is None
    zone.on_service(k8s.service("testns", "new", ["None"], k8s.HTTP), None)
    check(ask(h, name, "A"), k8s, RC.NXDOMAIN, ns=[SOA])
    assert ask(h, "1.0.9.172.in-addr.arpa.", "PTR") is None


def test_namespace_deletion_hides_its_services(zone, ask, k8s):
    h = plugin(zone)
    zone.on_namespace(k8s.namespace("testns"), None)
    check(ask(h, f"svc1.{T}", "A"), k8s, RC.NXDOMAIN, ns=[SOA])
    check(ask(h, f"testns.svc.{Z}", "A"), k8s, RC.NXDOMAIN, ns=[SOA])
