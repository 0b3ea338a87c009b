"""The forward plugin: names the cluster zone does not answer go to upstream resolvers.

Behaviour follows CoreDNS's *forward* plugin (../../shared/reference/dns.md §6):

- upstreams come from `forward . 10.0.0.2:53 10.0.0.3` or a resolv.conf (`nameserver` lines),
  at most 15;
- `policy` random (default), round_robin or sequential orders the upstreams per query; an
  upstream that failed `max_fails` times in a row is *down* and skipped, and an in-band health
  check (`. IN NS`) probes it every `health_check` seconds until it answers again; when every
  upstream is down one is picked at random anyway (the health checks may be what is broken);
- each attempt waits at most `timeout` (read timeout, 2 s); the whole query is bounded by
  `deadline` (5 s, CoreDNS's fixed value): when no upstream answered in time the client gets
  SERVFAIL, never silence;
- over UDP a truncated (TC) answer is retried over TCP; TCP clients are forwarded over TCP;
- `max_concurrent` queries in flight at most: the next one gets REFUSED at once and counts in
  coredns_forward_max_concurrent_rejects_total (not as an upstream failure).

The answer keeps the client's ID and question (case included). Forwarded answers are never
`cacheable` for the server's wire cache: cache.py caches them with their TTLs.

Sockets: one socket per upstream query (measured ~9 µs to create, connect and close a UDP socket
on this class of machine, against ~100 µs for dnslib to parse and pack one message), which also
gives every query a fresh source port. `expire` is accepted for Corefile compatibility only.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dnslib

from netplane.dns.chain import Handler, Request, Response, make_reply
from netplane.errors import ConfigError, NetplaneError

log = logging.getLogger(__name__)

DEFAULT_PORT = 53
MAX_UPSTREAMS = 15
POLICIES = ("random", "round_robin", "sequential")
# Each upstream is tried at most this many times per client query (within the deadline), so a
# query against refusing upstreams ends at once instead of spinning until the deadline.
PASSES = 2
HEALTH_CHECK_TIMEOUT = 1.0


class UpstreamError(NetplaneError):
    """One exchange with an upstream failed (timeout, refused, reset, garbage)."""


class UpstreamTimeout(UpstreamError):
    pass


# -- upstream addresses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str               # an IP address literal
    port: int = DEFAULT_PORT

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def label(self) -> str:
        """As CoreDNS writes it in the `to` label: 10.0.0.2:53, [fd00::1]:53."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.label


def parse_upstream(token: str, where: str = "forward") -> Upstream:
    """`10.0.0.2`, `10.0.0.2:5353`, `dns://10.0.0.2`, `fd00::1`, `[fd00::1]:53`."""
    text = token
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme != "dns":
            raise ConfigError(f"{where}: upstream {token!r}: only plain DNS (dns://) is supported, not {scheme}://")
    port = DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where}: upstream {token!r}: bad bracketed address")
        if rest:
            port = _port(rest[1:], token, where)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, token, where)
    else:
        host = text
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        raise ConfigError(f"{where}: upstream {token!r} is not an IP address (names are not resolved)") from None
    return Upstream(str(address), port)


def _port(text: str, token: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{where}: upstream {token!r}: bad port {text!r}")
    return int(text)


def parse_resolv_conf(text: str, source: str = "resolv.conf") -> tuple[Upstream, ...]:
    """The `nameserver` lines of a resolv.conf, in order (other lines are ignored)."""
    upstreams = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            upstreams.append(parse_upstream(fields[1], f"{source}:{lineno}"))
    return tuple(upstreams)


def parse_upstream_list(text: str, source: str = "upstreams") -> tuple[Upstream, ...]:
    """A resolv.conf-style list: `nameserver IP` lines and/or `forward . IP[:PORT]…` lines."""
    upstreams: list[Upstream] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}:{lineno}"
        if fields[0] == "nameserver" and len(fields) >= 2:
            upstreams.append(parse_upstream(fields[1], where))
        elif fields[0] == "forward" and len(fields) >= 3:
            upstreams += [parse_upstream(token, where) for token in fields[2:]]
    return _checked(tuple(upstreams), source)


