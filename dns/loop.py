"""Loop detection, like CoreDNS's *loop* plugin.

A forwarding loop (the upstream is this server itself, typically because the node's resolv.conf
says 127.0.0.53 or names the cluster DNS) turns every forwarded query into an endless ping-pong.
At startup the detector sends `HINFO <random>.<random>.<zone>` upstream; the loop plugin, placed
before forward in the chain, recognises its own probe name when it arrives back at this server.
Seeing it more than twice means the upstream sends our queries back to us: the detector logs a
CRITICAL error naming the upstreams, answers the probe with SERVFAIL (which unwinds the loop)
and calls `on_loop` — the configuration wires that to stop forwarding, and the server's main to
exit non-zero (CoreDNS exits fatally, so Kubernetes shows CrashLoopBackOff).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import dnslib

from netplane.dns.chain import Handler, Request, Response, make_reply
from netplane.errors import NetplaneError

log = logging.getLogger(__name__)

TROUBLESHOOTING = "https://coredns.io/plugins/loop#troubleshooting"
# More than this many sightings of our own probe is a loop (CoreDNS: `seen > 2`).
THRESHOLD = 2


class LoopDetected(NetplaneError):
    """The forward upstreams send our own queries back to us."""


class LoopDetector:
    """Owns the probe name and the sighting count; `__call__(next)` makes the loop plugin."""

    name = "loop"

    def __init__(self, zone: str = ".", *, upstreams: str = "", rng: random.Random | None = None,
                 on_loop: Callable[[str], None] | None = None) -> None:
        rng = rng or random.SystemRandom()
        zone = zone.lower().rstrip(".")
        self.zone = zone + "." if zone else "."
        # CoreDNS: two random unsigned integers under the server block's zone.
        self.qname = f"{rng.getrandbits(63)}.{rng.getrandbits(63)}.{zone}".rstrip(".") + "."
        self.upstreams = upstreams
        self._callbacks: list[Callable[[str], None]] = [on_loop] if on_loop else []
        self._lock = threading.Lock()
        self._seen = 0
        self.detected = threading.Event()
        self.message = ""
        self._next: Handler | None = None

    def add_callback(self, on_loop: Callable[[str], None]) -> None:
        self._callbacks.append(on_loop)

    @property
    def seen(self) -> int:
        return self._seen

    def probe_record(self) -> dnslib.DNSRecord:
        return dnslib.DNSRecord.question(self.qname, "HINFO")

    # -- the plugin ------------------------------------------------------------------------------

    def __call__(self, next_handler: Handler | None) -> LoopDetector:
        self._next = next_handler
        return self

    def serve(self, req: Request) -> Response | None:
        q = req.record.q
        if q.qtype == dnslib.QTYPE.HINFO and str(q.qname).lower() == self.qname:
            self._saw_probe()
            if self.detected.is_set():
                return Response(record=make_reply(req, dnslib.RCODE.SERVFAIL), plugin=self.name)
        return None                                      # the chain asks the next handler

    def _saw_probe(self) -> None:
        with self._lock:
            self._seen += 1
            tripped = self._seen > THRESHOLD and not self.detected.is_set()
            if tripped:
                self.message = (f'Loop ({self.upstreams or "upstream"} -> this server) detected for zone '
                                f'"{self.zone}", see {TROUBLESHOOTING}. Query: "HINFO {self.qname}"')
                self.detected.set()
        if tripped:
            log.critical("%s", self.message)
            for callback in self._callbacks:
                try:
                    callback(self.message)
                except Exception:
                    log.exception("loop: on_loop callback failed")

    # -- startup probe ---------------------------------------------------------------------------

    def probe(self, send: Callable[[dnslib.DNSRecord], object], *, tries: int = 10, interval: float = 1.0,
              wait: Callable[[float], object] | None = None) -> bool:
        """Send the probe with `send(record)` (e.g. ForwardPlugin.exchange) until some answer
        comes back, at most `tries` times `interval` apart when sending fails. Returns True when
        a loop was detected. Any answer (whatever its rcode) without a loop ends the probing."""
        wait = wait or threading.Event().wait
        for attempt in range(1, tries + 1):
            if self.detected.is_set():
                return True
            try:
                send(self.probe_record())
            except Exception as e:  # the upstream may simply not be up yet: try again
                log.warning("loop: probe %d/%d for %s got no answer: %s", attempt, tries, self.qname, e)
                if attempt < tries:
                    wait(interval)
                continue
            return self.detected.is_set()
        return self.detected.is_set()
