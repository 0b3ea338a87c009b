"""The cache plugin: keeps forwarded answers for their TTL, like CoreDNS's *cache* plugin.

It sits in front of forward (chain: kubernetes → cache → forward), so it normally sees only names
the cluster zone passed on. Rules (../../shared/reference/dns.md §6, CoreDNS plugin/cache):

- two stores, *success* (NOERROR with data, delegations) and *denial* (NXDOMAIN and NODATA with
  an SOA, and SERVFAIL for `servfail` seconds, 5 by default), each with a capacity (9984);
  when a store is full the oldest-inserted entry is evicted;
- an entry lives for the smallest TTL of its records (for a denial: min(SOA TTL, SOA minimum)),
  clamped to [min TTL, max TTL]: 5..3600 for success, 5..1800 for denial, `cache N` lowers both
  maxima to N;
- a hit answers with every TTL set to what is left (whole seconds) and AA cleared, with the
  request's ID and the question exactly as asked (case included);
- `prefetch AMOUNT [DUR] [PCT]`: an entry hit AMOUNT times within DUR is refreshed in the
  background once less than PCT% of its TTL is left;
- `serve_stale [DUR] [immediate|verify]`: for DUR after expiry an entry may still be served,
  with TTL `stale_ttl` (0): *immediate* answers stale and refreshes in the background, *verify*
  asks upstream first and falls back to the stale entry when that fails (SERVFAIL);
- `disable success|denial ZONES`: those answers are never stored for names in ZONES. The
  configuration adds the cluster zone to both lists, so cluster answers are always current.

Keys are (qname lowercased, qtype, qclass, DO bit). Time comes from an injected clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dnslib

from netplane.dns.chain import Handler, Request, Response, make_reply
from netplane.errors import ConfigError

log = logging.getLogger(__name__)

SUCCESS = "success"
DENIAL = "denial"
STALE_MODES = ("immediate", "verify")

_OPT = dnslib.QTYPE.OPT
_SOA = dnslib.QTYPE.SOA
_NOERROR = dnslib.RCODE.NOERROR
_NXDOMAIN = dnslib.RCODE.NXDOMAIN
_SERVFAIL = dnslib.RCODE.SERVFAIL


@dataclass(frozen=True)
class CacheOptions:
    zones: tuple[str, ...] = (".",)
    success_capacity: int = 9984
    success_max_ttl: int = 3600
    success_min_ttl: int = 5
    denial_capacity: int = 9984
    denial_max_ttl: int = 1800
    denial_min_ttl: int = 5
    servfail_ttl: int = 5                 # 0: SERVFAIL is not cached
    prefetch_amount: int = 0              # 0: no prefetch
    prefetch_duration: float = 60.0
    prefetch_percentage: int = 10
    serve_stale: float = 0.0              # 0: expired entries are never served
    serve_stale_mode: str = "immediate"
    stale_ttl: int = 0                    # the TTL stale answers carry (RFC 8767 suggests 30)
    disable_success: tuple[str, ...] = ()
    disable_denial: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("success_capacity", "denial_capacity"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cache: {name} must be >= 1, got {getattr(self, name)}")
        for kind in (SUCCESS, DENIAL):
            lo, hi = getattr(self, f"{kind}_min_ttl"), getattr(self, f"{kind}_max_ttl")
            if lo < 0 or hi < 0 or lo > hi:
                raise ConfigError(f"cache: {kind} TTLs must satisfy 0 <= min ({lo}) <= max ({hi})")
        if self.servfail_ttl < 0 or self.servfail_ttl > 300:
            raise ConfigError(f"cache: servfail must be 0..300 seconds, got {self.servfail_ttl}")
        if self.prefetch_amount < 0 or self.prefetch_duration <= 0:
            raise ConfigError("cache: prefetch amount must be >= 0 and its duration > 0")
        if not 10 <= self.prefetch_percentage <= 90 and self.prefetch_amount:
            raise ConfigError(f"cache: prefetch percentage must be 10..90, got {self.prefetch_percentage}")
        if self.serve_stale < 0 or self.stale_ttl < 0:
            raise ConfigError("cache: serve_stale duration and stale_ttl must be >= 0")
        if self.serve_stale_mode not in STALE_MODES:
            raise ConfigError(f"cache: serve_stale mode must be one of {', '.join(STALE_MODES)}, "
                              f"got {self.serve_stale_mode!r}")


@dataclass(slots=True)
class _Entry:
    kind: str
    rcode: int
    answer: tuple[dnslib.RR, ...]
    authority: tuple[dnslib.RR, ...]
    additional: tuple[dnslib.RR, ...]
    stored: float                  # clock() when stored
    ttl: int                       # seconds it is fresh
    window_start: float = 0.0      # prefetch: hits counted since this time
    hits: int = 0

    def remaining(self, now: float) -> int:
        """Whole seconds left; 0 or less once expired (CoreDNS truncates the elapsed time)."""
        return self.ttl - int(now - self.stored)


@dataclass
class _Store:
    kind: str
    capacity: int
    entries: dict[tuple, _Entry] = field(default_factory=dict)


def classify(record: dnslib.DNSRecord) -> str | None:
    """success, denial or None (not cacheable), per CoreDNS's response.Typify."""
    header = record.header
    if header.tc or header.opcode != dnslib.OPCODE.QUERY:
        return None
    rcode = header.rcode
    if rcode == _NOERROR and record.rr:
        return SUCCESS
    has_soa = any(rr.rtype == _SOA for rr in record.auth)
    if has_soa and rcode in (_NOERROR, _NXDOMAIN):
        return DENIAL
    if rcode == _SERVFAIL:
        return DENIAL
    if rcode == _NOERROR:                       # delegation, or an empty answer without SOA
        return SUCCESS
    return None


