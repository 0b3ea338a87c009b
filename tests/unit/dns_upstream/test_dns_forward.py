"""ForwardPlugin with in-memory upstreams: policies, failover, health, deadlines, TC, limits."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import dnslib
import pytest

from netplane.dns.forward import (
    ForwardOptions,
    ForwardPlugin,
    Upstream,
    parse_resolv_conf,
    parse_upstream,
    parse_upstream_list,
    resolve_upstreams,
)
from netplane.dns.metrics import DnsMetrics
from netplane.errors import ConfigError

U1, U2, U3 = Upstream("127.0.0.1", 5301), Upstream("127.0.0.1", 5302), Upstream("127.0.0.1", 5303)


def plugin(fakes, clock, upstreams=(U1, U2), *, metrics=None, seed=7, **options):
    fake = fakes.FakeUpstreams(clock, list(upstreams))
    fwd = ForwardPlugin(ForwardOptions(upstreams=tuple(upstreams), **options), metrics=metrics, exchanger=fake,
                        rng=random.Random(seed), clock=clock)(None)
    return fwd, fake


def ask(fwd, fakes, name="example.com", **kw):
    response = fwd.serve(fakes.make_request(name, **kw))
    assert response is not None and response.plugin == "forward" and not response.cacheable
    return response.record


# -- upstream lists --------------------------------------------------------------------------------


def test_upstream_tokens():
    assert parse_upstream("10.0.0.2") == Upstream("10.0.0.2", 53)
    assert parse_upstream("10.0.0.2:5353") == Upstream("10.0.0.2", 5353)
    assert parse_upstream("dns://10.0.0.3") == Upstream("10.0.0.3", 53)
    assert parse_upstream("[fd00::1]:54") == Upstream("fd00::1", 54)
    assert parse_upstream("fd00::1").label == "[fd00::1]:53"
    for bad in ("tls://1.1.1.1", "dns.google", "10.0.0.2:0", "10.0.0.2:x", "[fd00::1"):
        with pytest.raises(ConfigError, match="upstream"):
            parse_upstream(bad)


def test_resolv_conf_and_forward_lines():
    text = "# comment\nsearch svc.cluster.local\nnameserver 10.0.0.2\noptions ndots:5\nnameserver fd00::53 # x\n"
    assert parse_resolv_conf(text) == (Upstream("10.0.0.2"), Upstream("fd00::53"))
    assert parse_upstream_list("forward . 10.0.0.2:53 10.0.0.3\n") == (Upstream("10.0.0.2"), Upstream("10.0.0.3"))
    with pytest.raises(ConfigError, match="no upstream"):
        parse_upstream_list("search x\n")
    with pytest.raises(ConfigError, match="at most 15"):
        parse_upstream_list("\n".join(f"nameserver 10.0.0.{i}" for i in range(16)))
    with pytest.raises(ConfigError, match=r"lines.conf:2"):
        parse_upstream_list("nameserver 10.0.0.1\nnameserver bogus\n", "lines.conf")


def test_resolv_conf_path_is_read(tmp_path: Path):
    (tmp_path / "resolv.conf").write_text("nameserver 10.1.2.3\nnameserver 10.1.2.4\n")
    assert resolve_upstreams(["resolv.conf", "10.9.9.9:53"], tmp_path) == (
        Upstream("10.1.2.3"), Upstream("10.1.2.4"), Upstream("10.9.9.9"))
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_upstreams(["./missing.conf"], tmp_path)
    (tmp_path / "empty.conf").write_text("search x\n")
    with pytest.raises(ConfigError, match="no nameserver"):
        resolve_upstreams([str(tmp_path / "empty.conf")])


def test_options_are_validated():
    with pytest.raises(ConfigError, match="policy"):
        ForwardOptions(upstreams=(U1,), policy="fastest")
    with pytest.raises(ConfigError, match="timeout"):
        ForwardOptions(upstreams=(U1,), timeout=0)
    with pytest.raises(ConfigError, match="no upstream"):
        ForwardOptions(upstreams=())


# -- answers ---------------------------------------------------------------------------------------


def test_answer_keeps_client_id_and_question_case(fakes, clock):
    fwd, fake = plugin(fakes, clock, (U1,))
    reply = ask(fwd, fakes, "ExAmPle.COM", qid=777)
    assert reply.header.id == 777
    assert str(reply.q.qname) == "ExAmPle.COM."          # the upstream answered in lowercase
    assert fakes.answer_ips(reply) == ["192.0.2.1"]
    assert reply.header.rcode == dnslib.RCODE.NOERROR


def test_names_outside_from_zone_or_in_except_are_not_forwarded(fakes, clock):
    fwd, fake = plugin(fakes, clock, (U1,), from_zone="example.com.", except_zones=("internal.example.com.",))
    assert fwd.serve(fakes.make_request("other.org")) is None
    assert fwd.serve(fakes.make_request("a.internal.example.com")) is None
    assert fakes.answer_ips(ask(fwd, fakes, "www.example.com")) == ["192.0.2.1"]
    assert fake.count(U1) == 1


# -- policies --------------------------------------------------------------------------------------


def test_sequential_asks_the_first_upstream(fakes, clock):
    fwd, _ = plugin(fakes, clock, (U1, U2, U3), policy="sequential")
    assert {fakes.answer_ips(ask(fwd, fakes))[0] for _ in range(6)} == {"192.0.2.1"}


def test_round_robin_rotates(fakes, clock):
    fwd, _ = plugin(fakes, clock, (U1, U2, U3), policy="round_robin")
    got = [fakes.answer_ips(ask(fwd, fakes))[0] for _ in range(6)]
    assert got == ["192.0.2.1", "192.0.2.2", "192.0.2.3"] * 2


def test_random_spreads_over_all_upstreams(fakes, clock):
    fwd, _ = plugin(fakes, clock, (U1, U2, U3), policy="random")
    got = [fakes.answer_ips(ask(fwd, fakes))[0] for _ in range(60)]
    assert set(got) == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}
    assert max(got.count(ip) for ip in set(got)) < 40


# -- failures ----------------------------------------------------------------------------------------


def test_slow_first_upstream_fails_over_then_is_skipped(fakes, clock):
    fwd, fake = plugin(fakes, clock, policy="sequential", health_check=3600)
    fake.mode[U1] = "timeout"
    start = clock.now
    assert fakes.answer_ips(ask(fwd, fakes)) == ["192.0.2.2"]
    assert clock.now - start == pytest.approx(2.0)        # one read timeout, then U2
    assert not fwd.is_down(U1)
    ask(fwd, fakes)                                       # second failure in a row: down
    assert fwd.is_down(U1)
    before, received = clock.now, fake.count(U1)
    assert fakes.answer_ips(ask(fwd, fakes)) == ["192.0.2.2"]
    assert clock.now == before and fake.count(U1) == received   # skipped without waiting
    fwd.close()


def test_all_slow_gives_servfail_within_the_deadline(fakes, clock):
    metrics = DnsMetrics()
    fwd, fake = plugin(fakes, clock, metrics=metrics, timeout=2.0, deadline=5.0, health_check=3600)
    fake.mode[U1] = fake.mode[U2] = "timeout"
    start = clock.now
    reply = ask(fwd, fakes, qid=99)
    assert reply.header.rcode == dnslib.RCODE.SERVFAIL and reply.header.id == 99
    assert clock.now - start == pytest.approx(5.0)        # 2 + 2 + 1: bounded by the deadline
    assert metrics.forward_responses.value(U1.label, "timeout") >= 1
    fwd.close()


def test_refusing_upstreams_fail_fast_and_bounded(fakes, clock):
    fwd, fake = plugin(fakes, clock, health_check=3600)
    fake.mode[U1] = fake.mode[U2] = "refuse"
    assert ask(fwd, fakes).header.rcode == dnslib.RCODE.SERVFAIL
    assert clock.now == 1000.0                            # no waiting at all
    assert fake.count(U1) + fake.count(U2) <= 4           # each tried at most twice
    fwd.close()


def test_all_down_still_tries_one_at_random(fakes, clock):
    fwd, fake = plugin(fakes, clock, max_fails=1, health_check=3600)
    fake.mode[U1] = fake.mode[U2] = "refuse"
    ask(fwd, fakes)
    assert fwd.is_down(U1) and fwd.is_down(U2)
    fake.mode[U1] = fake.mode[U2] = "answer"             # they are back; health checks are slow
    reply = ask(fwd, fakes)
    assert reply.header.rcode == dnslib.RCODE.NOERROR and fakes.answer_ips(reply)
    assert not (fwd.is_down(U1) and fwd.is_down(U2))      # the one that answered is up again
    fwd.close()


def test_health_check_brings_an_upstream_back(fakes, wait):
    metrics = DnsMetrics()
    import time

    fwd, fake = plugin(fakes, time.monotonic, metrics=metrics, policy="sequential", health_check=0.02)
    fake.mode[U1] = "refuse"
    ask(fwd, fakes), ask(fwd, fakes)
    assert fwd.is_down(U1)
    assert wait(lambda: metrics.forward_healthcheck_failures.value(U1.label) >= 1)
    fake.mode[U1] = "answer"
    assert wait(lambda: not fwd.is_down(U1))
    assert (U1, ".", dnslib.QTYPE.NS) in fake.names       # the in-band check is `. IN NS`
    assert fakes.answer_ips(ask(fwd, fakes)) == ["192.0.2.1"]
    fwd.close()


def test_answer_for_another_question_is_a_failure(fakes, clock):
    fwd, fake = plugin(fakes, clock, policy="sequential")
    fake.mode[U1] = lambda q, proto: fakes.reply_bytes(q, ["6.6.6.6"], qname="evil.example.")
    assert fakes.answer_ips(ask(fwd, fakes)) == ["192.0.2.2"]


def test_truncated_udp_answer_is_retried_over_tcp(fakes, clock):
    fwd, fake = plugin(fakes, clock, (U1,))
    many = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60)]
    fake.mode[U1] = lambda q, proto: (fakes.reply_bytes(q, many[:1], tc=True) if proto == "udp"
                                     else fakes.reply_bytes(q, many))
    reply = ask(fwd, fakes)
    assert fakes.answer_ips(reply) == many and not reply.header.tc
    assert fake.received[(U1, "udp")] == 1 and fake.received[(U1, "tcp")] == 1


def test_tcp_clients_and_force_tcp_use_tcp(fakes, clock):
    fwd, fake = plugin(fakes, clock, (U1,))
    ask(fwd, fakes, proto="tcp")
    assert fake.received == {(U1, "tcp"): 1}
    fwd, fake = plugin(fakes, clock, (U1,), force_tcp=True)
    ask(fwd, fakes)
    assert fake.received == {(U1, "tcp"): 1}


def test_max_concurrent_refuses_the_excess_without_marking_upstreams_down(fakes, clock, wait):
    metrics = DnsMetrics()
    release = threading.Event()
    fwd, fake = plugin(fakes, clock, (U1,), metrics=metrics, max_concurrent=2)
    fake.mode[U1] = lambda q, proto: (release.wait(5), fakes.reply_bytes(q, ["192.0.2.1"]))[1]
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ask(fwd, fakes))) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait(lambda: fwd.inflight == 2)
    refused = ask(fwd, fakes, qid=5)
    assert refused.header.rcode == dnslib.RCODE.REFUSED and refused.header.id == 5
    assert metrics.forward_max_concurrent_rejects.value() == 1
    release.set()
    for t in threads:
        t.join(5)
    assert [r.header.rcode for r in results] == [dnslib.RCODE.NOERROR] * 2
    assert not fwd.is_down(U1) and fwd.inflight == 0


def test_disabled_forwarder_answers_servfail_without_asking(fakes, clock):
    fwd, fake = plugin(fakes, clock, (U1,))
    fwd.disable("loop detected")
    assert ask(fwd, fakes).header.rcode == dnslib.RCODE.SERVFAIL
    assert fake.count(U1) == 0


def test_metrics_count_requests_and_rcodes(fakes, clock):
    metrics = DnsMetrics()
    fwd, _ = plugin(fakes, clock, (U1,), metrics=metrics)
    ask(fwd, fakes), ask(fwd, fakes)
    assert metrics.forward_requests.value(U1.label) == 2
    assert metrics.forward_responses.value(U1.label, "NOERROR") == 2
    assert b'coredns_forward_requests_total{to="127.0.0.1:5301"} 2' in metrics.render()
