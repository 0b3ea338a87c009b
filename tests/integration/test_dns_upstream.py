"""forward + cache + loop over real sockets, against test upstreams started here on 127.0.0.1
(never a real resolver): an answering one (UDP and TCP, counting queries), a slow one that never
answers, a down port, one that truncates over UDP, and a loop back into ourselves."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import dnslib
import pytest

from netplane.dns.cache import CacheOptions, CachePlugin
from netplane.dns.chain import Request, build_chain
from netplane.dns.config import parse_config
from netplane.dns.forward import ForwardOptions, ForwardPlugin, Upstream


class TestUpstream:
    """A tiny DNS server on 127.0.0.1 (UDP and TCP on one port). mode: "answer" (one A record
    per entry of `ips`, TTL `ttl`), "slow" (reads and never answers), "tc" (over UDP: TC set and
    no records; over TCP: the full answer)."""

    __test__ = False

    def __init__(self, mode: str = "answer", ips: tuple[str, ...] = ("192.0.2.10",), ttl: int = 60,
                 port: int = 0) -> None:
        self.mode, self.ips, self.ttl = mode, ips, ttl
        self.queries = {"udp": 0, "tcp": 0}
        self.udp, self.tcp = self._bind_pair(port)
        self.port = self.udp.getsockname()[1]
        self.tcp.listen(16)
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _bind_pair(port: int) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP on the same port. With port 0 the kernel picks a free UDP port, which
        another process may hold for TCP (seen in CI): then try another one."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
                return udp, tcp
            except OSError:
                udp.close()
                tcp.close()
                if port:
                    raise
        raise OSError("no port free for both UDP and TCP on 127.0.0.1")

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    def answer(self, data: bytes, proto: str) -> bytes | None:
        self.queries[proto] += 1
        if self.mode == "slow":
            return None
        query = dnslib.DNSRecord.parse(data)
        reply = query.reply()
        if self.mode == "tc" and proto == "udp":
            reply.header.tc = 1
            return reply.pack()
        for ip in self.ips:
            reply.add_answer(dnslib.RR(query.q.qname, dnslib.QTYPE.A, ttl=self.ttl, rdata=dnslib.A(ip)))
        return reply.pack()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            out = self.answer(data, "udp")
            if out is not None:
                self.udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    (n,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                    out = self.answer(conn.recv(n, socket.MSG_WAITALL), "tcp")
                    if out is not None:
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except (OSError, struct.error):
                    pass

    def stop(self) -> None:
        """Close both sockets: the port is then down (UDP gets ICMP port unreachable)."""
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def upstreams() -> Iterator[Callable[..., TestUpstream]]:
    started: list[TestUpstream] = []

    def start(*args, **kwargs) -> TestUpstream:
        started.append(TestUpstream(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def down_port() -> Upstream:
    """A 127.0.0.1 port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return Upstream("127.0.0.1", s.getsockname()[1])


@pytest.fixture
def closing() -> Iterator[Callable]:
    plugins: list = []
    yield plugins.append
    for p in plugins:
        p.close()


def forwarder(closing, *upstreams: Upstream, **options) -> ForwardPlugin:
    fwd = ForwardPlugin(ForwardOptions(upstreams=upstreams, **options))(None)
    closing(fwd)
    return fwd


def query(handler, name: str = "www.example.com", qtype: str = "A", proto: str = "udp", qid: int = 1234):
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.id = qid
    req = Request(record=record, proto=proto, client=("127.0.0.1", 50000), max_size=512, raw=record.pack())
    return handler.serve(req).record


def ips(record) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


def test_forwarding_works_and_keeps_id_and_case(upstreams, closing):
    up = upstreams()
    fwd = forwarder(closing, up.upstream)
    reply = query(fwd, "WWW.Example.com", qid=4321)
    assert reply.header.id == 4321 and str(reply.q.qname) == "WWW.Example.com."
    assert ips(reply) == ["192.0.2.10"] and reply.header.rcode == dnslib.RCODE.NOERROR
    assert ips(query(fwd, proto="tcp")) == ["192.0.2.10"]
    assert up.queries == {"udp": 1, "tcp": 1}


def test_down_upstream_gives_servfail_at_once(closing, down_port):
    fwd = forwarder(closing, down_port)
    start = time.monotonic()
    assert query(fwd).header.rcode == dnslib.RCODE.SERVFAIL
    assert time.monotonic() - start < 0.5


def test_slow_upstream_gives_servfail_within_the_bound(upstreams, closing):
    slow1, slow2 = upstreams("slow"), upstreams("slow")
    fwd = forwarder(closing, slow1.upstream, slow2.upstream, timeout=0.4, deadline=1.0, health_check=60)
    start = time.monotonic()
    reply = query(fwd, qid=77)
    elapsed = time.monotonic() - start
    assert reply.header.rcode == dnslib.RCODE.SERVFAIL and reply.header.id == 77
    assert 0.9 <= elapsed < 1.4, elapsed                       # 0.4 + 0.4 + 0.2: cut at the deadline
    assert slow1.queries["udp"] + slow2.queries["udp"] == 3


