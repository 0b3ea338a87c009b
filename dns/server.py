"""The DNS listeners: one UDP socket and one TCP socket on the same address and port.

UDP is served by one thread running a tight loop, batched (`_udp_batch_loop`, Linux: recvmmsg
and sendmmsg through netplane.dns.mmsg) or one datagram at a time (`_udp_loop`: recvfrom/sendto,
where recvmmsg is unavailable or `NETPLANE_DNS_RECVMMSG=0` / `ServerOptions.udp_batch=0`):

- **fast path**: the bytes after the 2-byte ID are looked up in the wire cache (netplane.dns.wire);
  a hit at the current zone generation is answered with `query ID + cached bytes`, no parsing.
  Only a hit counter on the entry is bumped; metrics are folded in at scrape time. Batched: one
  recvmmsg takes every queued query (blocking for the first only), the hits are answered in
  place in the receive buffer and leave in one sendmmsg, then the misses take the slow path.
- **slow path**: header checks (runts and responses are dropped, other opcodes get NOTIMP,
  anything but one question gets FORMERR), dnslib parse (failure: FORMERR), the plugin chain,
  pack with truncation to the client's UDP size, and the wire cache if the response says
  `cacheable`. Names inside the local zones (the cluster domain) are answered right in the loop:
  the kubernetes plugin answers from memory in microseconds, and a hand-off would cost more than
  the work. Every other name may wait on an upstream for seconds, so it goes to a bounded pool
  of threads; when the pool's queue is full the query gets SERVFAIL at once.

TCP: an accept thread and one thread per connection (2-byte length framing, several queries per
connection answered in order, an idle timeout, a connection limit). TCP is the rare path
(truncated answers, zone-transfer attempts), so it does not use the wire cache.

A listener is usable inside a network namespace as is: the sockets belong to the namespace of
the process that creates them.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dnslib

from netplane.dns import mmsg
from netplane.dns.chain import Handler, Request, make_reply, query_edns
from netplane.dns.metrics import DnsMetrics
from netplane.dns.wire import (
    ACCEPT, FORMERR, HITS, IGNORE, NOTIMP, RECV_SIZE, RESPONSE, TCP_MAX_SIZE, EntryMeta, WireCache,
    check_header, header_reply, max_udp_size, pack_reply,
)
from netplane.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_ZONE = "."  # the server block's zone label; netplane has one server block, "."
# 1 in FAST_SAMPLE fast-path answers is timed (its sendto); see _udp_loop.
FAST_SAMPLE = 256
_FAST_SAMPLE_MASK = FAST_SAMPLE - 1
_UDP_BUFFER = 4 << 20  # socket buffers: bursts of thousands of queries must not be dropped
# Batched loop: 1 in BATCH_SAMPLE batches is timed (lookups, copies and the sendmmsg).
BATCH_SAMPLE = 16
_BATCH_SAMPLE_MASK = BATCH_SAMPLE - 1
# "0" forces the one-datagram-at-a-time loop (to compare both, or if recvmmsg misbehaves);
# a number N > 1 sets the batch size.
RECVMMSG_ENV = "NETPLANE_DNS_RECVMMSG"


class GenerationSource(Protocol):
    """What the server needs from the zone: a counter that changes on every cluster change."""

    @property
    def generation(self) -> int: ...


@dataclass(frozen=True)
class ServerOptions:
    host: str = "0.0.0.0"
    port: int = 53
    # Names under these zones are answered inline by the socket loop; others go to the pool.
    local_zones: tuple[str, ...] = ("cluster.local.",)
    cache_entries: int = 100_000
    pool_threads: int = 32
    pool_queue: int = 2048
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    # UDP datagrams per recvmmsg/sendmmsg; 0 or 1: one recvfrom/sendto per datagram.
    udp_batch: int = 64
    server_label: str = ""  # coredns "server" label; default dns://:PORT


def parse_listen(text: str, default_port: int = 53) -> tuple[str, int]:
    """"0.0.0.0:53", ":53", "[::]:53", "127.0.0.1" → (host, port). Empty host = all IPv4."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ConfigError(f"listen address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {text!r}: port {port} out of range")
    return host or "0.0.0.0", port


