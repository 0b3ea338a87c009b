"""Fakes for the forward/cache/loop/config unit tests: a settable clock and in-memory upstreams
(an Exchanger that answers from Python, no sockets)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import dnslib
import pytest

from netplane.dns.chain import Request
from netplane.dns.forward import Upstream, UpstreamError, UpstreamTimeout


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reply_bytes(query: bytes, ips: list[str], *, ttl: int = 60, tc: bool = False, qname: str | None = None) -> bytes:
    """An upstream's answer to `query`: one A record per IP, echoing the query's ID."""
    q = dnslib.DNSRecord.parse(query)
    name = qname or str(q.q.qname).lower()
    reply = dnslib.DNSRecord(dnslib.DNSHeader(id=q.header.id, qr=1, rd=q.header.rd, ra=1, tc=int(tc)),
                             q=dnslib.DNSQuestion(name, q.q.qtype, q.q.qclass))
    for ip in ips:
        reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=ttl, rdata=dnslib.A(ip)))
    return reply.pack()


class FakeUpstreams:
    """Exchanger. Each upstream answers A = its own address from `ips`, or behaves per `mode`:
    "answer", "timeout" (advances the fake clock by the timeout), "refuse", or a callable
    (query, proto) -> bytes. Counts what each upstream received in `received`."""

    def __init__(self, clock: FakeClock, upstreams: list[Upstream]) -> None:
        self.clock = clock
        self.ips = {u: f"192.0.2.{i + 1}" for i, u in enumerate(upstreams)}
        self.mode: dict[Upstream, object] = {u: "answer" for u in upstreams}
        self.received: Counter = Counter()          # (upstream, proto) -> count
        self.names: list[tuple[Upstream, str, int]] = []
        self._lock = threading.Lock()

    def exchange(self, upstream: Upstream, query: bytes, proto: str, timeout: float) -> bytes:
        q = dnslib.DNSRecord.parse(query)
        with self._lock:
            self.received[(upstream, proto)] += 1
            self.names.append((upstream, str(q.q.qname), q.q.qtype))
        mode = self.mode[upstream]
        if callable(mode):
            return mode(query, proto)
        if mode == "timeout":
            self.clock.advance(timeout)
            raise UpstreamTimeout(f"upstream {upstream}: timeout")
        if mode == "refuse":
            raise UpstreamError(f"upstream {upstream}: connection refused")
        return reply_bytes(query, [self.ips[upstream]])

    def count(self, upstream: Upstream) -> int:
        return sum(n for (u, _), n in self.received.items() if u == upstream)


def make_request(name: str = "example.com", qtype: str = "A", *, proto: str = "udp", qid: int = 4242,
                 do: bool = False) -> Request:
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.id = qid
    if do:
        record.add_ar(dnslib.EDNS0(udp_len=1232, flags="do"))
    return Request(record=record, proto=proto, client=("127.0.0.1", 40000),
                   max_size=65535 if proto == "tcp" else 512, raw=record.pack())


def answer_ips(record: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr if rr.rtype == dnslib.QTYPE.A]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fakes():
    """The helpers as one namespace (test modules cannot import each other in importlib mode)."""

    class Fakes:
        FakeClock = FakeClock
        FakeUpstreams = FakeUpstreams
        reply_bytes = staticmethod(reply_bytes)
        make_request = staticmethod(make_request)
        answer_ips = staticmethod(answer_ips)

    return Fakes


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    done = threading.Event()
    deadline = 0.0
    while deadline < timeout:
        if predicate():
            return True
        done.wait(0.01)
        deadline += 0.01
    return predicate()


@pytest.fixture
def wait():
    return wait_until
