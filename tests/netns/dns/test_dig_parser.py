"""The dig output parser the DNS sandbox tests rely on (pure: runs without root)."""

from __future__ import annotations

SAMPLE = """
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +noedns ext.default.svc.cluster.local
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 35567
;; flags: qr aa rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 1, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;ext.default.svc.cluster.local.	IN	A

;; ANSWER SECTION:
ExT.default.svc.cluster.local. 30 IN	CNAME	www.example.test.
www.example.test.	0	IN	A	192.0.2.11

;; AUTHORITY SECTION:
cluster.local.		30	IN	SOA	ns.dns.cluster.local. hostmaster.cluster.local. 1795303141 7200 1800 86400 30

;; ADDITIONAL SECTION:
ns.dns.cluster.local.	30	IN	A	10.96.0.10

;; Query time: 0 msec
;; SERVER: 10.96.0.10#53(10.96.0.10) (TCP)
;; MSG SIZE  rcvd: 104
"""

QR_THEN_REFUSED = """
;; Sending:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 8032
;; flags: ad; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1

;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: REFUSED, id: 8032
;; flags: qr ra; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0

; Transfer failed.
"""


def test_sections_flags_and_status(parse_dig):
    r = parse_dig(SAMPLE)
    assert r.status == "NOERROR" and r.flags == {"qr", "aa", "rd", "ra"}
    assert r.counts == {"QUERY": 1, "ANSWER": 2, "AUTHORITY": 1, "ADDITIONAL": 1}
    assert [(rr.name, rr.rtype, rr.data) for rr in r.answer] == [
        ("ExT.default.svc.cluster.local.", "CNAME", "www.example.test."),
        ("www.example.test.", "A", "192.0.2.11")]
    assert r.answer[0].ttl == 30 and r.values("A") == ["192.0.2.11"]
    assert r.rrs("SOA", "authority")[0].fields[0] == "ns.dns.cluster.local."
    assert r.values("A", "additional") == ["10.96.0.10"]
    assert r.edns is not None and r.server_proto == "TCP"
    assert not r.truncated_retry and not r.transfer_failed


def test_the_last_header_wins(parse_dig):
    r = parse_dig(QR_THEN_REFUSED)
    assert r.status == "REFUSED" and "ad" not in r.flags and r.transfer_failed and r.edns is None