def bind_sockets(host: str, port: int, *, reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same host and port (port 0: a free port for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(20):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for s in (udp, tcp):
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                udp.setsockopt(socket.SOL_SOCKET, opt, _UDP_BUFFER)
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(128)
            return udp, tcp
        except OSError as exc:
            udp.close()
            tcp.close()
            if port == 0 and exc.errno == 98:  # the free UDP port is taken for TCP: try another
                continue
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    raise ConfigError(f"cannot find a port free for both UDP and TCP on {host}")


def _qtype_label(qtype: int) -> str:
    return dnslib.QTYPE.forward.get(qtype, "other")


BADVERS = 16  # an extended rcode: 0 in the header, 1 in the OPT record's upper bits


def _rcode_label(rcode: int) -> str:
    return "BADVERS" if rcode == BADVERS else dnslib.RCODE.forward.get(rcode, str(rcode))


class DnsServer:
    """UDP + TCP listeners answering through `handler` (the plugin chain)."""

    def __init__(self, handler: Handler, zone: GenerationSource, metrics: DnsMetrics,
                 options: ServerOptions = ServerOptions(), *,
                 sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
        self.options = options
        self.handler = handler
        self._zone = zone
        self.metrics = metrics
        self._sockets = sockets
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self.cache = WireCache(options.cache_entries)
        self._local_suffixes = tuple(_suffixes(options.local_zones))
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: queue.Queue = queue.Queue(options.pool_queue)
        self._tcp_slots = threading.BoundedSemaphore(options.tcp_max_connections)
        self._tcp_conns: set[socket.socket] = set()
        self._tcp_lock = threading.Lock()
        self._family = "1"
        # Fast-path timing samples (seconds): their mean stands for every untimed fast answer.
        self._fast_sum = 0.0
        self._fast_n = 0
        self.udp_batched = False  # whether the UDP loop uses recvmmsg/sendmmsg (set by start)
        metrics.add_fold_hook(self._fold)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        assert self._udp is not None, "server not started"
        host, port = self._udp.getsockname()[:2]
        return host, port

    def start(self) -> None:
        if self._sockets is None:
            self._sockets = bind_sockets(self.options.host, self.options.port)
        self._udp, self._tcp = self._sockets
        self._family = "2" if self._udp.family == socket.AF_INET6 else "1"
        self._tcp.settimeout(None)
        batch = self._udp_batch()
        self.udp_batched = batch is not None
        if batch is not None:
            self._spawn(lambda: self._udp_batch_loop(batch), "dns-udp")
        else:
            self._spawn(self._udp_loop, "dns-udp")
        self._spawn(self._tcp_accept_loop, "dns-tcp")
        for i in range(self.options.pool_threads):
            self._spawn(self._pool_worker, f"dns-pool-{i}")
        host, port = self.address
        log.info("dns listening on %s:%d (udp, tcp)", host, port)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close the sockets and connections, and join the threads."""
        if self._stopping.is_set() or self._sockets is None:
            return
        self._stopping.set()
        for sock in (self._udp, self._tcp):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # an unconnected UDP socket still wakes its reader, then reports ENOTCONN
        for _ in range(self.options.pool_threads):
            try:
                self._pool.put_nowait(None)
            except queue.Full:
                break
        with self._tcp_lock:
            for conn in list(self._tcp_conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._udp.close()
        self._tcp.close()

    def set_handler(self, handler: Handler) -> None:
        """Swap the chain (config reload). Cached answers of the old chain are dropped."""
        self.handler = handler
        self.cache.invalidate()

    # -- UDP -------------------------------------------------------------------------------------

    def _udp_batch(self) -> mmsg.UdpBatch | None:
        """recvmmsg/sendmmsg buffers for the UDP socket, or None: use the recvfrom loop."""
        slots = _batch_slots(self.options.udp_batch, os.environ.get(RECVMMSG_ENV, ""))
        if slots <= 1:
            log.info("dns: one recvfrom/sendto per UDP datagram (udp_batch %d)", slots)
            return None
        if not mmsg.available():
            log.info("dns: recvmmsg unavailable (%s): one recvfrom/sendto per UDP datagram",
                     mmsg.unavailable_reason())
            return None
        try:
            return mmsg.UdpBatch(self._udp, slots, RECV_SIZE)
        except OSError as exc:
            log.warning("dns: cannot set up recvmmsg (%s): one recvfrom/sendto per UDP datagram", exc)
            return None

    def _udp_batch_loop(self, batch: mmsg.UdpBatch) -> None:
        # The same fast path as _udp_loop, a batch at a time; per-query work stays inline with
        # locals for the same reason (attribute lookups are a measurable share of an answer).
        recv, send = batch.recv, batch.send
        view, buffer, offsets = batch.view, batch.buffer, batch.offsets
        send_sizes, size_index = batch.send_sizes, batch.size_index
        max_answer = batch.slot_size - 2  # the answer is written after the query's ID
        cache, zone = self.cache, self._zone
        perf = time.perf_counter
        stopping = self._stopping.is_set
        batches = 0
        while True:
            try:
                lengths = recv()
            except OSError as exc:
                if stopping():
                    return
                log.debug("dns: recvmmsg: %s", exc)
                continue
            if stopping():  # shutdown() woke us (with empty datagrams)
                return
            gen = zone.generation
            if gen != cache.generation:
                cache.reset(gen)
            get = cache.entries.get
            batches += 1
            timed = not batches & _BATCH_SAMPLE_MASK
            t0 = perf() if timed else 0.0
            answered: list[int] = []
            misses: list[int] = []
            try:
                for i, length in enumerate(lengths):
                    off = offsets[i]
                    entry = get(view[off + 2:off + length].tobytes())
                    if entry is None:
                        misses.append(i)
                        continue
                    response = entry[RESPONSE]
                    size = len(response)
                    if size > max_answer:  # cannot happen (answers fit the client's <= 4096 bytes)
                        misses.append(i)
                        continue
                    entry[HITS] += 1
                    buffer[off + 2:off + 2 + size] = response
                    send_sizes[size_index[i]] = size + 2
                    answered.append(i)
            except Exception:
                # Never let one batch take the listener down (as _udp_loop guards each query).
                self.metrics.panics.inc()
                log.exception("dns: unexpected error in a batch of %d UDP queries", len(lengths))
                continue
            if answered:
                self._send_batch(send, answered)
                if timed:
                    # Timing every answer would cost more than the answer; the sampled mean is
                    # what the duration histogram gets for all of them (at fold time).
                    self._fast_sum += perf() - t0
                    self._fast_n += len(answered)
            for i in misses:
                self._udp_batch_miss(batch, i, lengths[i], gen)

    def _send_batch(self, send: Callable[[list[int]], int], answered: list[int]) -> None:
        try:
            dropped = send(answered)
        except Exception:
            self.metrics.panics.inc()
            log.exception("dns: unexpected error sending %d UDP answers", len(answered))
            return
        if dropped:
            log.debug("dns: %d of %d UDP answers could not be sent", dropped, len(answered))

    def _udp_batch_miss(self, batch: mmsg.UdpBatch, i: int, length: int, gen: int) -> None:
        """Datagram i of the batch was not in the wire cache (or is no query): the slow path."""
        off = batch.offsets[i]
        data = batch.view[off:off + length].tobytes()
        addr = batch.address(i)
        try:
            self._udp_slow(data, addr, gen)
        except OSError as exc:
            log.debug("dns: cannot answer %s: %s", addr, exc)
        except Exception:
            self.metrics.panics.inc()
            log.exception("dns: unexpected error answering a UDP query from %s", addr)

    def _udp_loop(self) -> None:
        # Everything the loop touches per query is bound to a local: attribute lookups are a
        # measurable share of a ~5 µs iteration.
        sock = self._udp
        recv, send = sock.recvfrom, sock.sendto
        cache, zone, slow = self.cache, self._zone, self._udp_slow
        perf = time.perf_counter
        stopping = self._stopping.is_set
        while True:
            try:
                data, addr = recv(RECV_SIZE)
            except OSError:
                if stopping():
                    return
                continue
            if addr is None:  # shutdown() woke us
                if stopping():
                    return
                continue
            gen = zone.generation
            if gen != cache.generation:
                cache.reset(gen)
            entry = cache.entries.get(data[2:])
            try:
                if entry is not None:
                    hits = entry[HITS] = entry[HITS] + 1
                    if hits & _FAST_SAMPLE_MASK:
                        send(data[:2] + entry[RESPONSE], addr)
                    else:
                        # Timing every fast answer would cost more than the answer; the sampled
                        # mean is what the duration histogram gets for all of them (at fold time).
                        t0 = perf()
                        send(data[:2] + entry[RESPONSE], addr)
                        self._fast_sum += perf() - t0
                        self._fast_n += 1
                else:
                    slow(data, addr, gen)
            except OSError as exc:  # a full send buffer, an unroutable client: drop this answer
                log.debug("dns: cannot answer %s: %s", addr, exc)
            except Exception:
                # Never let one query take the listener down.
                self.metrics.panics.inc()
                log.exception("dns: unexpected error answering a UDP query from %s", addr)

    def _udp_slow(self, data: bytes, addr: tuple, gen: int) -> None:
        t0 = time.perf_counter()
        parsed = self._parse(data, addr, "udp", t0)
        if parsed is None:
            return
        if isinstance(parsed, bytes):
            self._send_udp(parsed, addr)
            return
        record = parsed
        epoch = self.cache.epoch
        if self._is_local(record):
            self._udp_answer_guarded(record, data, addr, gen, epoch, t0)
            return
        try:
            self._pool.put_nowait((record, data, addr, gen, epoch, t0))
        except queue.Full:
            self._reply_error(record, data, addr, "udp", dnslib.RCODE.SERVFAIL, t0, send=True)

    def _udp_answer(self, record: dnslib.DNSRecord, data: bytes, addr: tuple, gen: int, epoch: int,
                    t0: float) -> None:
        max_size = max_udp_size(record)
        response = self.handler.serve(Request(record, "udp", addr, max_size, data))
        packed, _truncated = pack_reply(response.record, max_size)
        self._send_udp(packed, addr)
        qtype = _qtype_label(record.q.qtype)
        rcode = _rcode_label(response.record.header.rcode)
        if response.cacheable:
            meta = EntryMeta(qtype, rcode, response.plugin, len(data), len(packed))
            self.cache.store(data[2:], packed[2:], meta, gen, epoch)
        self.metrics.request(zone=METRICS_ZONE, proto="udp", family=self._family, qtype=qtype,
                             request_size=len(data), rcode=rcode, plugin=response.plugin,
                             response_size=len(packed), seconds=time.perf_counter() - t0)

    def _send_udp(self, packet: bytes, addr: tuple) -> None:
        try:
            self._udp.sendto(packet, addr)
        except OSError as exc:
            log.debug("dns: cannot send to %s: %s", addr, exc)

    def _pool_worker(self) -> None:
        while True:
            item = self._pool.get()
            if item is None or self._stopping.is_set():
                return
            self._udp_answer_guarded(*item)

    def _udp_answer_guarded(self, record: dnslib.DNSRecord, data: bytes, addr: tuple, gen: int, epoch: int,
                            t0: float) -> None:
        try:
            self._udp_answer(record, data, addr, gen, epoch, t0)
        except Exception:
            self.metrics.panics.inc()
            log.exception("dns: unexpected error answering %s from %s", record.q.qname, addr)
            self._reply_error(record, data, addr, "udp", dnslib.RCODE.SERVFAIL, t0, send=True)

    # -- shared slow-path steps --------------------------------------------------------------------

    def _parse(self, data: bytes, addr: tuple, proto: str, t0: float) -> dnslib.DNSRecord | bytes | None:
        """The parsed query, or the bytes of an error reply, or None (stay silent)."""
        verdict = check_header(data)
        if verdict == ACCEPT:
            try:
                record = dnslib.DNSRecord.parse(data)
            except Exception:  # dnslib raises many kinds on garbage (DNSError, struct, index…)
                verdict = FORMERR
            else:
                # dnslib accepts names over 255 bytes (RFC 1035 §2.3.4) but cannot pack them back.
                if len(record.questions) == 1 and _name_length(record.q.qname) <= 255:
                    opt = query_edns(record)
                    if opt is not None and (opt.ttl >> 16) & 0xFF != 0:
                        # RFC 6891 §6.1.3: we speak EDNS version 0 only; say so, as CoreDNS does.
                        return self._reply_error(record, data, addr, proto, BADVERS, t0, send=False)
                    return record
                verdict = FORMERR
        if verdict == IGNORE:
            return None
        rcode = dnslib.RCODE.NOTIMP if verdict == NOTIMP else dnslib.RCODE.FORMERR
        reply = header_reply(data, rcode)
        self.metrics.request(zone=METRICS_ZONE, proto=proto, family=self._family, qtype="other",
                             request_size=len(data), rcode=_rcode_label(rcode), plugin="",
                             response_size=len(reply), seconds=time.perf_counter() - t0)
        return reply

    def _is_local(self, record: dnslib.DNSRecord) -> bool:
        name = "." + str(record.q.qname).lower()
        if not name.endswith("."):
            name += "."
        return name.endswith(self._local_suffixes)

    def _reply_error(self, record: dnslib.DNSRecord, data: bytes, addr: tuple, proto: str, rcode: int,
                     t0: float, *, send: bool) -> bytes:
        try:
            reply = bytes(make_reply(Request(record, proto, addr, TCP_MAX_SIZE, data), rcode).pack())
        except Exception:  # a question dnslib cannot pack back: the header says enough
            reply = header_reply(data, rcode)
        if send:
            self._send_udp(reply, addr)
        self.metrics.request(zone=METRICS_ZONE, proto=proto, family=self._family,
                             qtype=_qtype_label(record.q.qtype), request_size=len(data),
                             rcode=_rcode_label(rcode), plugin="", response_size=len(reply),
                             seconds=time.perf_counter() - t0)
        return reply

    def answer_tcp(self, data: bytes, addr: tuple) -> bytes | None:
        """One TCP query → the reply bytes (None: say nothing)."""
        t0 = time.perf_counter()
        parsed = self._parse(data, addr, "tcp", t0)
        if parsed is None or isinstance(parsed, bytes):
            return parsed
        record = parsed
        try:
            response = self.handler.serve(Request(record, "tcp", addr, TCP_MAX_SIZE, data))
            packed, _ = pack_reply(response.record, TCP_MAX_SIZE)
        except Exception:
            self.metrics.panics.inc()
            log.exception("dns: unexpected error answering %s over TCP from %s", record.q.qname, addr)
            return self._reply_error(record, data, addr, "tcp", dnslib.RCODE.SERVFAIL, t0, send=False)
        self.metrics.request(zone=METRICS_ZONE, proto="tcp", family=self._family,
                             qtype=_qtype_label(record.q.qtype), request_size=len(data),
                             rcode=_rcode_label(response.record.header.rcode), plugin=response.plugin,
                             response_size=len(packed), seconds=time.perf_counter() - t0)
        return packed

    # -- TCP ---------------------------------------------------------------------------------------

    def _tcp_accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = self._tcp.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)  # EMFILE and friends: do not spin
                continue
            if not self._tcp_slots.acquire(blocking=False):
                log.warning("dns: TCP connection limit (%d) reached, closing %s",
                            self.options.tcp_max_connections, addr)
                conn.close()
                continue
            with self._tcp_lock:
                self._tcp_conns.add(conn)
            threading.Thread(target=self._tcp_connection, args=(conn, addr), name="dns-tcp-conn",
                             daemon=True).start()

    def _tcp_connection(self, conn: socket.socket, addr: tuple) -> None:
        conn.settimeout(self.options.tcp_idle_timeout)
        try:
            while not self._stopping.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                data = _recv_exact(conn, length)
                if data is None:
                    return
                reply = self.answer_tcp(data, addr)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass  # idle timeout, reset by peer, shutdown at stop
        except Exception:
            self.metrics.panics.inc()
            log.exception("dns: unexpected error on the TCP connection from %s", addr)
        finally:
            with self._tcp_lock:
                self._tcp_conns.discard(conn)
            conn.close()
            self._tcp_slots.release()

    # -- metrics -----------------------------------------------------------------------------------

    def _fold(self) -> None:
        fast_seconds = self._fast_sum / self._fast_n if self._fast_n else 0.0
        family = self._family

        def sink(meta: EntryMeta, n: int) -> None:
            self.metrics.request(zone=METRICS_ZONE, proto="udp", family=family, qtype=meta.qtype,
                                 request_size=meta.request_size, rcode=meta.rcode, plugin=meta.plugin,
                                 response_size=meta.response_size, seconds=fast_seconds, count=n)

        self.cache.fold(sink)


def _batch_slots(configured: int, env: str) -> int:
    """Datagrams per recvmmsg: the environment (RECVMMSG_ENV: "0" for the recvfrom loop, or a
    number of slots) wins over the options, so both loops can be compared on one build."""
    env = env.strip()
    if not env:
        return configured
    try:
        return int(env)
    except ValueError:
        log.warning("dns: ignoring %s=%r (not a number)", RECVMMSG_ENV, env)
        return configured


def _name_length(name: dnslib.DNSLabel) -> int:
    return sum(len(label) + 1 for label in name.label) + 1


def _suffixes(zones: tuple[str, ...]) -> list[str]:
    out = []
    for zone in zones:
        z = zone.lower().strip(".")
        if not z:  # the root zone covers everything
            return [""]
        out.append("." + z + ".")
    return out


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
