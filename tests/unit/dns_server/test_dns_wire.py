"""netplane.dns.wire: header decisions, header-only replies, UDP truncation, the wire cache."""

from __future__ import annotations

import struct

import dnslib
import pytest

from netplane.dns.wire import (
    ACCEPT, FORMERR, HITS, IGNORE, NOTIMP, EntryMeta, WireCache, check_header, header_reply, max_udp_size,
    pack_reply,
)


def query(name: str = "web.default.svc.cluster.local", qtype: str = "A", **kw) -> dnslib.DNSRecord:
    return dnslib.DNSRecord.question(name, qtype, **kw)


def with_header(data: bytes, *, flags: int | None = None, counts: tuple[int, int, int, int] | None = None) -> bytes:
    qid, old_flags, *old_counts = struct.unpack_from("!HHHHHH", data)
    head = struct.pack("!HHHHHH", qid, old_flags if flags is None else flags, *(counts or old_counts))
    return head + data[12:]


class TestCheckHeader:
    def test_plain_query_is_accepted(self):
        assert check_header(query().pack()) == ACCEPT

    @pytest.mark.parametrize("length", [0, 1, 2, 11])
    def test_runts_are_ignored(self, length):
        assert check_header(query().pack()[:length]) == IGNORE

    def test_responses_are_ignored(self):
        assert check_header(with_header(query().pack(), flags=0x8100)) == IGNORE

    @pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
    def test_other_opcodes_get_notimp(self, opcode):
        assert check_header(with_header(query().pack(), flags=opcode << 11)) == NOTIMP

    @pytest.mark.parametrize("counts", [(0, 0, 0, 0), (2, 0, 0, 0), (1, 2, 0, 0), (1, 0, 2, 0), (1, 0, 0, 3),
                                        (65535, 65535, 65535, 65535)])
    def test_odd_counts_get_formerr(self, counts):
        assert check_header(with_header(query().pack(), counts=counts)) == FORMERR

    def test_edns_query_with_one_additional_is_accepted(self):
        q = query()
        q.add_ar(dnslib.EDNS0(udp_len=4096))
        assert check_header(q.pack()) == ACCEPT


def test_header_reply_keeps_id_opcode_rd_and_sets_rcode():
    data = with_header(struct.pack("!H", 0xBEEF) + query().pack()[2:], flags=(2 << 11) | 0x0100)
    reply = dnslib.DNSRecord.parse(header_reply(data, dnslib.RCODE.NOTIMP))
    assert reply.header.id == 0xBEEF
    assert reply.header.qr == 1 and reply.header.opcode == 2 and reply.header.rd == 1
    assert reply.header.rcode == dnslib.RCODE.NOTIMP
    assert (reply.header.q, reply.header.a, reply.header.auth, reply.header.ar) == (0, 0, 0, 0)


def test_header_reply_does_not_copy_query_bits_it_should_not():
    # AA/TC/RA/Z and the rcode bits of the query must not leak into the reply.
    data = with_header(query().pack(), flags=0x0400 | 0x0200 | 0x0080 | 0x0070 | 0x000F)
    reply = dnslib.DNSRecord.parse(header_reply(data, dnslib.RCODE.FORMERR))
    assert (reply.header.aa, reply.header.tc, reply.header.ra, reply.header.rd) == (0, 0, 0, 0)
    assert reply.header.rcode == dnslib.RCODE.FORMERR


@pytest.mark.parametrize("advertised,expected", [(None, 512), (100, 512), (1232, 1232), (4096, 4096), (65000, 4096)])
def test_max_udp_size(advertised, expected):
    q = query()
    if advertised is not None:
        q.add_ar(dnslib.EDNS0(udp_len=advertised))
    assert max_udp_size(dnslib.DNSRecord.parse(q.pack())) == expected


def big_reply(n: int, *, edns: bool = False) -> dnslib.DNSRecord:
    q = query("HeadLess.default.svc.cluster.local")
    if edns:
        q.add_ar(dnslib.EDNS0(udp_len=1232))
    r = q.reply()
    for i in range(n):
        r.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A(f"10.1.{i // 250}.{i % 250 + 1}"), ttl=5))
    if edns:
        r.add_ar(dnslib.EDNS0(udp_len=1232))
    return r