def entry_ttl(record: dnslib.DNSRecord, kind: str, options: CacheOptions) -> int:
    """How long an answer may be cached (seconds): CoreDNS's MinimalTTL, then clamped."""
    if record.header.rcode == _SERVFAIL:
        return options.servfail_ttl
    if kind == DENIAL:
        soas = [rr for rr in record.auth if rr.rtype == _SOA]
        ttls = [min(rr.ttl, rr.rdata.times[4]) for rr in soas]
        lo, hi = options.denial_min_ttl, options.denial_max_ttl
    else:
        ttls = [rr.ttl for rr in (*record.rr, *record.auth, *record.ar) if rr.rtype != _OPT]
        lo, hi = options.success_min_ttl, options.success_max_ttl
    ttl = min(ttls) if ttls else lo
    return max(lo, min(hi, ttl))


def cache_key(record: dnslib.DNSRecord) -> tuple[str, int, int, bool]:
    q = record.q
    do_bit = any(rr.rtype == _OPT and rr.ttl & 0x8000 for rr in record.ar)
    return (str(q.qname).lower(), q.qtype, q.qclass, do_bit)


def _in_any(qname: str, zones: tuple[str, ...]) -> bool:
    name = qname.rstrip(".")
    for zone in zones:
        zone = zone.lower().rstrip(".")
        if not zone or name == zone or name.endswith("." + zone):
            return True
    return False


def _spawn_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="dns-cache-refresh", daemon=True).start()


