"""Chain names match kube-proxy's hashing; tokens refuse or neutralise anything hostile."""

from __future__ import annotations

import base64
import hashlib

import pytest

from netplane.proxy.iptables import names
from netplane.proxy.iptables.names import UnsafeRuleText


# Names taken from kube-proxy's own test expectations (pkg/proxy/iptables/proxier_test.go):
# the same service-port must hash to the same suffix, only the prefix differs.
@pytest.mark.parametrize("prefix, kname, expected", [
    (names.SVC, "ns1/svc1:p80", "NP-SVC-XPGD46QRK7WJZT7O"),
    (names.EXT, "ns2/svc2:p80", "NP-EXT-GNZBNJ2PO5MGZ6GT"),
    (names.SVL, "ns2/svc2:p80", "NP-SVL-GNZBNJ2PO5MGZ6GT"),
    (names.FW, "ns5/svc5:p80", "NP-FW-NUKIZ6OKUXPJNT4C"),
])
def test_service_chain_names_match_kube_proxy(prefix, kname, expected):
    assert names.service_chain(prefix, kname, "TCP") == expected


@pytest.mark.parametrize("kname, endpoint, expected", [
    ("ns1/svc1:p80", "10.180.0.1:80", "NP-SEP-SXIVWICOYRO3J4NJ"),
    ("ns2/svc2:p80", "10.180.0.2:80", "NP-SEP-RS4RBKLTHTF2IUXJ"),
    ("ns4/svc4:p80", "10.180.0.5:80", "NP-SEP-C6EBXVWJJZMIWKLZ"),
])
def test_endpoint_chain_names_match_kube_proxy(kname, endpoint, expected):
    assert names.endpoint_chain(kname, "tcp", endpoint) == expected


@pytest.mark.parametrize("text", ["", "a", "ns/svc:p80tcp", "x" * 1000, "ünïcode"])
def test_fast_hash_equals_plain_base32(text):
    plain = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]
    assert names._hash16(text) == plain


def test_protocols_hash_apart_and_names_fit_iptables():
    tcp = names.service_chain(names.SVC, "ns/dns:dns", "TCP")
    udp = names.service_chain(names.SVC, "ns/dns:dns", "UDP")
    assert tcp != udp
    long_name = "n" * 63 + "/" + "s" * 253 + ":" + "p" * 15
    for chain in (names.service_chain(names.SVC, long_name, "sctp"),
                  names.endpoint_chain(long_name, "sctp", "255.255.255.255:65535")):
        assert len(chain) <= names.MAX_CHAIN_LEN
    for fixed in names.NAT_FIXED_CHAINS + names.FILTER_FIXED_CHAINS:
        assert names.is_owned_chain(fixed) and len(fixed) <= names.MAX_CHAIN_LEN


@pytest.mark.parametrize("hostile", [
    'ns/svc" -j ACCEPT\n-A INPUT -j ACCEPT',
    "a\\\"b", "tab\there", "nul\x00", "bell\x07", "quote'single", "\u2028line-sep",
    "\r\n-A NP-SERVICES -j DROP",
])
def test_comment_cannot_break_out_of_its_token(hostile):
    rendered = names.comment(hostile)
    body = rendered[len('-m comment --comment "'):-1]
    assert rendered.startswith('-m comment --comment "') and rendered.endswith('"')
    assert '"' not in body and "\\" not in body and "'" not in body
    assert all(0x20 <= ord(ch) < 0x7F for ch in body)
    assert "\n" not in rendered and "\r" not in rendered


def test_comment_is_capped_and_clean_text_is_kept():
    assert names.comment_text("ns1/svc1:p80 cluster IP") == "ns1/svc1:p80 cluster IP"
    assert len(names.comment_text("x" * 400)) == names.MAX_COMMENT_LEN


@pytest.mark.parametrize("bad", ["10.0.0.01", "256.0.0.1", "10.0.0.1 ", "10.0.0.1\n-A X",
                                 "::1", "", "10.0.0", 167772161, None])
def test_ipv4_token_refuses_anything_but_a_canonical_address(bad):
    with pytest.raises(UnsafeRuleText):
        names.ipv4_token(bad)


def test_other_tokens():
    assert names.ipv4_token("10.96.0.1") == "10.96.0.1"
    assert names.cidr_token("10.244.1.7/16") == "10.244.0.0/16"
    assert names.protocol_token("SCTP") == "sctp"
    assert names.port_token(0, allow_zero=True) == 0
    for call in (lambda: names.cidr_token("10.0.0.0/8 -j ACCEPT"),
                 lambda: names.protocol_token("icmp"), lambda: names.port_token(0),
                 lambda: names.port_token(65536), lambda: names.port_token(True),
                 lambda: names.port_token("80"), lambda: names.seconds_token(-1),
                 lambda: names.mark_token(0)):
        with pytest.raises(UnsafeRuleText):
            call()
    assert names.probability(3) == "0.3333333333"