class TestPackReply:
    def test_small_reply_is_untouched(self):
        r = big_reply(3)
        packed, truncated = pack_reply(r, 512)
        assert not truncated and packed == r.pack()

    def test_big_reply_is_truncated_with_question_kept(self):
        packed, truncated = pack_reply(big_reply(100), 512)
        assert truncated and len(packed) <= 512
        parsed = dnslib.DNSRecord.parse(packed)
        assert parsed.header.tc == 1 and parsed.header.qr == 1 and parsed.header.aa == 1
        assert str(parsed.q.qname) == "HeadLess.default.svc.cluster.local."
        assert parsed.rr == [] and parsed.auth == [] and parsed.ar == []

    def test_truncated_reply_keeps_opt(self):
        packed, truncated = pack_reply(big_reply(100, edns=True), 1232)
        parsed = dnslib.DNSRecord.parse(packed)
        assert truncated and parsed.header.tc == 1
        assert [rr.rtype for rr in parsed.ar] == [dnslib.QTYPE.OPT]

    def test_same_reply_fits_a_bigger_size(self):
        r = big_reply(100)
        packed, truncated = pack_reply(r, 4096)
        assert not truncated and len(dnslib.DNSRecord.parse(packed).rr) == 100


META = EntryMeta("A", "NOERROR", "kubernetes", 40, 80)


class TestWireCache:
    def test_store_only_at_the_current_generation_and_epoch(self):
        cache = WireCache()
        cache.reset(7)
        assert not cache.store(b"k", b"r", META, 6, cache.epoch)
        assert not cache.store(b"k", b"r", META, 7, cache.epoch + 1)
        assert cache.store(b"k", b"r", META, 7, cache.epoch)
        assert cache.entries[b"k"][0] == b"r"

    def test_reset_empties_and_invalidate_forces_a_reset(self):
        cache = WireCache()
        cache.reset(1)
        cache.store(b"k", b"r", META, 1, 0)
        cache.invalidate()
        assert cache.generation != 1  # the socket loop will see a mismatch and reset
        assert not cache.store(b"k2", b"r", META, 1, 0)  # built before the invalidation
        cache.reset(1)
        assert len(cache) == 0

    def test_fold_reports_each_hit_exactly_once_across_resets(self):
        cache = WireCache()
        cache.reset(1)
        cache.store(b"a", b"r", META, 1, 0)
        other = EntryMeta("AAAA", "NOERROR", "kubernetes", 40, 60)
        cache.store(b"b", b"r", other, 1, 0)
        cache.entries[b"a"][HITS] += 3
        seen: dict[EntryMeta, int] = {}

        def sink(meta, n):
            seen[meta] = seen.get(meta, 0) + n

        cache.fold(sink)
        assert seen == {META: 3}
        cache.entries[b"a"][HITS] += 2
        cache.entries[b"b"][HITS] += 1
        cache.reset(2)  # retired, not yet folded
        cache.fold(sink)
        cache.fold(sink)
        assert seen == {META: 5, other: 1}

    def test_many_resets_between_scrapes_keep_counts_but_not_dicts(self):
        cache = WireCache()
        for gen in range(1, 40):
            cache.reset(gen)
            cache.store(b"a", b"r", META, gen, 0)
            cache.entries[b"a"][HITS] += 1
        assert len(cache._retired) <= 9
        total = []
        cache.fold(lambda meta, n: total.append(n))
        assert sum(total) == 39

    def test_full_cache_starts_over_without_losing_counts(self):
        cache = WireCache(max_entries=3)
        cache.reset(1)
        for i in range(3):
            cache.store(bytes([i]), b"r", META, 1, 0)
            cache.entries[bytes([i])][HITS] += 1
        cache.store(b"x", b"r", META, 1, 0)
        assert list(cache.entries) == [b"x"]
        total = []
        cache.fold(lambda meta, n: total.append(n))
        assert sum(total) == 3

    def test_byte_budget_bounds_memory(self):
        cache = WireCache(max_bytes=1000)
        cache.reset(1)
        for i in range(5):
            cache.store(bytes([i]) * 10, b"r" * 290, META, 1, 0)  # 300 bytes each
        assert len(cache) == 2  # 3 fitted, the 4th started over