def resolve_upstreams(tokens: Sequence[str], base_dir: Path | None = None, where: str = "forward") -> tuple[Upstream, ...]:
    """Upstream tokens as written after `forward FROM`: addresses or resolv.conf paths.
    A path is read now (CoreDNS reads it once, at setup); relative paths are taken from
    `base_dir` (the configuration file's directory)."""
    upstreams: list[Upstream] = []
    for token in tokens:
        path = Path(token)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        # As CoreDNS's HostPortOrFile: an address, else an existing file; a token with a slash
        # is always a file (so a missing resolv.conf is reported as such).
        if "://" in token or ("/" not in token and not path.is_file()):
            upstreams.append(parse_upstream(token, where))
            continue
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read upstream file {str(path)!r}: {e.strerror or e}") from None
        found = parse_resolv_conf(text, str(path))
        if not found:
            raise ConfigError(f"{where}: {str(path)!r} has no nameserver line")
        upstreams += found
    return _checked(tuple(upstreams), where)


def _checked(upstreams: tuple[Upstream, ...], where: str) -> tuple[Upstream, ...]:
    if not upstreams:
        raise ConfigError(f"{where}: no upstream")
    if len(upstreams) > MAX_UPSTREAMS:
        raise ConfigError(f"{where}: {len(upstreams)} upstreams, at most {MAX_UPSTREAMS} are allowed")
    return upstreams


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardOptions:
    upstreams: tuple[Upstream, ...]
    from_zone: str = "."                  # only names under this zone are forwarded
    except_zones: tuple[str, ...] = ()    # … but not names under these
    policy: str = "random"
    max_concurrent: int = 0               # 0: unlimited
    max_fails: int = 2                    # 0: never mark an upstream down
    health_check: float = 0.5             # seconds between health checks of a down upstream
    expire: float = 10.0                  # accepted for compatibility; sockets are not pooled
    timeout: float = 2.0                  # read timeout of one attempt
    deadline: float = 5.0                 # bound on the whole query, then SERVFAIL
    force_tcp: bool = False

    def __post_init__(self) -> None:
        _checked(self.upstreams, "forward")
        if self.policy not in POLICIES:
            raise ConfigError(f"forward: unknown policy {self.policy!r} (one of {', '.join(POLICIES)})")
        if self.max_concurrent < 0 or self.max_fails < 0:
            raise ConfigError("forward: max_concurrent and max_fails must be >= 0")
        for name in ("health_check", "expire", "timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"forward: {name} must be > 0, got {getattr(self, name)}")


# -- transport port ----------------------------------------------------------------------------


class Exchanger(Protocol):
    """Sends one DNS message to an upstream and returns the reply's bytes (same ID, QR set).
    Raises UpstreamError (UpstreamTimeout after `timeout` seconds)."""

    def exchange(self, upstream: Upstream, query: bytes, proto: str, timeout: float) -> bytes: ...


class SocketExchanger:
    """The real transport: a fresh UDP socket or TCP connection per exchange."""

    def exchange(self, upstream: Upstream, query: bytes, proto: str, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        try:
            if proto == "tcp":
                return self._tcp(upstream, query, timeout, end)
            return self._udp(upstream, query, end)
        except (TimeoutError, socket.timeout):
            raise UpstreamTimeout(f"upstream {upstream}: no answer within {timeout:.2f}s ({proto})") from None
        except OSError as e:
            raise UpstreamError(f"upstream {upstream}: {e.strerror or e} ({proto})") from None

    @staticmethod
    def _udp(upstream: Upstream, query: bytes, end: float) -> bytes:
        with socket.socket(upstream.family, socket.SOCK_DGRAM) as sock:
            sock.connect((upstream.host, upstream.port))
            sock.send(query)
            while True:
                sock.settimeout(_remaining(end))
                data = sock.recv(65535)
                # A connected socket only hears from the upstream; still skip stray replies
                # (an earlier query's late answer cannot carry this random ID).
                if len(data) >= 12 and data[:2] == query[:2] and data[2] & 0x80:
                    return data

    @staticmethod
    def _tcp(upstream: Upstream, query: bytes, timeout: float, end: float) -> bytes:
        with socket.create_connection((upstream.host, upstream.port), timeout=timeout) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", _read_exact(sock, 2, end))
            data = _read_exact(sock, length, end)
            if len(data) < 12 or data[:2] != query[:2]:
                raise UpstreamError(f"upstream {upstream}: TCP answer does not match the query")
            return data


def _remaining(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_exact(sock: socket.socket, n: int, end: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(_remaining(end))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed by the upstream")
        buf += chunk
    return bytes(buf)


# -- the plugin --------------------------------------------------------------------------------


class _UpstreamState:
    __slots__ = ("upstream", "fails")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.fails = 0                     # consecutive failures (queries and health checks)


class ForwardPlugin:
    """A Plugin (call it with the next handler) that is also the forward Handler.

    `metrics` is a netplane.dns.metrics.DnsMetrics (or None). `exchanger` is the transport port
    (SocketExchanger by default, a fake in unit tests). Thread-safe: the server may call `serve`
    from several threads; a background thread runs the health checks while an upstream is down.
    """

    name = "forward"

    def __init__(self, options: ForwardOptions, *, metrics=None, exchanger: Exchanger | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 log_errors: bool = False) -> None:
        self.options = options
        # The Corefile's `errors` directive: log failed queries at WARNING instead of DEBUG.
        self._error_level = logging.WARNING if log_errors else logging.DEBUG
        self._metrics = metrics
        self._exchanger = exchanger or SocketExchanger()
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._states = [_UpstreamState(u) for u in options.upstreams]
        self._by_upstream = {s.upstream: s for s in self._states}
        self._lock = threading.Lock()
        self._inflight = 0
        self._rr = itertools.count()
        self._next: Handler | None = None
        self._disabled_reason = ""
        self._closed = threading.Event()
        self._checker: threading.Thread | None = None

    def __call__(self, next_handler: Handler | None) -> ForwardPlugin:
        self._next = next_handler
        return self

    # -- state seen from outside ---------------------------------------------------------------

    def is_down(self, upstream: Upstream) -> bool:
        return self._down(self._by_upstream[upstream])

    @property
    def inflight(self) -> int:
        return self._inflight

    def disable(self, reason: str) -> None:
        """Stop forwarding for good (the loop detector calls this): every query gets SERVFAIL."""
        self._disabled_reason = reason
        log.error("forward: disabled: %s", reason)

    def close(self) -> None:
        """Stop the health-check thread (on shutdown or when a reload replaces this plugin)."""
        self._closed.set()
        checker = self._checker
        if checker is not None and checker is not threading.current_thread():
            checker.join(timeout=2)

    # -- Handler ---------------------------------------------------------------------------------

    def serve(self, req: Request) -> Response | None:
        if not self._mine(str(req.record.q.qname).lower()):
            return None                                  # the chain asks the next handler
        if self._disabled_reason:
            return self._reply(req, dnslib.RCODE.SERVFAIL)
        limit = self.options.max_concurrent
        with self._lock:
            if limit and self._inflight >= limit:
                rejected = True
            else:
                rejected = False
                self._inflight += 1
        if rejected:
            if self._metrics is not None:
                self._metrics.forward_max_concurrent_reject()
            return self._reply(req, dnslib.RCODE.REFUSED)
        try:
            return self._forward(req)
        finally:
            with self._lock:
                self._inflight -= 1

    def exchange(self, record: dnslib.DNSRecord, *, proto: str = "udp") -> dnslib.DNSRecord:
        """Forward a message built here rather than by a client (the loop detector's probe).
        Returns the upstream's answer, whatever its rcode; raises UpstreamError when no upstream
        answered within the deadline or forwarding is disabled."""
        if self._disabled_reason:
            raise UpstreamError(f"forwarding is disabled: {self._disabled_reason}")
        return self._ask_upstreams(record, record.pack(), proto)

    # -- internals -------------------------------------------------------------------------------

    def _mine(self, qname: str) -> bool:
        opts = self.options
        if not _in_zone(qname, opts.from_zone):
            return False
        return not any(_in_zone(qname, z) for z in opts.except_zones)

    def _down(self, state: _UpstreamState) -> bool:
        return self.options.max_fails > 0 and state.fails >= self.options.max_fails

    def _order(self) -> list[_UpstreamState]:
        states = self._states
        if self.options.policy == "random":
            order = list(states)
            self._rng.shuffle(order)
            return order
        if self.options.policy == "round_robin":
            start = next(self._rr) % len(states)
            return states[start:] + states[:start]
        return list(states)

    def _attempts(self):
        """Upstreams to try, in order: down ones are skipped, unless all are down, in which case
        one is picked at random (per pass)."""
        for _ in range(PASSES):
            order = self._order()
            alive = [s for s in order if not self._down(s)]
            yield from alive or [self._rng.choice(order)]

    def _forward(self, req: Request) -> Response:
        proto = "tcp" if req.proto == "tcp" else "udp"
        try:
            answer = self._ask_upstreams(req.record, req.raw or req.record.pack(), proto)
        except UpstreamError as e:
            log.log(self._error_level, "forward: %s", e)
            return self._reply(req, dnslib.RCODE.SERVFAIL)
        answer.header.id = req.record.header.id
        answer.questions = list(req.record.questions)
        answer.header.q = len(answer.questions)
        return Response(record=answer, cacheable=False, plugin=self.name)

    def _ask_upstreams(self, record: dnslib.DNSRecord, query: bytes, proto: str) -> dnslib.DNSRecord:
        """Try the upstreams in policy order until one answers `query` (a packed `record`)."""
        opts = self.options
        wire = struct.pack("!H", self._rng.getrandbits(16)) + query[2:]
        if opts.force_tcp:
            proto = "tcp"
        question = record.q
        deadline = self._clock() + opts.deadline
        last_error: Exception | None = None
        for state in self._attempts():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                reply = self._exchange_once(state, wire, proto, min(opts.timeout, remaining), deadline)
                answer = dnslib.DNSRecord.parse(reply)
                if answer.questions and not _same_question(answer.q, question):
                    raise UpstreamError(f"upstream {state.upstream}: answer is for {answer.q.qname}, not {question.qname}")
            except (UpstreamError, dnslib.DNSError) as e:
                last_error = e
                self._failed(state, e)
                continue
            self._succeeded(state)
            return answer
        raise UpstreamError(f"no upstream answered {question.qname} {dnslib.QTYPE.get(question.qtype)} "
                            f"within {opts.deadline:g}s (last error: {last_error or 'deadline reached'})")

    def _exchange_once(self, state: _UpstreamState, wire: bytes, proto: str, timeout: float, deadline: float) -> bytes:
        label = state.upstream.label
        started = self._clock()
        if self._metrics is not None:
            self._metrics.forward_request(label)
        try:
            reply = self._exchanger.exchange(state.upstream, wire, proto, timeout)
            if proto == "udp" and len(reply) >= 4 and reply[2] & 0x02:   # TC: the full answer over TCP
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise UpstreamTimeout(f"upstream {label}: no time left for the TCP retry")
                reply = self._exchanger.exchange(state.upstream, wire, "tcp", min(self.options.timeout, remaining))
        except UpstreamError:
            if self._metrics is not None:
                self._metrics.forward_response(label, "timeout", self._clock() - started)
            raise
        if self._metrics is not None:
            rcode = dnslib.RCODE.get(reply[3] & 0x0F) if len(reply) >= 4 else "FORMERR"
            self._metrics.forward_response(label, str(rcode), self._clock() - started)
        return reply

    def _succeeded(self, state: _UpstreamState) -> None:
        with self._lock:
            state.fails = 0

    def _failed(self, state: _UpstreamState, error: Exception) -> None:
        with self._lock:
            state.fails += 1
            became_down = self.options.max_fails > 0 and state.fails == self.options.max_fails
        log.debug("forward: %s", error)
        if became_down:
            log.warning("forward: upstream %s is down after %d failures in a row: %s",
                        state.upstream, state.fails, error)
            self._start_health_checks()

    def _start_health_checks(self) -> None:
        with self._lock:
            if self._closed.is_set() or (self._checker is not None and self._checker.is_alive()):
                return
            self._checker = threading.Thread(target=self._health_loop, name="dns-forward-health", daemon=True)
            self._checker.start()

    def _health_loop(self) -> None:
        """While any upstream is down: every `health_check` seconds send `. IN NS` to each down
        one; any answer (whatever its rcode) brings it back."""
        probe = dnslib.DNSRecord.question(".", "NS")
        while not self._closed.wait(self.options.health_check):
            with self._lock:
                down = [s for s in self._states if self._down(s)]
            if not down:
                return
            for state in down:
                probe.header.id = self._rng.getrandbits(16)
                proto = "tcp" if self.options.force_tcp else "udp"
                try:
                    self._exchanger.exchange(state.upstream, probe.pack(), proto,
                                             min(HEALTH_CHECK_TIMEOUT, self.options.timeout))
                except UpstreamError as e:
                    if self._metrics is not None:
                        self._metrics.forward_healthcheck_failure(state.upstream.label)
                    log.debug("forward: health check failed: %s", e)
                    continue
                with self._lock:
                    state.fails = 0
                log.info("forward: upstream %s answers again", state.upstream)

    def _reply(self, req: Request, rcode: int) -> Response:
        return Response(record=make_reply(req, rcode), cacheable=False, plugin=self.name)


def _in_zone(qname: str, zone: str) -> bool:
    """qname and zone lowercase; either may end with a dot."""
    zone = zone.rstrip(".")
    if not zone:
        return True
    name = qname.rstrip(".")
    return name == zone or name.endswith("." + zone)


def _same_question(a: dnslib.DNSQuestion, b: dnslib.DNSQuestion) -> bool:
    return (a.qtype == b.qtype and a.qclass == b.qclass
            and str(a.qname).lower() == str(b.qname).lower())
