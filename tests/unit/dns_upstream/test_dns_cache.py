"""CachePlugin with a fake clock and a programmable next handler standing in for forward."""

from __future__ import annotations

import dnslib
import pytest

from netplane.dns.cache import CacheOptions, CachePlugin
from netplane.dns.chain import Response, make_reply
from netplane.dns.metrics import DnsMetrics
from netplane.errors import ConfigError

SOA = dnslib.SOA("ns.example.", "hostmaster.example.", (1, 7200, 1800, 86400, 10))


class Upstream:
    """The next handler: answers per `kind` and counts the queries it received."""

    name = "forward"

    def __init__(self) -> None:
        self.kind = "a"
        self.ttl = 60
        self.ip = "192.0.2.1"
        self.queries = 0

    def serve(self, req):
        self.queries += 1
        reply = make_reply(req, dnslib.RCODE.NOERROR)
        name = str(req.record.q.qname).lower()            # upstreams may change the case
        if self.kind == "a":
            reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=self.ttl, rdata=dnslib.A(self.ip)))
            reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=self.ttl + 100, rdata=dnslib.A("192.0.2.99")))
        elif self.kind in ("nxdomain", "nodata"):
            reply.header.rcode = dnslib.RCODE.NXDOMAIN if self.kind == "nxdomain" else dnslib.RCODE.NOERROR
            reply.add_auth(dnslib.RR("example.", dnslib.QTYPE.SOA, ttl=self.ttl, rdata=SOA))
        elif self.kind == "nxdomain-no-soa":
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif self.kind == "servfail":
            reply.header.rcode = dnslib.RCODE.SERVFAIL
        return Response(record=reply, plugin=self.name)


def setup(clock, metrics=None, inline=True, **options):
    upstream = Upstream()
    spawned = []
    spawn = (lambda work: work()) if inline else spawned.append
    cache = CachePlugin(CacheOptions(**options), metrics=metrics, clock=clock, spawn=spawn)(upstream)
    return cache, upstream, spawned


def ask(cache, fakes, name="www.example.com", qtype="A", **kw):
    response = cache.serve(fakes.make_request(name, qtype, **kw))
    assert response is not None and not response.cacheable
    return response.record


def ttls(record):
    return [rr.ttl for rr in (*record.rr, *record.auth)]


def test_hit_avoids_the_upstream_and_decrements_ttls(fakes, clock):
    metrics = DnsMetrics()
    cache, upstream, _ = setup(clock, metrics)
    first = ask(cache, fakes)
    assert ttls(first) == [60, 160] and upstream.queries == 1     # a miss passes the answer through
    clock.advance(30.7)
    hit = ask(cache, fakes, qid=31)
    assert upstream.queries == 1
    assert hit.header.id == 31 and hit.header.aa == 0
    assert ttls(hit) == [30, 30]                  # entry TTL = min(60, 160); whole seconds elapsed
    assert fakes.answer_ips(hit) == ["192.0.2.1", "192.0.2.99"]
    assert metrics.cache_hits.value(metrics.server, "success", ".", "") == 1
    assert metrics.cache_misses.value(metrics.server, ".", "") == 1
    clock.advance(29.3)                           # 60 s after storing: expired
    ask(cache, fakes)
    assert upstream.queries == 2


def test_hit_echoes_the_question_case_in_question_and_answer(fakes, clock):
    cache, upstream, _ = setup(clock)
    ask(cache, fakes, "www.example.com")
    hit = ask(cache, fakes, "WwW.ExAmple.CoM")
    assert upstream.queries == 1
    assert str(hit.q.qname) == "WwW.ExAmple.CoM." and str(hit.rr[0].rname) == "WwW.ExAmple.CoM."


