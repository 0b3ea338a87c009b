"""The batched UDP loop (recvmmsg/sendmmsg, netplane.dns.mmsg) and its fallback (recvfrom/sendto):
bursts from several client sockets with hits, misses and malformed datagrams in the same batch,
every answer checked for ID, case and name; the switches that pick the loop; UdpBatch itself."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import dnslib
import pytest

from netplane.dns import mmsg
from netplane.dns.chain import Response, build_chain, make_reply
from netplane.dns.metrics import DnsMetrics
from netplane.dns.server import RECVMMSG_ENV, DnsServer, ServerOptions, bind_sockets

needs_mmsg = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg unavailable")

NAMES = [f"svc{i}.bench.svc.cluster.local" for i in range(20)]
GATE = "gate.bench.svc.cluster.local"


@pytest.fixture(autouse=True)
def _loop_from_options(monkeypatch):
    """These tests pick the loop through ServerOptions; a RECVMMSG_ENV set for the whole run
    (to run the other tests on the fallback loop) must not override it."""
    monkeypatch.delenv(RECVMMSG_ENV, raising=False)


class FakeZone:
    generation = 1


class GatedCluster:
    """Answers NAME with one A record 10.1.0.<index>, nosuch* with NXDOMAIN; the GATE query
    waits for `release` (it runs inline in the socket loop, so the loop stops reading and the
    burst queues up in the socket: the next recvmmsg takes a full batch)."""

    name = "kubernetes"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.gated = threading.Event()
        self.calls = 0

    def serve(self, req):
        qname = str(req.record.q.qname).lower().rstrip(".")
        if qname == GATE:
            self.gated.set()
            self.release.wait(10)
        self.calls += 1
        if qname in NAMES:
            reply = make_reply(req, 0, aa=True)
            reply.add_answer(dnslib.RR(req.record.q.qname, rdata=dnslib.A(address(qname)), ttl=5))
            return Response(reply, cacheable=True, plugin="kubernetes")
        return Response(make_reply(req, dnslib.RCODE.NXDOMAIN, aa=True), cacheable=True, plugin="kubernetes")


def address(name: str) -> str:
    return f"10.1.0.{NAMES.index(name) + 1}"


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def start_server(options: ServerOptions, handler) -> tuple[DnsServer, DnsMetrics]:
    metrics = DnsMetrics()
    server = DnsServer(build_chain([lambda nxt: handler]), FakeZone(), metrics, options)
    server.start()
    return server, metrics


def clients(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        out.append(s)
    return out


class Burst:
    """Queries (and junk) sent from several sockets; what each should get back."""

    def __init__(self, socks: list[socket.socket], rng: random.Random) -> None:
        self.socks, self.rng = socks, rng
        self.expected: dict[tuple[int, int], tuple[str, str]] = {}  # (socket, id) → (kind, qname)
        self.queries = 0
        self.formerr = 0

    def send(self, dest: tuple[str, int], per_socket: int) -> None:
        for k in range(per_socket):
            for n, s in enumerate(self.socks):
                qid = (k * len(self.socks) + n) & 0xFFFF
                roll = self.rng.random()
                if roll < 0.08:  # a runt and a response: both ignored (no answer)
                    s.sendto(b"\x01\x02\x03", dest)
                    s.sendto(struct.pack("!HHHHHH", qid, 0x8100, 1, 0, 0, 0), dest)
                    continue
                if roll < 0.14:  # a valid header over garbage: FORMERR with the query's ID
                    s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\xff\xfe", dest)
                    self.expected[(n, qid)] = ("FORMERR", "")
                    self.formerr += 1
                    continue
                kind = "NX" if roll < 0.24 else "A"
                base = f"nosuch{self.rng.randrange(5)}.bench.svc.cluster.local" if kind == "NX" else \
                    self.rng.choice(NAMES)
                # Mostly the case the wire cache has seen (hits), sometimes a new one (misses).
                qname = random_case(base, self.rng) if self.rng.random() < 0.3 else base
                q = dnslib.DNSRecord.question(qname, "A")
                q.header.id = qid
                s.sendto(q.pack(), dest)
                self.expected[(n, qid)] = (kind, qname)
                self.queries += 1

    def check_answers(self) -> None:
        got: dict[tuple[int, int], bytes] = {}
        for n, s in enumerate(self.socks):
            want = sum(1 for (sock, _qid) in self.expected if sock == n)
            for _ in range(want):
                data = s.recv(4096)
                qid = struct.unpack_from("!H", data)[0]
                assert (n, qid) not in got, f"two answers for id {qid} on socket {n}"
                got[(n, qid)] = data
            s.settimeout(0.2)
            with pytest.raises(socket.timeout):  # nothing for the junk, nothing twice
                s.recv(4096)
        assert set(got) == set(self.expected)
        for key, (kind, qname) in self.expected.items():
            reply = dnslib.DNSRecord.parse(got[key])
            assert reply.header.id == key[1] and reply.header.qr == 1
            if kind == "FORMERR":
                assert reply.header.rcode == dnslib.RCODE.FORMERR
                continue
            assert str(reply.q.qname) == qname + "."  # the exact case of the question
            if kind == "A":
                assert reply.header.rcode == dnslib.RCODE.NOERROR
                assert [(str(rr.rname), str(rr.rdata)) for rr in reply.rr] == [(qname + ".", address(qname.lower()))]
            else:
                assert reply.header.rcode == dnslib.RCODE.NXDOMAIN and not reply.rr


def wait_counted(metrics: DnsMetrics, want: float, timeout: float = 3.0) -> float:
    """requests_total once it reaches `want` (a slow-path answer is counted just after it is
    sent, so the client may see it first), or what it is at the timeout."""
    deadline = time.monotonic() + timeout
    while requests_total(metrics) < want and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and nothing more arrives
    return requests_total(metrics)


def requests_total(metrics: DnsMetrics) -> float:
    total = 0.0
    for line in metrics.render().decode().splitlines():
        if line.startswith("coredns_dns_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


LOOPS = [pytest.param(64, id="batched", marks=needs_mmsg), pytest.param(0, id="recvfrom")]


@pytest.mark.parametrize("udp_batch", LOOPS)
def test_burst_while_the_loop_is_blocked_mixes_hits_misses_and_junk(udp_batch, monkeypatch):
    """The loop is held by a slow inline query while a burst queues up; when it is released the
    burst is read in full batches holding wire-cache hits, misses, FORMERR material and ignored
    datagrams together. Every query gets exactly one right answer."""
    batch_sizes: list[int] = []
    if udp_batch:
        real_recv = mmsg.UdpBatch.recv

        def recording_recv(self):
            lengths = real_recv(self)
            batch_sizes.append(len(lengths))
            return lengths

        monkeypatch.setattr(mmsg.UdpBatch, "recv", recording_recv)
    handler = GatedCluster()
    server, metrics = start_server(ServerOptions(host="127.0.0.1", port=0, udp_batch=udp_batch), handler)
    socks = clients(6)
    try:
        assert server.udp_batched == (udp_batch > 1)
        rng = random.Random(1)
        warm = Burst(socks[:1], rng)  # half the names in the wire cache, in one letter case each
        for i, name in enumerate(NAMES[:10]):
            q = dnslib.DNSRecord.question(name, "A")
            q.header.id = 60000 + i
            socks[0].sendto(q.pack(), server.address)
            warm.expected[(0, 60000 + i)] = ("A", name)
        warm.check_answers()
        socks[0].settimeout(3)

        gate_client = clients(1)[0]
        gate_client.sendto(dnslib.DNSRecord.question(GATE, "A").pack(), server.address)
        assert handler.gated.wait(5)
        burst = Burst(socks, rng)
        # Same-case repeats of cached names are hits; other cases and other names are misses.
        burst.send(server.address, per_socket=60)
        handler.release.set()
        burst.check_answers()
        gate_client.recv(4096)
        gate_client.close()
        # Every answer is counted once: the 10 warm-up queries, the gate, the burst.
        want = 10 + 1 + burst.queries + burst.formerr
        assert wait_counted(metrics, want) == want
        # Misses were answered by the chain, hits from the wire cache without it.
        assert handler.calls < 10 + 1 + burst.queries / 2
        if udp_batch:
            assert max(batch_sizes) == udp_batch  # the queued burst was read in full batches
    finally:
        handler.release.set()
        for s in socks:
            s.close()
        server.stop()


@pytest.mark.parametrize("udp_batch", LOOPS)
def test_many_clients_at_once(udp_batch):
    """Several threads hammer the server concurrently; every answer matches its query."""
    handler = GatedCluster()
    handler.release.set()
    server, metrics = start_server(ServerOptions(host="127.0.0.1", port=0, udp_batch=udp_batch), handler)
    errors: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        (s,) = clients(1)
        try:
            for k in range(300):
                name = random_case(rng.choice(NAMES), rng)
                q = dnslib.DNSRecord.question(name, "A")
                q.header.id = rng.randrange(65536)
                s.sendto(q.pack(), server.address)
                r = dnslib.DNSRecord.parse(s.recv(4096))
                if r.header.id != q.header.id or str(r.q.qname) != name + "." or \
                        [str(rr.rdata) for rr in r.rr] != [address(name.lower())]:
                    errors.append(f"{name} id {q.header.id}: {r}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert wait_counted(metrics, 6 * 300) == 6 * 300
    finally:
        server.stop()


# -- which loop -------------------------------------------------------------------------------------


def assert_loop_answers(batched: bool) -> None:
    """A server started now uses the batched loop or not, and answers either way."""
    handler = GatedCluster()
    handler.release.set()
    server, _ = start_server(ServerOptions(host="127.0.0.1", port=0), handler)
    try:
        assert server.udp_batched is batched
        assert_answers(server)
    finally:
        server.stop()


@needs_mmsg
def test_batched_by_default_and_forced_off_by_the_environment(monkeypatch):
    assert_loop_answers(batched=True)
    monkeypatch.setenv(RECVMMSG_ENV, "0")
    assert_loop_answers(batched=False)


def test_falls_back_when_recvmmsg_is_unavailable(monkeypatch):
    monkeypatch.setattr(mmsg, "available", lambda: False)
    assert_loop_answers(batched=False)


@needs_mmsg
def test_stop_wakes_the_batched_loop():
    handler = GatedCluster()
    handler.release.set()
    server, _ = start_server(ServerOptions(host="127.0.0.1", port=0), handler)
    assert_answers(server)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 2
    assert not any(t.is_alive() for t in server._threads if t.name == "dns-udp")


def assert_answers(server: DnsServer) -> None:
    (s,) = clients(1)
    try:
        for qid in (1, 2):  # a miss, then a hit
            q = dnslib.DNSRecord.question("SVC3.bench.svc.cluster.local", "A")
            q.header.id = qid
            s.sendto(q.pack(), server.address)
            r = dnslib.DNSRecord.parse(s.recv(4096))
            assert r.header.id == qid and str(r.q.qname) == "SVC3.bench.svc.cluster.local."
            assert [str(rr.rdata) for rr in r.rr] == ["10.1.0.4"]
    finally:
        s.close()


# -- UdpBatch ----------------------------------------------------------------------------------------


def batch_pair(family: int = socket.AF_INET, slots: int = 8, slot_size: int = 512):
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    udp, tcp = bind_sockets(host, 0)
    tcp.close()
    return udp, mmsg.UdpBatch(udp, slots, slot_size)


def queue_datagrams(server: socket.socket, payloads: list[tuple[socket.socket, bytes]]) -> None:
    for s, data in payloads:
        s.sendto(data, server.getsockname())
    time.sleep(0.05)  # loopback delivery is synchronous; this is only a margin


@needs_mmsg
def test_udp_batch_reads_all_queued_answers_a_subset_in_order():
    udp, batch = batch_pair()
    socks = clients(5)
    try:
        queue_datagrams(udp, [(s, f"query-{n}".encode()) for n, s in enumerate(socks)])
        lengths = batch.recv()
        assert len(lengths) == 5
        for i, length in enumerate(lengths):
            off = batch.offsets[i]
            assert batch.view[off:off + length].tobytes() == f"query-{i}".encode()
            assert batch.address(i) == socks[i].getsockname()
        # Answer slots 1, 3 and 4 only: the send headers must be packed and reach the right clients.
        for i in (1, 3, 4):
            off = batch.offsets[i]
            answer = f"answer-{i}".encode()
            batch.buffer[off:off + len(answer)] = answer
            batch.send_sizes[batch.size_index[i]] = len(answer)
        assert batch.send([1, 3, 4]) == 0
        for i in (1, 3, 4):
            assert socks[i].recv(100) == f"answer-{i}".encode()
        # The next batch answers slot 0 and 1 in place: headers displaced above are restored.
        queue_datagrams(udp, [(socks[0], b"again-0"), (socks[2], b"again-2")])
        assert batch.recv() == [7, 7]
        for i in (0, 1):
            off = batch.offsets[i]
            batch.buffer[off:off + 4] = b"ok-%d" % i
            batch.send_sizes[batch.size_index[i]] = 4
        assert batch.send([0, 1]) == 0
        assert socks[0].recv(100) == b"ok-0"
        assert socks[2].recv(100) == b"ok-1"
        socks[1].settimeout(0.1)
        with pytest.raises(socket.timeout):
            socks[1].recv(100)
    finally:
        for s in socks:
            s.close()
        udp.close()


@needs_mmsg
def test_udp_batch_cuts_long_datagrams_and_takes_at_most_its_slots():
    udp, batch = batch_pair(slots=4, slot_size=64)
    (s,) = clients(1)
    try:
        queue_datagrams(udp, [(s, bytes([n]) * (100 if n == 0 else 10)) for n in range(6)])
        assert batch.recv() == [64, 10, 10, 10]
        assert batch.recv() == [10, 10]
    finally:
        s.close()
        udp.close()


@needs_mmsg
def test_udp_batch_ipv6_addresses():
    try:
        udp, batch = batch_pair(socket.AF_INET6)
    except Exception as exc:  # noqa: BLE001 - no IPv6 loopback here
        pytest.skip(f"no ::1: {exc}")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.settimeout(3)
    try:
        queue_datagrams(udp, [(s, b"hello")])
        assert batch.recv() == [5]
        host, port, _flow, _scope = batch.address(0)
        assert (host, port) == s.getsockname()[:2]
        batch.buffer[0:3] = b"hi!"
        batch.send_sizes[batch.size_index[0]] = 3
        assert batch.send([0]) == 0
        assert s.recv(100) == b"hi!"
    finally:
        s.close()
        udp.close()


@needs_mmsg
def test_udp_batch_send_failure_drops_only_that_answer():
    udp, batch = batch_pair()
    socks = clients(3)
    try:
        queue_datagrams(udp, [(s, b"q") for s in socks])
        assert batch.recv() == [1, 1, 1]
        # Slot 1's sender address becomes port 0: sendmmsg fails on it (EINVAL) and goes on.
        name_off = 1 * 128
        batch._names[name_off + 2:name_off + 4] = b"\x00\x00"
        for i in range(3):
            batch.buffer[batch.offsets[i]:batch.offsets[i] + 1] = b"a"
            batch.send_sizes[batch.size_index[i]] = 1
        assert batch.send([0, 1, 2]) == 1
        assert socks[0].recv(10) == b"a" and socks[2].recv(10) == b"a"
    finally:
        for s in socks:
            s.close()
        udp.close()
