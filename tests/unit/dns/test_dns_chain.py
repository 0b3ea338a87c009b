"""The plugin chain and the reply skeleton."""

from __future__ import annotations

import dnslib
import pytest

from netplane.dns.chain import Request, Response, build_chain, make_reply


def request(qname="MiXeD.Example.", qtype="A", *, edns=None, do=False, rd=1, cd=0):
    q = dnslib.DNSRecord.question(qname, qtype)
    q.header.rd = rd
    q.header.cd = cd
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns, flags="do" if do else ""))
    return Request(q, "udp", ("127.0.0.1", 1), 512, raw=q.pack())


def test_make_reply_keeps_id_question_and_flags():
    req = request(rd=1, cd=1)
    reply = make_reply(req, dnslib.RCODE.NXDOMAIN, aa=True)
    h = reply.header
    assert (h.id, h.qr, h.aa, h.rd, h.ra, h.cd, h.rcode) == (
        req.record.header.id, 1, 1, 1, 1, 1, dnslib.RCODE.NXDOMAIN)
    assert str(reply.questions[0].qname) == "MiXeD.Example."  # case as received
    wire = dnslib.DNSRecord.parse(reply.pack())
    assert str(wire.questions[0].qname) == "MiXeD.Example."
    assert reply.ar == []  # no EDNS in, none out
    assert make_reply(request(rd=0), 0).header.rd == 0


@pytest.mark.parametrize("do", [False, True])
def test_make_reply_echoes_edns_with_our_size_and_the_do_bit(do):
    reply = make_reply(request(edns=4096, do=do), dnslib.RCODE.NOERROR)
    wire = dnslib.DNSRecord.parse(reply.pack())
    (opt,) = wire.ar
    assert opt.rtype == dnslib.QTYPE.OPT
    assert opt.rclass == 1232
    assert bool(opt.ttl & (1 << 15)) is do


class Fixed:
    def __init__(self, name, answer):
        self.name = name
        self.answer = answer
        self.calls = 0

    def serve(self, req):
        self.calls += 1
        if self.answer is None:
            return None
        return Response(make_reply(req, self.answer), plugin=self.name)


def test_first_handler_that_answers_wins_and_none_passes_on():
    declines, answers, never = Fixed("a", None), Fixed("b", 0), Fixed("c", 0)
    chain = build_chain([lambda n: declines, lambda n: answers, lambda n: never])
    resp = chain.serve(request())
    assert resp.plugin == "b"
    assert (declines.calls, answers.calls, never.calls) == (1, 1, 0)


def test_nobody_answering_is_refused():
    resp = build_chain([lambda n: Fixed("a", None)]).serve(request())
    assert resp.record.header.rcode == dnslib.RCODE.REFUSED
    assert resp.cacheable is False
    assert build_chain([]).serve(request()).record.header.rcode == dnslib.RCODE.REFUSED


def test_a_handler_gets_the_rest_of_the_chain_as_next():
    seen = {}

    class Wrapper:
        name = "cache"

        def __init__(self, nxt):
            self.next = nxt

        def serve(self, req):
            resp = self.next.serve(req)
            seen["from"] = resp.plugin
            return Response(resp.record, plugin=self.name)

    last = Fixed("forward", 0)
    chain = build_chain([lambda n: Fixed("kubernetes", None), Wrapper, lambda n: last])
    assert chain.serve(request()).plugin == "cache"
    assert seen["from"] == "forward" and last.calls == 1
    # The last plugin's next still answers (REFUSED) rather than being None.
    lone = build_chain([Wrapper])
    assert lone.serve(request()).record.header.rcode == dnslib.RCODE.REFUSED


def test_a_crashing_handler_costs_one_servfail():
    class Broken:
        name = "broken"

        def serve(self, req):
            raise RuntimeError("bug")

    resp = build_chain([lambda n: Broken(), lambda n: Fixed("b", 0)]).serve(request())
    assert resp.record.header.rcode == dnslib.RCODE.SERVFAIL
    assert resp.plugin == "broken"