class CachePlugin:
    """A Plugin (call it with the next handler) that is also the cache Handler.

    `metrics` is a netplane.dns.metrics.DnsMetrics or None; `clock` is monotonic seconds;
    `spawn(work)` runs background refreshes (a daemon thread each by default; tests run them
    inline). Thread-safe.
    """

    name = "cache"

    def __init__(self, options: CacheOptions | None = None, *, metrics=None,
                 clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] = _spawn_thread) -> None:
        self.options = options or CacheOptions()
        self._metrics = metrics
        self._clock = clock
        self._spawn = spawn
        self._lock = threading.Lock()
        self._stores = {SUCCESS: _Store(SUCCESS, self.options.success_capacity),
                        DENIAL: _Store(DENIAL, self.options.denial_capacity)}
        self._refreshing: set[tuple] = set()
        self._next: Handler | None = None
        self.prefetches = 0
        self.served_stale = 0
        if metrics is not None:
            metrics.set_cache_zones(self.options.zones)
            metrics.set_cache_entries_source(self.sizes)

    def __call__(self, next_handler: Handler | None) -> CachePlugin:
        self._next = next_handler
        return self

    def sizes(self) -> dict[str, int]:
        return {kind: len(store.entries) for kind, store in self._stores.items()}

    # -- Handler ---------------------------------------------------------------------------------

    def serve(self, req: Request) -> Response | None:
        record = req.record
        if self._next is None:
            return None
        opts = self.options
        if len(record.questions) != 1 or record.header.opcode != dnslib.OPCODE.QUERY:
            return None                                  # the chain asks the next handler
        qname = str(record.q.qname).lower()
        if not _in_any(qname, opts.zones) or (_in_any(qname, opts.disable_success)
                                             and _in_any(qname, opts.disable_denial)):
            return None
        key = cache_key(record)
        now = self._clock()
        if self._metrics is not None:
            self._metrics.cache_request()
        with self._lock:
            entry = self._stores[DENIAL].entries.get(key) or self._stores[SUCCESS].entries.get(key)
        if entry is not None:
            left = entry.remaining(now)
            if left > 0:
                if self._metrics is not None:
                    self._metrics.cache_hit(entry.kind)
                self._maybe_prefetch(req, key, entry, now, left)
                return self._from_entry(req, entry, left)
            if (opts.serve_stale and entry.rcode != _SERVFAIL
                    and now - entry.stored - entry.ttl <= opts.serve_stale):
                return self._serve_stale(req, key, entry)
        if self._metrics is not None:
            self._metrics.cache_miss()
        response = self._next.serve(req)
        if response is not None:
            self._store(key, qname, response.record, self._clock())
        return response

    # -- internals -------------------------------------------------------------------------------

    def _serve_stale(self, req: Request, key: tuple, entry: _Entry) -> Response | None:
        if self.options.serve_stale_mode == "verify":
            response = self._next.serve(req)
            if response is not None and response.record.header.rcode != _SERVFAIL:
                self._store(key, key[0], response.record, self._clock())
                return response
        else:
            self._refresh(req, key)
        self.served_stale += 1
        if self._metrics is not None:
            self._metrics.cache_served_stale()
        return self._from_entry(req, entry, self.options.stale_ttl)

    def _maybe_prefetch(self, req: Request, key: tuple, entry: _Entry, now: float, left: int) -> None:
        opts = self.options
        if not opts.prefetch_amount:
            return
        with self._lock:
            if now - entry.window_start > opts.prefetch_duration:
                entry.window_start, entry.hits = now, 0
            entry.hits += 1
            due = entry.hits >= opts.prefetch_amount and left <= entry.ttl * opts.prefetch_percentage / 100
        if due and self._refresh(req, key):
            self.prefetches += 1
            if self._metrics is not None:
                self._metrics.cache_prefetch()

    def _refresh(self, req: Request, key: tuple) -> bool:
        """Ask the next handler again in the background and store what it says (a SERVFAIL
        does not replace a good entry). False when a refresh of this key is already running."""
        with self._lock:
            if key in self._refreshing:
                return False
            self._refreshing.add(key)
        copy = Request(record=req.record, proto=req.proto, client=req.client, max_size=req.max_size, raw=req.raw)

        def work() -> None:
            try:
                response = self._next.serve(copy)
                if response is not None and response.record.header.rcode != _SERVFAIL:
                    self._store(key, key[0], response.record, self._clock())
            except Exception:  # a background refresh must never take the worker down
                log.exception("cache: refreshing %s failed", key[0])
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        self._spawn(work)
        return True

    def _store(self, key: tuple, qname: str, record: dnslib.DNSRecord, now: float) -> None:
        kind = classify(record)
        if kind is None:
            return
        opts = self.options
        disabled = opts.disable_success if kind == SUCCESS else opts.disable_denial
        if _in_any(qname, disabled):
            return
        ttl = entry_ttl(record, kind, opts)
        if ttl <= 0:
            return
        entry = _Entry(kind=kind, rcode=record.header.rcode, answer=tuple(record.rr), authority=tuple(record.auth),
                       additional=tuple(rr for rr in record.ar if rr.rtype != _OPT),
                       stored=now, ttl=ttl, window_start=now)
        other = self._stores[DENIAL if kind == SUCCESS else SUCCESS]
        store = self._stores[kind]
        evicted = False
        with self._lock:
            other.entries.pop(key, None)                 # a key lives in one store only
            if store.entries.pop(key, None) is None and len(store.entries) >= store.capacity:
                del store.entries[next(iter(store.entries))]
                evicted = True
            store.entries[key] = entry
        if evicted and self._metrics is not None:
            self._metrics.cache_eviction(kind)

    def _from_entry(self, req: Request, entry: _Entry, ttl: int) -> Response:
        reply = make_reply(req, entry.rcode)
        reply.header.aa = 0
        asked = req.record.q.qname
        asked_lower = str(asked).lower()
        reply.rr = [_with_ttl(rr, ttl, asked, asked_lower) for rr in entry.answer]
        reply.auth = [_with_ttl(rr, ttl, asked, asked_lower) for rr in entry.authority]
        reply.ar = [_with_ttl(rr, ttl, asked, asked_lower) for rr in entry.additional] + list(reply.ar)
        return Response(record=reply, cacheable=False, plugin=self.name)


def _with_ttl(rr: dnslib.RR, ttl: int, asked: dnslib.DNSLabel, asked_lower: str) -> dnslib.RR:
    """A copy of `rr` (records are shared between hits, so never mutated) with the TTL left and,
    when it is the asked name, the name spelled as asked."""
    name = asked if str(rr.rname).lower() == asked_lower else rr.rname
    return dnslib.RR(name, rr.rtype, rr.rclass, ttl, rr.rdata)
