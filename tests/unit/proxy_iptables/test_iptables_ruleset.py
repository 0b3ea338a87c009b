"""Ruleset diff, restore text, iptables-save parsing and the normaliser."""

from __future__ import annotations

import pytest

from netplane.proxy.iptables.ruleset import (
    ChainTable,
    RuleParseError,
    Ruleset,
    diff,
    make_ruleset,
    missing_jump_targets,
    normalise_rule,
    parse_save,
    render_restore,
)


def rs(nat: dict, filter_: dict | None = None):
    return make_ruleset({"nat": nat, "filter": filter_ or {}})


def test_diff_writes_only_changed_chains_and_deletes_vanished_ones():
    old = rs({"NP-SERVICES": ["-j NP-SVC-A"], "NP-SVC-A": ["-j NP-SEP-A"], "NP-SEP-A": ["-j X"],
              "NP-MARK-MASQ": ["-j MARK --set-xmark 0x4000/0x4000"]})
    new = rs({"NP-SERVICES": ["-j NP-SVC-A"], "NP-SVC-A": ["-j NP-SEP-B"], "NP-SEP-B": ["-j Y"],
              "NP-MARK-MASQ": ["-j MARK --set-xmark 0x4000/0x4000"]})
    plan = diff(old, new)
    assert not plan.full
    assert dict(plan.write["nat"]) == {"NP-SVC-A": ("-j NP-SEP-B",), "NP-SEP-B": ("-j Y",)}
    assert plan.delete["nat"] == {"NP-SEP-A"}
    assert render_restore(plan) == (
        "*nat\n"
        ":NP-SEP-B - [0:0]\n"
        ":NP-SVC-A - [0:0]\n"
        ":NP-SEP-A - [0:0]\n"
        "-A NP-SEP-B -j Y\n"
        "-A NP-SVC-A -j NP-SEP-B\n"
        "-X NP-SEP-A\n"
        "COMMIT\n")
    assert diff(new, new).empty() and render_restore(diff(new, new)) == ""


def test_full_plan_declares_every_chain_and_still_deletes_stale_ones():
    old = rs({"NP-SERVICES": [], "NP-OLD": ["-j RETURN"]}, {"NP-FORWARD": ["-j ACCEPT"]})
    new = rs({"NP-SERVICES": []}, {"NP-FORWARD": ["-j ACCEPT"]})
    plan = diff(old, new, full=True)
    assert plan.full and set(plan.write["nat"]) == {"NP-SERVICES"}
    assert set(plan.write["filter"]) == {"NP-FORWARD"} and plan.delete["nat"] == {"NP-OLD"}
    text = render_restore(plan)
    assert text.index("*filter") < text.index("*nat")  # filter first, as kube-proxy writes
    assert ":NP-SERVICES - [0:0]" in text and text.endswith("-X NP-OLD\nCOMMIT\n")
    first = diff(None, new)
    assert first.full and not first.delete and set(first.write["nat"]) == {"NP-SERVICES"}


def test_bucketed_tables_diff_like_plain_ones():
    chains = {f"NP-SEP-{i:04d}": (f"-j DNAT --to-destination 10.0.0.{i % 250}:80",)
              for i in range(3000)}
    changed = dict(chains)
    changed["NP-SEP-0007"] = ("-j DNAT --to-destination 10.9.9.9:80",)
    del changed["NP-SEP-0100"]
    changed["NP-SEP-9999"] = ("-j RETURN",)
    plain = diff(rs(chains), rs(changed))
    a = ChainTable.from_mapping(chains)
    # Share every bucket the change did not touch, as the compiler does.
    b_buckets = list(a._buckets)
    for name in ("NP-SEP-0007", "NP-SEP-0100", "NP-SEP-9999"):
        i = ChainTable.bucket_of(name)
        b_buckets[i] = {k: v for k, v in changed.items() if ChainTable.bucket_of(k) == i}
    b = ChainTable(tuple(b_buckets))
    assert dict(b.items()) == changed and len(b) == len(changed) and "NP-SEP-9999" in b
    bucketed = diff(Ruleset({"nat": a}), Ruleset({"nat": b}))
    assert dict(bucketed.write["nat"]) == dict(plain.write["nat"])
    assert bucketed.delete == plain.delete