def test_ttl_is_clamped_to_max_and_min(fakes, clock):
    cache, upstream, _ = setup(clock, success_max_ttl=30)
    upstream.ttl = 300
    ask(cache, fakes)
    clock.advance(10)
    assert ttls(ask(cache, fakes)) == [20, 20]
    clock.advance(20)
    ask(cache, fakes)
    assert upstream.queries == 2
    upstream.ttl = 0                              # even TTL 0 is kept for the 5 s minimum
    ask(cache, fakes, "zero.example.com")
    clock.advance(4)
    assert ttls(ask(cache, fakes, "zero.example.com")) == [1, 1] and upstream.queries == 3


def test_denial_is_cached_for_min_of_soa_ttl_and_minimum(fakes, clock):
    metrics = DnsMetrics()
    cache, upstream, _ = setup(clock, metrics)
    upstream.kind, upstream.ttl = "nxdomain", 60          # SOA minimum is 10
    assert ask(cache, fakes).header.rcode == dnslib.RCODE.NXDOMAIN
    clock.advance(9)
    hit = ask(cache, fakes)
    assert hit.header.rcode == dnslib.RCODE.NXDOMAIN and ttls(hit) == [1] and upstream.queries == 1
    assert metrics.cache_hits.value(metrics.server, "denial", ".", "") == 1
    clock.advance(1)
    ask(cache, fakes)
    assert upstream.queries == 2
    upstream.kind = "nodata"
    ask(cache, fakes, qtype="AAAA")
    assert ask(cache, fakes, qtype="AAAA").header.rcode == dnslib.RCODE.NOERROR and upstream.queries == 3


def test_nxdomain_without_soa_is_not_cached(fakes, clock):
    cache, upstream, _ = setup(clock)
    upstream.kind = "nxdomain-no-soa"
    ask(cache, fakes), ask(cache, fakes)
    assert upstream.queries == 2


def test_servfail_is_cached_five_seconds(fakes, clock):
    cache, upstream, _ = setup(clock)
    upstream.kind = "servfail"
    ask(cache, fakes)
    clock.advance(4)
    assert ask(cache, fakes).header.rcode == dnslib.RCODE.SERVFAIL and upstream.queries == 1
    clock.advance(1)
    upstream.kind = "a"
    assert ask(cache, fakes).header.rcode == dnslib.RCODE.NOERROR and upstream.queries == 2


def test_key_has_qtype_and_do_bit(fakes, clock):
    cache, upstream, _ = setup(clock)
    ask(cache, fakes), ask(cache, fakes, qtype="AAAA"), ask(cache, fakes, do=True)
    assert upstream.queries == 3
    hit = ask(cache, fakes, do=True)
    assert upstream.queries == 3
    opt = [rr for rr in hit.ar if rr.rtype == dnslib.QTYPE.OPT]
    assert len(opt) == 1 and opt[0].ttl & 0x8000               # EDNS echoed with DO


def test_disabled_zones_are_never_stored(fakes, clock):
    cache, upstream, _ = setup(clock, disable_success=("cluster.local.",), disable_denial=("example.com.",))
    ask(cache, fakes, "a.cluster.local"), ask(cache, fakes, "a.cluster.local")
    assert upstream.queries == 2
    upstream.kind = "nxdomain"
    ask(cache, fakes, "b.example.com"), ask(cache, fakes, "b.example.com")
    assert upstream.queries == 4
    ask(cache, fakes, "b.cluster.local"), ask(cache, fakes, "b.cluster.local")   # denial still cached there
    assert upstream.queries == 5


def test_names_outside_the_cache_zones_pass_through(fakes, clock):
    cache, upstream, _ = setup(clock, zones=("example.com.",))
    assert cache.serve(fakes.make_request("other.org")) is None
    assert upstream.queries == 0


def test_capacity_evicts_the_oldest_entry(fakes, clock):
    metrics = DnsMetrics()
    cache, upstream, _ = setup(clock, metrics, success_capacity=2)
    for name in ("a.example.com", "b.example.com", "c.example.com"):
        ask(cache, fakes, name)
    assert cache.sizes() == {"success": 2, "denial": 0}
    assert metrics.cache_evictions.value(metrics.server, "success", ".", "") == 1
    ask(cache, fakes, "c.example.com"), ask(cache, fakes, "b.example.com")
    assert upstream.queries == 3
    ask(cache, fakes, "a.example.com")
    assert upstream.queries == 4
    assert b'coredns_cache_entries{server="dns://:53",type="success",zones=".",view=""} 2' in metrics.render()


