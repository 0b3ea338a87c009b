"""DnsServer on 127.0.0.1 with a fake chain and a fake zone generation: fast path, slow path
decisions, truncation, TCP framing, metrics folding."""

from __future__ import annotations

import socket
import struct
import threading
import time

import dnslib
import pytest

from netplane.dns.chain import Response, build_chain, make_reply
from netplane.dns.metrics import DnsMetrics
from netplane.dns.server import DnsServer, ServerOptions, parse_listen
from netplane.errors import ConfigError


class FakeZone:
    def __init__(self) -> None:
        self.generation = 1


class ClusterHandler:
    """Answers *.cluster.local with `count` A records of `address`; counts calls."""

    name = "kubernetes"

    def __init__(self, address: str = "10.0.0.1", count: int = 1) -> None:
        self.address, self.count, self.calls = address, count, 0

    def serve(self, req):
        if not str(req.record.q.qname).lower().endswith("cluster.local."):
            return None
        self.calls += 1
        reply = make_reply(req, 0, aa=True)
        for i in range(self.count):
            ip = self.address if self.count == 1 else f"10.9.{i // 250}.{i % 250 + 1}"
            reply.add_answer(dnslib.RR(req.record.q.qname, rdata=dnslib.A(ip), ttl=5))
        return Response(reply, cacheable=True, plugin="kubernetes")


class SlowUpstream:
    """Everything else: waits on an event (an upstream that takes its time), then NXDOMAIN."""

    name = "forward"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0

    def serve(self, req):
        self.started += 1
        self.release.wait(5)
        return Response(make_reply(req, dnslib.RCODE.NXDOMAIN), plugin="forward")


@pytest.fixture
def parts():
    zone, metrics = FakeZone(), DnsMetrics()
    cluster, upstream = ClusterHandler(), SlowUpstream()
    chain = build_chain([lambda nxt: cluster, lambda nxt: upstream])
    server = DnsServer(chain, zone, metrics, ServerOptions(host="127.0.0.1", port=0, pool_threads=2, pool_queue=2))
    server.start()
    yield server, zone, metrics, cluster, upstream
    upstream.release.set()
    server.stop()


def exchange(server, data: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, server.address)
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def ask(server, name: str, qtype: str = "A", *, qid: int = 1234, edns: int | None = None) -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    data = exchange(server, q.pack())
    assert data is not None, f"no answer for {name}"
    return dnslib.DNSRecord.parse(data)


