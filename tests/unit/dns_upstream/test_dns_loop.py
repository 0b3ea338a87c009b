"""LoopDetector: the probe comes back through a forwarder whose upstream is the chain itself."""

from __future__ import annotations

import random

import dnslib

from netplane.dns.chain import Request, build_chain
from netplane.dns.forward import ForwardOptions, ForwardPlugin, Upstream, UpstreamError
from netplane.dns.loop import LoopDetector

SELF = Upstream("127.0.0.1", 53)


class LoopingExchanger:
    """An upstream that is this very server: every query re-enters the chain."""

    def __init__(self) -> None:
        self.chain = None
        self.hops = 0

    def exchange(self, upstream, query, proto, timeout):
        self.hops += 1
        record = dnslib.DNSRecord.parse(query)
        response = self.chain.serve(Request(record=record, proto=proto, client=("127.0.0.1", 1), max_size=65535,
                                            raw=query))
        return response.record.pack()


class NxdomainExchanger:
    def exchange(self, upstream, query, proto, timeout):
        return dnslib.DNSRecord.parse(query).reply(rcode=dnslib.RCODE.NXDOMAIN).pack()


def build(exchanger, messages):
    forward = ForwardPlugin(ForwardOptions(upstreams=(SELF,)), exchanger=exchanger, rng=random.Random(1))
    detector = LoopDetector(".", upstreams=SELF.label, rng=random.Random(2), on_loop=forward.disable)
    detector.add_callback(messages.append)
    return build_chain([detector, forward]), forward, detector


def test_probe_name_is_random_under_the_zone():
    a, b = LoopDetector("cluster.local"), LoopDetector("cluster.local")
    assert a.qname != b.qname and a.qname.endswith(".cluster.local.") and a.qname.count(".") == 4
    assert LoopDetector(".").qname.count(".") == 2
    assert a.probe_record().q.qtype == dnslib.QTYPE.HINFO


def test_a_loop_is_detected_and_forwarding_stops():
    messages: list[str] = []
    looping = LoopingExchanger()
    chain, forward, detector = build(looping, messages)
    looping.chain = chain
    assert detector.probe(forward.exchange, tries=3, wait=lambda s: None) is True
    assert detector.seen == 3                            # "more than twice"
    assert len(messages) == 1 and "127.0.0.1:53" in messages[0] and detector.qname in messages[0]
    hops = looping.hops
    other = dnslib.DNSRecord.question("example.com", "A")
    response = chain.serve(Request(record=other, proto="udp", client=("127.0.0.1", 1), max_size=512))
    assert response.record.header.rcode == dnslib.RCODE.SERVFAIL and looping.hops == hops   # no more forwarding


def test_no_loop_when_the_upstream_answers():
    messages: list[str] = []
    chain, forward, detector = build(NxdomainExchanger(), messages)
    assert detector.probe(forward.exchange, tries=3, wait=lambda s: None) is False
    assert detector.seen == 0 and messages == [] and not detector.detected.is_set()


def test_probe_retries_while_the_upstream_does_not_answer():
    waits: list[float] = []
    detector = LoopDetector(".")
    calls = []

    def send(record):
        calls.append(record)
        if len(calls) < 3:
            raise UpstreamError("timeout")
        return record.reply()

    assert detector.probe(send, tries=5, interval=0.5, wait=waits.append) is False
    assert len(calls) == 3 and waits == [0.5, 0.5]


def test_other_queries_pass_through_the_loop_plugin():
    detector = LoopDetector(".")(None)
    query = dnslib.DNSRecord.question(detector.qname, "A")         # right name, wrong type
    assert detector.serve(Request(record=query, proto="udp", client=("127.0.0.1", 1), max_size=512)) is None
    assert detector.seen == 0