def test_prefetch_refreshes_a_popular_entry_before_it_expires(fakes, clock):
    metrics = DnsMetrics()
    cache, upstream, _ = setup(clock, metrics, prefetch_amount=2, prefetch_duration=60, prefetch_percentage=50)
    upstream.ttl = 10
    ask(cache, fakes)                                    # stored at t=0, ttl 10
    clock.advance(2)
    ask(cache, fakes)                                    # 1 hit, 8 s left: no prefetch
    assert upstream.queries == 1
    clock.advance(4)
    upstream.ip = "192.0.2.7"
    hit = ask(cache, fakes)                              # 2 hits, 4 s left <= 50 %: prefetch
    assert fakes.answer_ips(hit)[0] == "192.0.2.1"       # this answer still comes from the cache
    assert upstream.queries == 2 and cache.prefetches == 1
    assert metrics.cache_prefetches.value(metrics.server, ".", "") == 1
    clock.advance(6)                                     # the old entry would have expired now
    refreshed = ask(cache, fakes)
    assert fakes.answer_ips(refreshed)[0] == "192.0.2.7" and ttls(refreshed)[0] == 4
    assert upstream.queries == 2


def test_serve_stale_immediate_answers_stale_when_upstream_is_dead(fakes, clock):
    metrics = DnsMetrics()
    cache, upstream, _ = setup(clock, metrics, serve_stale=60)
    upstream.ttl = 10
    ask(cache, fakes)
    upstream.kind = "servfail"                           # the upstream died
    clock.advance(15)
    stale = ask(cache, fakes)
    assert stale.header.rcode == dnslib.RCODE.NOERROR and ttls(stale) == [0, 0]
    assert upstream.queries == 2 and cache.served_stale == 1  # a background refresh was tried
    assert metrics.cache_served_stale_count.value(metrics.server, ".", "") == 1
    clock.advance(30)
    assert ask(cache, fakes).header.rcode == dnslib.RCODE.NOERROR   # SERVFAIL did not replace it
    clock.advance(30)                                    # 75 s > 10 + 60: too old to serve
    assert ask(cache, fakes).header.rcode == dnslib.RCODE.SERVFAIL


def test_serve_stale_verify_prefers_a_fresh_answer(fakes, clock):
    cache, upstream, _ = setup(clock, serve_stale=60, serve_stale_mode="verify", stale_ttl=30)
    upstream.ttl = 10
    ask(cache, fakes)
    clock.advance(15)
    upstream.ip = "192.0.2.8"
    assert fakes.answer_ips(ask(cache, fakes))[0] == "192.0.2.8"
    clock.advance(15)
    upstream.kind = "servfail"
    stale = ask(cache, fakes)
    assert fakes.answer_ips(stale)[0] == "192.0.2.8" and ttls(stale) == [30, 30]


def test_background_refreshes_are_not_duplicated(fakes, clock):
    cache, upstream, spawned = setup(clock, inline=False, serve_stale=60)
    upstream.ttl = 10
    ask(cache, fakes)
    clock.advance(20)
    ask(cache, fakes), ask(cache, fakes), ask(cache, fakes)
    assert len(spawned) == 1
    spawned[0]()
    ask(cache, fakes)                                    # fresh again after the refresh
    assert upstream.queries == 2


def test_options_are_validated():
    with pytest.raises(ConfigError, match="min"):
        CacheOptions(success_min_ttl=100, success_max_ttl=30)
    with pytest.raises(ConfigError, match="capacity"):
        CacheOptions(denial_capacity=0)
    with pytest.raises(ConfigError, match="serve_stale mode"):
        CacheOptions(serve_stale_mode="later")