def test_parse_listen():
    assert parse_listen(":53") == ("0.0.0.0", 53)
    assert parse_listen("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_listen("[::1]:53") == ("::1", 53)
    assert parse_listen("10.0.0.1") == ("10.0.0.1", 53)
    with pytest.raises(ConfigError, match="x53"):
        parse_listen("1.2.3.4:x53")


def test_fast_path_answers_with_new_id_and_the_query_case(parts):
    server, _zone, _metrics, cluster, _ = parts
    first = ask(server, "WeB.default.svc.cluster.local", qid=1)
    second = ask(server, "WeB.default.svc.cluster.local", qid=2)
    assert cluster.calls == 1  # the second came from the wire cache
    assert (first.header.id, second.header.id) == (1, 2)
    for r in (first, second):
        assert str(r.q.qname) == "WeB.default.svc.cluster.local."
        assert str(r.rr[0].rname) == "WeB.default.svc.cluster.local."
        assert str(r.rr[0].rdata) == "10.0.0.1"
    other_case = ask(server, "web.DEFAULT.svc.cluster.local", qid=3)
    assert str(other_case.rr[0].rname) == "web.DEFAULT.svc.cluster.local."
    assert cluster.calls == 2


def test_generation_change_is_visible_to_the_next_query(parts):
    server, zone, _metrics, cluster, _ = parts
    assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.0.0.1"
    cluster.address = "10.0.0.2"
    assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.0.0.1"  # cached
    zone.generation += 1
    assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.0.0.2"


def test_set_handler_drops_cached_answers(parts):
    server, _zone, _metrics, _cluster, _ = parts
    ask(server, "web.default.svc.cluster.local")
    server.set_handler(build_chain([lambda nxt: ClusterHandler("10.7.7.7")]))
    assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.7.7.7"


def test_edns_is_echoed_and_part_of_the_cache_key(parts):
    server, *_ = parts
    plain = ask(server, "web.default.svc.cluster.local")
    edns = ask(server, "web.default.svc.cluster.local", edns=1232)
    assert [rr.rtype for rr in plain.ar] == []
    assert [rr.rtype for rr in edns.ar] == [dnslib.QTYPE.OPT]


def test_udp_truncation_and_full_answer_over_tcp(parts):
    server, *_ = parts
    server.set_handler(build_chain([lambda nxt: ClusterHandler(count=100)]))
    for _ in range(2):  # slow path, then fast path: both truncated
        r = ask(server, "headless.default.svc.cluster.local")
        assert r.header.tc == 1 and r.rr == [] and str(r.q.qname) == "headless.default.svc.cluster.local."
    bigger = ask(server, "headless.default.svc.cluster.local", edns=4096)
    assert bigger.header.tc == 0 and len(bigger.rr) == 100
    q = dnslib.DNSRecord.question("headless.default.svc.cluster.local").pack()
    with socket.create_connection(server.address, timeout=2) as c:
        c.sendall(struct.pack("!H", len(q)) + q + struct.pack("!H", len(q)) + q)  # two queries, one write
        for _ in range(2):
            (n,) = struct.unpack("!H", recv_exact(c, 2))
            r = dnslib.DNSRecord.parse(recv_exact(c, n))
            assert r.header.tc == 0 and len(r.rr) == 100


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def test_malformed_queries(parts):
    server, _zone, _metrics, cluster, _ = parts
    good = dnslib.DNSRecord.question("web.default.svc.cluster.local").pack()
    # A header that promises one question, followed by a label running past the end.
    formerr = exchange(server, good[:12] + b"\x3fabc")
    assert formerr is not None
    r = dnslib.DNSRecord.parse(formerr)
    assert r.header.rcode == dnslib.RCODE.FORMERR and r.header.id == struct.unpack("!H", good[:2])[0]
    # Two questions: FORMERR without parsing.
    two = good[:4] + b"\x00\x02" + good[6:]
    assert dnslib.DNSRecord.parse(exchange(server, two)).header.rcode == dnslib.RCODE.FORMERR
    # Opcode STATUS (2): NOTIMP.
    status = good[:2] + struct.pack("!H", 2 << 11) + good[4:]
    assert dnslib.DNSRecord.parse(exchange(server, status)).header.rcode == dnslib.RCODE.NOTIMP
    # A response (QR=1) and a runt: silence.
    assert exchange(server, good[:2] + struct.pack("!H", 0x8000) + good[4:], timeout=0.3) is None
    assert exchange(server, good[:5], timeout=0.3) is None
    # Still serving.
    assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.0.0.1"
    assert cluster.calls == 1


def test_remote_names_do_not_block_cluster_names(parts):
    server, _zone, _metrics, _cluster, upstream = parts
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for i in range(2):
            q = dnslib.DNSRecord.question(f"slow{i}.example.com")
            q.header.id = 100 + i
            s.sendto(q.pack(), server.address)
        deadline = time.monotonic() + 2
        while upstream.started < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.started == 2  # both pool threads are now stuck upstream
        t0 = time.monotonic()
        assert str(ask(server, "web.default.svc.cluster.local").rr[0].rdata) == "10.0.0.1"
        assert time.monotonic() - t0 < 1.0
        upstream.release.set()
        ids = sorted(dnslib.DNSRecord.parse(s.recv(512)).header.id for _ in range(2))
        assert ids == [100, 101]


def test_full_pool_answers_servfail_at_once(parts):
    server, _zone, _metrics, _cluster, upstream = parts
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for i in range(2):  # both threads busy…
            s.sendto(dnslib.DNSRecord.question(f"slow{i}.example.com").pack(), server.address)
        deadline = time.monotonic() + 2
        while upstream.started < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(2, 4):  # … and the queue (2) full
            s.sendto(dnslib.DNSRecord.question(f"slow{i}.example.com").pack(), server.address)
        time.sleep(0.1)
        q = dnslib.DNSRecord.question("one-too-many.example.com")
        s.sendto(q.pack(), server.address)
        r = dnslib.DNSRecord.parse(s.recv(512))
        assert r.header.id == q.header.id and r.header.rcode == dnslib.RCODE.SERVFAIL
        assert str(r.q.qname) == "one-too-many.example.com."
        upstream.release.set()


def test_metrics_count_fast_and_slow_answers_exactly(parts):
    server, _zone, metrics, _cluster, _ = parts
    for i in range(5):
        ask(server, "web.default.svc.cluster.local", qid=i)
    ask(server, "web.default.svc.cluster.local", "AAAA")
    exchange(server, b"\x00\x01" + b"\x00" * 10 + b"\xff")  # header ok, body garbage → FORMERR
    text = metrics.render().decode()
    assert 'coredns_dns_requests_total{server="dns://:53",zone=".",view="",proto="udp",family="1",type="A"} 5' in text
    assert 'type="AAAA"} 1' in text
    assert 'rcode="NOERROR",plugin="kubernetes"} 6' in text
    assert 'rcode="FORMERR",plugin=""} 1' in text
    assert 'coredns_dns_request_duration_seconds_count{server="dns://:53",zone=".",view="",type="A"} 5' in text
    # Scraping again does not count the same answers twice.
    assert 'rcode="NOERROR",plugin="kubernetes"} 6' in metrics.render().decode()


def test_tcp_connection_limit_and_idle_timeout():
    zone, metrics = FakeZone(), DnsMetrics()
    server = DnsServer(build_chain([lambda nxt: ClusterHandler()]), zone, metrics,
                       ServerOptions(host="127.0.0.1", port=0, pool_threads=1, tcp_max_connections=1,
                                     tcp_idle_timeout=0.5))
    server.start()
    try:
        first = socket.create_connection(server.address, timeout=2)
        time.sleep(0.1)
        second = socket.create_connection(server.address, timeout=2)
        assert second.recv(10) == b""  # closed at once: over the limit
        second.close()
        assert first.recv(10) == b""  # closed by the idle timeout
        first.close()
        time.sleep(0.1)
        with socket.create_connection(server.address, timeout=2) as third:  # the slot is free again
            q = dnslib.DNSRecord.question("web.default.svc.cluster.local").pack()
            third.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", recv_exact(third, 2))
            assert str(dnslib.DNSRecord.parse(recv_exact(third, n)).rr[0].rdata) == "10.0.0.1"
    finally:
        server.stop()


def test_name_over_255_bytes_gets_formerr(parts):
    server, _zone, metrics, cluster, _ = parts
    body = (b"\x3f" + b"x" * 63) * 4 + b"\x00" + struct.pack("!HH", 1, 1)  # 257 bytes on the wire
    data = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0) + body
    r = dnslib.DNSRecord.parse(exchange(server, data))
    assert r.header.id == 77 and r.header.rcode == dnslib.RCODE.FORMERR
    assert metrics.panics.value() == 0 and cluster.calls == 0


def test_unknown_edns_version_gets_badvers(parts):
    server, _zone, _metrics, cluster, _upstream = parts
    query = dnslib.DNSRecord.question("web.default.svc.cluster.local", "A")
    query.add_ar(dnslib.EDNS0(version=1, udp_len=1232))
    reply = dnslib.DNSRecord.parse(exchange(server, query.pack()))
    opt = [rr for rr in reply.ar if rr.rtype == dnslib.QTYPE.OPT]
    # BADVERS = 16: header rcode 0, extended rcode 1 in the OPT TTL's top byte, version 0.
    assert reply.header.rcode == 0 and len(opt) == 1 and opt[0].ttl >> 24 == 1
    assert (opt[0].ttl >> 16) & 0xFF == 0 and not reply.rr and cluster.calls == 0
    ok = dnslib.DNSRecord.question("web.default.svc.cluster.local", "A")
    ok.add_ar(dnslib.EDNS0(udp_len=1232))
    assert dnslib.DNSRecord.parse(exchange(server, ok.pack())).a.rdata is not None
