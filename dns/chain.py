"""The resolver's plugin chain: requests, responses, handlers, and how they are linked.

As in CoreDNS (`Plugin func(Handler) Handler`), a plugin is a value that builds a handler given
the handler after it, and the chain order is one list. A handler's `serve` returns a complete
Response, or None for "not mine": the chain then asks the next handler. A handler that wraps the
rest of the chain (a cache) may call `next.serve(req)` itself; `next` always answers (the end of
the chain answers REFUSED), and such a handler must then return a Response, never None, or the
rest of the chain would run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dnslib

log = logging.getLogger(__name__)

# The EDNS0 UDP payload size this server advertises (the DNS flag day 2020 value).
SERVER_UDP_SIZE = 1232
_DO_BIT = 1 << 15
# DNS header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2.2 for CD).
_QR, _AA, _RA = 1 << 15, 1 << 10, 1 << 7
_KEEP_FROM_QUERY = (0xF << 11) | (1 << 8) | (1 << 4)  # opcode, RD, CD


@dataclass(slots=True)
class Request:
    record: dnslib.DNSRecord  # the parsed query
    proto: str  # "udp" | "tcp"
    client: tuple[str, int]
    max_size: int  # 512, or the EDNS0 UDP size (capped at 4096); 65535 for TCP
    raw: bytes = b""  # the query as received (for forwarding without repacking)


@dataclass(slots=True)
class Response:
    record: dnslib.DNSRecord  # a complete reply (header id/flags/question set)
    # True only for answers that depend solely on the cluster state: the server may keep the
    # packed bytes until the zone generation changes.
    cacheable: bool = False
    plugin: str = ""  # who answered (the `plugin` label of coredns_dns_responses_total)


class Handler(Protocol):
    name: str

    def serve(self, req: Request) -> Response | None: ...


Plugin = Callable[[Handler | None], Handler]


def query_edns(record: dnslib.DNSRecord) -> dnslib.RR | None:
    """The query's OPT pseudo-record, if it has one."""
    for rr in record.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            return rr
    return None


def make_reply(req: Request, rcode: int, *, aa: bool = False) -> dnslib.DNSRecord:
    """A reply skeleton: same id, opcode and questions (case preserved, as received), RD and CD
    copied, RA set; an EDNS0 OPT with our UDP size and the query's DO bit when it had one."""
    query = req.record
    # The flags word built directly: dnslib's per-field setters cost more than the rest of
    # this function (this runs for every slow-path answer).
    bitmap = (query.header.bitmap & _KEEP_FROM_QUERY) | _QR | _RA | (rcode & 0xF)
    if aa:
        bitmap |= _AA
    header = dnslib.DNSHeader(id=query.header.id, bitmap=bitmap)
    reply = dnslib.DNSRecord(header, questions=list(query.questions))
    opt = query_edns(query)
    if opt is not None:
        flags = "do" if opt.ttl & _DO_BIT else ""
        reply.add_ar(dnslib.EDNS0(udp_len=SERVER_UDP_SIZE, flags=flags,
                                  ext_rcode=(rcode >> 4) & 0xFF))
    reply.set_header_qa()
    return reply


class _Refuse:
    """The end of the chain: nobody claimed the name. CoreDNS answers REFUSED when no server
    block's zone matches the query (and a chain with no forwarder has nothing else to say);
    SERVFAIL would wrongly suggest a transient failure worth retrying elsewhere."""

    name = ""

    def serve(self, req: Request) -> Response:
        return Response(make_reply(req, dnslib.RCODE.REFUSED), cacheable=False, plugin="")


class _Link:
    """One position in the chain: ask `handler`, and on None the rest of the chain."""

    __slots__ = ("handler", "rest", "name")

    def __init__(self, handler: Handler, rest: Handler) -> None:
        self.handler = handler
        self.rest = rest
        self.name = handler.name

    def serve(self, req: Request) -> Response | None:
        try:
            response = self.handler.serve(req)
        except Exception:
            # A bug in one plugin must cost one SERVFAIL, not the server (CoreDNS recovers
            # plugin panics the same way).
            log.exception("dns plugin %s failed on %s", self.name, _describe(req))
            return Response(make_reply(req, dnslib.RCODE.SERVFAIL), plugin=self.name)
        if response is not None:
            return response
        return self.rest.serve(req)


def _describe(req: Request) -> str:
    q = req.record.questions[0] if req.record.questions else None
    if q is None:
        return "a query without a question"
    return f"{q.qname} {dnslib.QTYPE.get(q.qtype, q.qtype)} from {req.client[0]}"


def build_chain(plugins: Sequence[Plugin]) -> Handler:
    """Link plugins in order (first = asked first). The result always returns a Response."""
    chain: Handler = _Refuse()
    for plugin in reversed(plugins):
        chain = _Link(plugin(chain), chain)
    return chain
