"""Wire-level pieces of the server that need no socket: header checks, error replies built from
the header alone, UDP truncation, and the wire cache of packed responses.

The wire cache is what makes a Python resolver fast (dns.md §7): a repeated query is answered
from the packed bytes of an earlier reply with only the 2-byte ID replaced, without parsing.
The key is the query *after* its ID, so everything that can change the answer is part of it:
flags (RD, CD), the question with its exact case (0x20 case is echoed back), the EDNS0 OPT
record (its UDP size decides truncation, its DO bit is echoed). Entries are valid only while
the zone generation they were built at is current; any cluster change invalidates them all.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import dnslib

HEADER_LEN = 12
# Largest UDP query we read. Real queries are far smaller; a longer datagram is cut and then
# fails to parse (FORMERR). Not 65535: recvfrom allocates the full size before shrinking it,
# which costs a measurable share of a fast-path answer.
RECV_SIZE = 4096
UDP_MIN_SIZE = 512  # RFC 1035 limit for clients without EDNS0
UDP_MAX_SIZE = 4096  # cap on the client's advertised EDNS0 size (contract in chain.Request)
TCP_MAX_SIZE = 65535

_QR = 0x8000
_OPCODE_SHIFT = 11
OPCODE_QUERY = 0

# What to do with a datagram, decided from its header before any parsing (miekg/dns's default
# accept function, which CoreDNS uses): responses and runts are ignored, unknown opcodes get
# NOTIMP, anything but a plain one-question query gets FORMERR.
ACCEPT, IGNORE, NOTIMP, FORMERR = "accept", "ignore", "notimp", "formerr"


def check_header(data: bytes) -> str:
    if len(data) < HEADER_LEN:
        return IGNORE
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHH", data, 2)
    if flags & _QR:
        return IGNORE
    if (flags >> _OPCODE_SHIFT) & 0xF != OPCODE_QUERY:
        return NOTIMP
    if qdcount != 1 or ancount > 1 or nscount > 1 or arcount > 2:
        return FORMERR
    return ACCEPT


def header_reply(data: bytes, rcode: int) -> bytes:
    """A reply carrying only a header: the query's ID, opcode and RD, QR set, `rcode`, no
    records. Used when the query cannot (or need not) be parsed: FORMERR, NOTIMP."""
    qid, flags = struct.unpack_from("!HH", data, 0)
    reply_flags = _QR | (flags & 0x7800) | (flags & 0x0100) | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, reply_flags, 0, 0, 0, 0)


def max_udp_size(record: dnslib.DNSRecord) -> int:
    """The reply size the client accepts over UDP: 512 without EDNS0, else its advertised size
    clamped to [512, 4096]."""
    for rr in record.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            return min(max(rr.rclass, UDP_MIN_SIZE), UDP_MAX_SIZE)
    return UDP_MIN_SIZE


def pack_reply(record: dnslib.DNSRecord, max_size: int) -> tuple[bytes, bool]:
    """Pack `record`; if it exceeds `max_size`, pack instead a copy with TC=1 whose answer and
    authority sections are empty and whose additional section keeps only the OPT record (the
    client retries over TCP). Returns (bytes, truncated)."""
    packed = record.pack()
    if len(packed) <= max_size:
        return packed, False
    header = dnslib.DNSHeader(id=record.header.id, bitmap=record.header.bitmap, q=0, a=0, auth=0, ar=0)
    header.tc = 1
    short = dnslib.DNSRecord(header, questions=list(record.questions),
                             ar=[rr for rr in record.ar if rr.rtype == dnslib.QTYPE.OPT])
    packed = short.pack()
    if len(packed) > max_size:  # a question too long for the client's size: header only
        packed = packed[:2] + struct.pack("!HHHHH", struct.unpack_from("!H", packed, 2)[0], 0, 0, 0, 0)
    return packed, True


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What the metrics need to know about every answer an entry gives (labels and sizes)."""

    qtype: str
    rcode: str
    plugin: str
    request_size: int
    response_size: int