# Written by netplane (left) and printed back by iptables-save 1.8.9 (right); the right-hand
# sides were captured from iptables-legacy-save and iptables-nft-save inside a test namespace.
EQUIVALENT = [
    ("! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m tcp --dport 80 "
     '-m comment --comment "ns/svc:http cluster IP" -j NP-MARK-MASQ',
     "! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m tcp --dport 80 "
     '-m comment --comment "ns/svc:http cluster IP" -j NP-MARK-MASQ'),
    ('-m comment --comment "ns/svc:http -> 10.244.1.1:80" -m recent --name NP-SEP-A '
     "--mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j NP-SEP-A",
     '-m comment --comment "ns/svc:http -> 10.244.1.1:80" -m recent --rcheck --seconds 10800 '
     "--reap --name NP-SEP-A --mask 255.255.255.255 --rsource -j NP-SEP-A"),
    ("-m comment --comment ns/svc:http -m statistic --mode random --probability 0.3333333333 "
     "-j NP-SEP-A",
     '-m comment --comment "ns/svc:http" -m statistic --mode random '
     "--probability 0.33333333349 -j NP-SEP-A"),
    ("-j MARK --or-mark 0x4000", "-j MARK --set-xmark 0x4000/0x4000"),
    ("-j MARK --xor-mark 0x4000", "-j MARK --set-xmark 0x4000/0x0"),
    ("-m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30001 -j DROP",
     "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 -j DROP"),
    ("-d 10.96.0.2 -p TCP --dport 80 -j REJECT",
     "-d 10.96.0.2/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"),
    ("-p udp -m udp --dport 30000:30000 -j NP-P-30000-30000",
     "-p udp -m udp --dport 30000 -j NP-P-30000-30000"),
    ("-s 10.1.2.3/8 -j RETURN", "-s 10.0.0.0/8 -j RETURN"),
]


@pytest.mark.parametrize("written, saved", EQUIVALENT)
def test_normaliser_makes_written_and_saved_rules_equal(written, saved):
    assert normalise_rule(written) == normalise_rule(saved)


@pytest.mark.parametrize("a, b", [
    ("-d 10.0.0.1/32 -j NP-X", "-d 10.0.0.2/32 -j NP-X"),
    ("-m mark --mark 0x4000/0x4000 -j ACCEPT", "-m mark ! --mark 0x4000/0x4000 -j ACCEPT"),
    ("-m statistic --mode random --probability 0.5000000000 -j A",
     "-m statistic --mode random --probability 0.3333333333 -j A"),
    ('-m comment --comment "a b" -j A', '-m comment --comment "a  b" -j A'),
    ("-j MARK --or-mark 0x4000", "-j MARK --xor-mark 0x4000"),
])
def test_normaliser_keeps_real_differences(a, b):
    assert normalise_rule(a) != normalise_rule(b)


SAVE_LEGACY = """\
# Generated by iptables-save v1.8.9 on Sat Nov 21 22:39:22 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:720]
:OUTPUT ACCEPT [0:0]
:NP-FORWARD - [0:0]
:NP-PROXY-CANARY - [0:0]
:OTHER-CHAIN - [0:0]
-A FORWARD -m comment --comment "netplane forwarding rules" -j NP-FORWARD
-A NP-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NP-FORWARD -m comment --comment "netplane forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A OTHER-CHAIN -j ACCEPT
COMMIT
# Completed on Sat Nov 21 22:39:22 2026
*nat
:PREROUTING ACCEPT [0:0]
:NP-MARK-MASQ - [0:0]
[3:180] -A NP-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
"""


def test_parse_save_keeps_only_netplane_chains_and_tolerates_counters_and_comments():
    parsed = parse_save("# Warning: iptables-legacy tables present, use iptables-legacy-save "
                        "to see them\n" + SAVE_LEGACY)
    assert dict(parsed.tables["filter"]) == {
        "NP-FORWARD": (normalise_rule("-m conntrack --ctstate INVALID -j DROP"),
                       normalise_rule('-m comment --comment "netplane forwarding rules" '
                                      "-m mark --mark 0x4000/0x4000 -j ACCEPT")),
        "NP-PROXY-CANARY": (),
    }
    assert dict(parsed.tables["nat"]) == {
        "NP-MARK-MASQ": (normalise_rule("-j MARK --or-mark 0x4000"),)}


@pytest.mark.parametrize("bad", ['-m comment --comment "unterminated', "-j", "-x 1 -j A",
                                 "--dport 80 -j A"])
def test_unparseable_rules_raise_typed_errors(bad):
    with pytest.raises(RuleParseError):
        normalise_rule(bad)


def test_parse_save_rejects_garbage_lines():
    with pytest.raises(RuleParseError):
        parse_save("*nat\nthis is not iptables-save output\nCOMMIT\n")


def test_missing_jump_targets_finds_dangling_jumps_only():
    ruleset = rs({"NP-SERVICES": ["-d 10.0.0.1/32 -j NP-SVC-A", "-j NP-GONE", "-j ACCEPT"],
                  "NP-SVC-A": ["-g NP-SEP-A"], "NP-SEP-A": ["-j DNAT --to-destination 1.2.3.4:5"]})
    assert missing_jump_targets(ruleset) == [("nat", "NP-SERVICES", "NP-GONE")]