def test_a_healthy_second_upstream_takes_over(upstreams, closing):
    slow, good = upstreams("slow"), upstreams()
    fwd = forwarder(closing, slow.upstream, good.upstream, policy="sequential", timeout=0.3, health_check=60)
    start = time.monotonic()
    assert ips(query(fwd)) == ["192.0.2.10"]                    # after one read timeout
    assert 0.25 <= time.monotonic() - start < 1.0
    query(fwd)                                                 # second failure: slow is down
    assert fwd.is_down(slow.upstream)
    start = time.monotonic()
    assert ips(query(fwd)) == ["192.0.2.10"]
    assert time.monotonic() - start < 0.2                      # no more waiting for it
    assert slow.queries["udp"] == 2 and good.queries["udp"] == 3


def test_a_dead_upstream_comes_back_through_health_checks(upstreams, closing):
    good, other = upstreams(), upstreams()
    dead = other.upstream
    other.stop()                                               # its port is now down
    fwd = forwarder(closing, dead, good.upstream, policy="sequential", health_check=0.05)
    query(fwd), query(fwd)
    assert fwd.is_down(dead)
    upstreams(ips=("192.0.2.99",), port=dead.port)             # back, on the same port
    deadline = time.monotonic() + 3
    while fwd.is_down(dead) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not fwd.is_down(dead)
    assert ips(query(fwd)) == ["192.0.2.99"]


def test_truncated_udp_answer_is_retried_over_tcp(upstreams, closing):
    many = tuple(f"10.1.{i // 200}.{i % 200 + 1}" for i in range(100))
    up = upstreams("tc", ips=many)
    fwd = forwarder(closing, up.upstream)
    reply = query(fwd)
    assert ips(reply) == list(many) and not reply.header.tc
    assert up.queries == {"udp": 1, "tcp": 1}


def test_cache_hit_avoids_the_upstream(upstreams, closing):
    up = upstreams(ttl=300)
    fwd = forwarder(closing, up.upstream)
    chain = build_chain([CachePlugin(CacheOptions()), fwd])
    first, second = query(chain), query(chain, "WWW.EXAMPLE.COM", qid=9)
    assert ips(first) == ips(second) == ["192.0.2.10"]
    assert second.header.id == 9 and str(second.q.qname) == "WWW.EXAMPLE.COM."
    assert 295 <= second.rr[0].ttl <= 300
    assert up.queries["udp"] == 1


def test_serve_stale_when_the_upstream_dies(upstreams, closing):
    now = [1000.0]
    up = upstreams(ttl=10)
    fwd = forwarder(closing, up.upstream, timeout=0.3, deadline=0.6, health_check=60)
    cache = CachePlugin(CacheOptions(serve_stale=3600), clock=lambda: now[0], spawn=lambda work: work())
    chain = build_chain([cache, fwd])
    assert ips(query(chain)) == ["192.0.2.10"]
    up.stop()                                                   # the upstream dies
    now[0] += 60                                                # and the entry expires
    stale = query(chain)
    assert ips(stale) == ["192.0.2.10"] and stale.rr[0].ttl == 0
    assert cache.served_stale == 1
    assert query(chain, "other.example.com").header.rcode == dnslib.RCODE.SERVFAIL


class ChainServer:
    """The smallest server for a chain: UDP on 127.0.0.1, one thread per query (a forwarding
    loop nests queries, so they must not wait for each other)."""

    def __init__(self, handler, port: int = 0) -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(data, peer), daemon=True).start()

    def _answer(self, data: bytes, peer) -> None:
        record = dnslib.DNSRecord.parse(data)
        req = Request(record=record, proto="udp", client=peer, max_size=4096, raw=data)
        try:
            self.sock.sendto(self.handler.serve(req).record.pack(), peer)
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_loop_into_ourselves_is_detected_and_stops_forwarding(tmp_path):
    # The server's own address is its upstream: reserve a port, then point forward at it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = f".:{port} {{\n forward . 127.0.0.1:{port} {{\n  timeout 1s\n  deadline 2s\n }}\n cache\n loop\n}}\n"
    config = parse_config(text, "Corefile")
    messages: list[str] = []
    pipeline = config.build(object(), on_loop=messages.append)
    server = ChainServer(pipeline.handler, port)
    try:
        assert pipeline.probe_loop(tries=2, interval=0.1) is True
        assert len(messages) == 1 and f"127.0.0.1:{port}" in messages[0] and "HINFO" in messages[0]
        assert pipeline.loop.seen == 3
        start = time.monotonic()
        assert query(pipeline.handler).header.rcode == dnslib.RCODE.SERVFAIL   # forwarding is off
        assert time.monotonic() - start < 0.2
    finally:
        server.stop()
        pipeline.close()