# An entry is a list for speed (the hot loop does `entry[HITS] += 1`):
# [response bytes after the ID, hits, EntryMeta, hits already folded into the metrics]
RESPONSE, HITS, META, FOLDED = 0, 1, 2, 3

FoldSink = Callable[[EntryMeta, int], None]


class WireCache:
    """Packed responses keyed by the query bytes after the ID, for one generation.

    Single writer for `entries` replacement: the thread that runs the socket loop calls
    `reset()`. `store()` may be called from other threads (a dict assignment is atomic under
    the GIL); an entry stored into a dict that has just been retired is simply lost.

    Hit counts live on the entries and reach the metrics through `fold(sink)`, run at scrape
    time and for retired dictionaries; folding keeps a per-entry "already folded" mark instead
    of zeroing the count, so a hit counted concurrently by the socket loop is never lost.
    """

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 64 << 20) -> None:
        self.max_entries = max_entries
        # Entries are small (~50-byte keys, 100-500-byte answers) but a truncation-sized answer
        # is up to 4 KB: the byte budget bounds memory whatever the mix.
        self.max_bytes = max_bytes
        self._bytes = 0
        self.entries: dict[bytes, list] = {}
        self.generation = -1  # no zone generation is negative: the first lookup resets
        self.epoch = 0  # bumped when the handler changes (config reload)
        self._retired: list[dict[bytes, list]] = []
        self._pending: dict[EntryMeta, int] = {}  # folded out of retired dicts, not yet reported
        self._fold_lock = threading.Lock()

    def reset(self, generation: int) -> dict[bytes, list]:
        """Start an empty cache for `generation`; returns the new entries dict. O(1): the old
        dict is kept aside until the next fold (at most a few, then folded right here)."""
        with self._fold_lock:
            if self.entries:
                self._retired.append(self.entries)
            self.entries = {}
            self._bytes = 0
            self.generation = generation
            if len(self._retired) > 8:
                self._fold_retired()
        return self.entries

    def invalidate(self) -> None:
        """From any thread: entries built so far must not be used or stored any more (the chain
        changed). The next lookup by the socket loop sees the generation mismatch and resets."""
        self.epoch += 1
        self.generation = -1

    def store(self, key: bytes, response_after_id: bytes, meta: EntryMeta, generation: int, epoch: int) -> bool:
        """Keep a response built at (`generation`, `epoch`), unless the cache moved on since."""
        if generation != self.generation or epoch != self.epoch:
            return False
        entries = self.entries
        size = len(key) + len(response_after_id)
        if len(entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            # Full: start over rather than evict one by one; at 100k distinct queries per
            # generation this is rare and keeps the hot loop free of bookkeeping.
            with self._fold_lock:
                self._retired.append(entries)
                entries = self.entries = {}
                self._bytes = 0
        self._bytes += size
        entries[key] = [response_after_id, 0, meta, 0]
        return True

    def fold(self, sink: FoldSink) -> None:
        """Report unreported hits of every entry (live and retired) to `sink(meta, n)`."""
        with self._fold_lock:
            self._fold_retired()
            pending, self._pending = self._pending, {}
            for entry in list(self.entries.values()):
                hits = entry[HITS]
                new = hits - entry[FOLDED]
                if new > 0:
                    entry[FOLDED] = hits
                    pending[entry[META]] = pending.get(entry[META], 0) + new
        for meta, n in pending.items():
            sink(meta, n)

    def fold_retired(self) -> None:
        """Sum the counts of retired dicts by meta so the dicts can be freed (the socket loop
        calls this when they pile up between scrapes)."""
        with self._fold_lock:
            self._fold_retired()

    def _fold_retired(self) -> None:
        retired, self._retired = self._retired, []
        pending = self._pending
        for entries in retired:
            for entry in entries.values():
                new = entry[HITS] - entry[FOLDED]
                if new > 0:
                    pending[entry[META]] = pending.get(entry[META], 0) + new

    def __len__(self) -> int:
        return len(self.entries)
