"""Fuzz a running `netplane dns`: 100,000 random and mutated UDP packets (and a few thousand over
TCP). The server must never crash, must stay silent exactly for runts and responses, must answer
everything else (FORMERR for what it cannot take, NOTIMP for other opcodes), and must still answer
a valid query correctly afterwards.

Packets go out in bursts without waiting for each reply; every packet of a burst carries a
distinct ID, so each reply is matched to the packet it answers.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator

import dnslib
import pytest

from netplane.k8s import Client, load_config

from .conftest import ApiServerProcess
from .test_dns_server import DnsProcess, create_headless, create_service, metric

TOTAL_UDP = 100_000
TOTAL_TCP = 3_000
BURST = 1000
SEED = 20261121

COREFILE = """\
.:53 {
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
"""

NAMES = ["web.default.svc.cluster.local", "big.default.svc.cluster.local", "_http._tcp.web.default.svc.cluster.local",
         "1-2-3-4.default.pod.cluster.local", "cluster.local", "dns-version.cluster.local",
         "4.3.2.1.in-addr.arpa", "example.org", "a.b.c.d.e.f.default.svc.cluster.local"]
QTYPES = ["A", "AAAA", "SRV", "PTR", "TXT", "SOA", "NS", "ANY", "AXFR", "MX", "CNAME", "HINFO"]


def valid_query(rng: random.Random) -> bytes:
    name = rng.choice(NAMES)
    if rng.random() < 0.5:  # 0x20 case randomisation
        name = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
    q = dnslib.DNSRecord.question(name, rng.choice(QTYPES))
    if rng.random() < 0.4:
        q.add_ar(dnslib.EDNS0(udp_len=rng.choice([0, 512, 1232, 4096, 65535]), flags=rng.choice(["", "do"])))
    return q.pack()


def header(qid: int = 0, flags: int = 0x0100, counts=(1, 0, 0, 0)) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, *counts)


def bad_labels(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    tail = struct.pack("!HH", 1, 1)
    if kind == 0:  # label length beyond the packet
        body = bytes([rng.randrange(1, 64)]) + b"ab"
    elif kind == 1:  # the reserved 0x40/0x80 label types
        body = bytes([rng.choice([0x40, 0x80, 0x7F, 0xBF])]) + b"abc\x00" + tail
    elif kind == 2:  # a pointer to itself
        body = b"\xc0\x0c" + tail
    elif kind == 3:  # two pointers pointing at each other
        body = b"\x01a\xc0\x11" + tail + b"\x01b\xc0\x0c"
    elif kind == 4:  # a pointer forward, past the end
        body = b"\xc0" + bytes([rng.randrange(0x20, 0xFF)]) + tail
    else:  # a name longer than 255 bytes
        body = (b"\x3f" + b"x" * 63) * 5 + b"\x00" + tail
    return header() + body


def huge_counts(rng: random.Random) -> bytes:
    counts = tuple(rng.choice([0, 1, 2, 3, 255, 65535]) for _ in range(4))
    return header(counts=counts) + valid_query(rng)[12:]


def truncated(rng: random.Random) -> bytes:
    data = valid_query(rng)
    return data[:rng.randrange(0, len(data))]


def mutated(rng: random.Random) -> bytes:
    data = bytearray(valid_query(rng))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(3)
        pos = rng.randrange(len(data))
        if op == 0:
            data[pos] = rng.randrange(256)
        elif op == 1:
            data.insert(pos, rng.randrange(256))
        elif len(data) > 1:
            del data[pos]
    return bytes(data)


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([rng.randrange(0, 16), rng.randrange(12, 80), rng.randrange(12, 600)]))


def other_opcode(rng: random.Random) -> bytes:
    data = valid_query(rng)
    flags = (rng.randrange(1, 16) << 11) | 0x0100
    return data[:2] + struct.pack("!H", flags) + data[4:]


def response(rng: random.Random) -> bytes:
    data = valid_query(rng)
    return data[:2] + struct.pack("!H", 0x8180 | rng.randrange(16)) + data[4:]


GENERATORS: list[Callable[[random.Random], bytes]] = [
    valid_query, bad_labels, huge_counts, truncated, mutated, mutated, random_bytes, other_opcode, response]


def with_id(data: bytes, qid: int) -> bytes:
    if len(data) < 2:
        return data
    return struct.pack("!H", qid) + data[2:]


def must_be_silent(data: bytes) -> bool:
    """Runts (no full header) and responses (QR=1) get no answer, as in CoreDNS/miekg."""
    return len(data) < 12 or bool(data[2] & 0x80)


def expected_rcode(data: bytes) -> int | None:
    """What the header alone decides (None: depends on the content)."""
    flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", data, 2)
    if (flags >> 11) & 0xF != 0:
        return dnslib.RCODE.NOTIMP
    if qd != 1 or an > 1 or ns > 1 or ar > 2:
        return dnslib.RCODE.FORMERR
    return None


@pytest.fixture(scope="module")
def dns(apiserver: ApiServerProcess, tmp_path_factory) -> Iterator[DnsProcess]:
    client = Client(load_config(str(apiserver.kubeconfig)))
    try:
        create_service(client, "web")
        create_headless(client, "big", 100)
    finally:
        client.close()
    proc = DnsProcess(tmp_path_factory.mktemp("dns-fuzz"), apiserver.kubeconfig, COREFILE)
    yield proc
    code = proc.stop()
    print(f"--- dns log (tail) ---\n{proc.log_text()[-3000:]}")
    assert code == 0


def drain(sock: socket.socket, expected: int, timeout: float = 3.0) -> list[bytes]:
    """Replies until `expected` have come (then whatever else is already there), or until
    nothing arrives for `timeout` seconds."""
    replies = []
    sock.settimeout(timeout)
    while len(replies) < expected:
        try:
            replies.append(sock.recv(65535))
        except socket.timeout:
            return replies
    sock.settimeout(0.02)
    while True:
        try:
            replies.append(sock.recv(65535))
        except socket.timeout:
            return replies


def test_udp_fuzz(dns: DnsProcess):
    rng = random.Random(SEED)
    stats = {"sent": 0, "silent": 0, "answered": 0}
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        while stats["sent"] < TOTAL_UDP:
            burst = {}
            for qid in range(min(BURST, TOTAL_UDP - stats["sent"])):
                data = with_id(rng.choice(GENERATORS)(rng), qid)
                burst[qid] = data
                sock.sendto(data, ("127.0.0.1", dns.port))
            stats["sent"] += len(burst)
            replies = drain(sock, sum(1 for p in burst.values() if not must_be_silent(p)))
            seen: set[int] = set()
            for reply in replies:
                assert len(reply) >= 12, f"short reply {reply!r}"
                qid, flags = struct.unpack_from("!HH", reply)
                assert qid in burst, f"reply to an ID never sent: {reply!r}"
                assert qid not in seen, f"two replies to {burst[qid]!r}"
                seen.add(qid)
                query = burst[qid]
                assert not must_be_silent(query), f"answered a packet that needs silence: {query!r} → {reply!r}"
                assert flags & 0x8000, "reply without QR"
                assert (flags >> 11) & 0xF == (query[2] >> 3) & 0xF, "opcode not echoed"
                want = expected_rcode(query)
                if want is not None:
                    assert flags & 0xF == want, f"{query!r}: rcode {flags & 0xF}, expected {want}"
            unanswered = [burst[q] for q in burst if q not in seen and not must_be_silent(burst[q])]
            assert not unanswered, f"{len(unanswered)} packets got no answer, e.g. {unanswered[:3]!r}"
            stats["answered"] += len(seen)
            stats["silent"] += len(burst) - len(seen)
            assert dns.proc.poll() is None, "the server died"
    elapsed = time.monotonic() - started
    print(f"udp fuzz: {stats} in {elapsed:.1f}s")
    assert stats["sent"] == TOTAL_UDP and stats["silent"] > 1000 and stats["answered"] > 50_000
    check_still_serving(dns)


def test_tcp_fuzz(dns: DnsProcess):
    rng = random.Random(SEED + 1)
    sent = 0
    while sent < TOTAL_TCP:
        with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as conn:
            packets = [with_id(rng.choice(GENERATORS)(rng), i) for i in range(100)]
            conn.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
            sent += len(packets)
            want = sum(1 for p in packets if not must_be_silent(p))
            got = 0
            buf = b""
            conn.settimeout(5)
            while got < want:
                chunk = conn.recv(65535)
                assert chunk, f"connection closed after {got} of {want} answers"
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                    n = struct.unpack_from("!H", buf)[0]
                    reply, buf = buf[2:2 + n], buf[2 + n:]
                    qid = struct.unpack_from("!H", reply)[0]
                    assert not must_be_silent(packets[qid])
                    got += 1
        # A connection that lies about the length and hangs up must not hurt either.
        with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as conn:
            conn.sendall(struct.pack("!H", 60000) + rng.randbytes(rng.randrange(0, 100)))
    assert dns.proc.poll() is None
    check_still_serving(dns)


def check_still_serving(dns: DnsProcess) -> None:
    reply = dns.query("web.default.svc.cluster.local")
    assert reply.header.rcode == dnslib.RCODE.NOERROR and len(reply.rr) == 1
    big = dns.query("big.default.svc.cluster.local", tcp=True)
    assert len(big.rr) == 100
    text = dns.http(dns.metrics, "/metrics")[1]
    assert metric(text, r"coredns_panics_total") == 0
    assert "Traceback" not in dns.log_text(), re.findall(r"Traceback.*?\n\S.*?\n", dns.log_text(), re.S)[:3]
