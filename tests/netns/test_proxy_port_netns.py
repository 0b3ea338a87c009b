"""ExecIptables with the real iptables binaries, inside namespaces this test creates: a compiled
ruleset goes in with iptables-restore and comes back equal through iptables-save + parse_save
(legacy and nft, the nft one also split into small transactions), restore errors name the
failing line, cleanup removes exactly what netplane owns, and mode detection follows the
rules present in the namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from netplane.proxy.iptables.port import ExecIptables, IptablesError, detect_mode
from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, diff, normalise_ruleset, parse_save, render_restore
from netplane.proxy.model import EndpointInfo, NodeContext, ProxyState, ServicePortInfo, ServicePortName

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

RunIn = Callable[..., subprocess.CompletedProcess[str]]
NODE = NodeContext("node1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16")
FOREIGN_NAT = ("*nat\n:FOREIGN-NAT - [0:0]\n-A FOREIGN-NAT -s 10.9.0.0/16 -j MASQUERADE\n"
               "-A POSTROUTING -j FOREIGN-NAT\n-A PREROUTING -p tcp --dport 2222 -j REDIRECT --to-ports 22\n"
               "COMMIT\n")
FOREIGN_FILTER = "*filter\n-A INPUT -s 192.0.2.0/24 -j DROP\nCOMMIT\n"


def rich_state() -> ProxyState:
    """Services exercising most rule shapes (so read-back normalisation is really tested)."""
    def spn(name: str, proto: str = "TCP") -> ServicePortName:
        return ServicePortName("default", name, "p", proto)

    def eps(*ips: str, node: str = "node2") -> tuple[EndpointInfo, ...]:
        return tuple(EndpointInfo(ip, 8080, node_name=node) for ip in ips)

    services = [
        ServicePortInfo(spn("web"), "10.96.0.10", 80, "TCP", 8080),
        ServicePortInfo(spn("dns", "UDP"), "10.96.0.53", 53, "UDP", 8080, affinity_timeout=10800),
        ServicePortInfo(spn("np"), "10.96.0.11", 80, "TCP", 8080, node_port=30080,
                        external_ips=("192.0.2.10",)),
        ServicePortInfo(spn("lb"), "10.96.0.12", 443, "TCP", 8080, node_port=30443,
                        load_balancer_ips=("203.0.113.5",), load_balancer_source_ranges=("198.51.100.0/24",),
                        external_policy_local=True, health_check_node_port=32000),
        ServicePortInfo(spn("empty"), "10.96.0.13", 80, "TCP", 8080),
        ServicePortInfo(spn("itp"), "10.96.0.14", 80, "TCP", 8080, internal_policy_local=True),
    ]
    endpoints = {spn("web"): eps("10.244.1.5", "10.244.2.5", "10.244.3.5"),
                 spn("dns", "UDP"): eps("10.244.1.6"),
                 spn("np"): eps("10.244.1.7"),
                 spn("lb"): eps("10.244.1.8", node="node1") + eps("10.244.2.8"),
                 spn("itp"): eps("10.244.2.9")}
    by_name = {s.name: s for s in services}
    return ProxyState(by_name, endpoints, frozenset(by_name) | frozenset(endpoints))


def netns_prefix(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns)


def saved(run_in: RunIn, ns: str, mode: str) -> str:
    out = run_in(ns, f"iptables-{mode}-save").stdout
    return "\n".join(l for l in out.splitlines() if not l.startswith("#"))


def strip_counters(text: str) -> list[str]:
    return [l.split(" [")[0] if l.startswith(":") else l for l in text.splitlines()]


@pytest.mark.parametrize("mode, chunk", [("legacy", 5000), ("nft", 5000), ("nft", 7)])
def test_restore_read_back_and_cleanup(netns_factory, run_in: RunIn, mode: str, chunk: int) -> None:
    ns = netns_factory("ipt")
    run_in(ns, f"iptables-{mode}-restore", "--noflush", input=FOREIGN_NAT + FOREIGN_FILTER)
    foreign_only = strip_counters(saved(run_in, ns, mode))
    ipt = ExecIptables(mode, prefix=netns_prefix(ns), chunk_rules=chunk)

    desired = RuleCompiler(NODE).compile(rich_state(), full=True)
    ipt.restore(render_restore(diff(None, desired)))
    ipt.ensure_jumps(HOOK_JUMPS)
    ipt.ensure_jumps(HOOK_JUMPS)  # idempotent
    back = parse_save(ipt.save("nat") + ipt.save("filter"))
    assert back == normalise_ruleset(desired)
    for table, chain, rule in HOOK_JUMPS:
        listed = run_in(ns, f"iptables-{mode}", "-t", table, "-S", chain).stdout
        assert listed.count(rule.split("-j ")[-1]) >= 1
    assert ipt.chain_exists("nat", "NP-PROXY-CANARY") and ipt.chain_exists("filter", "NP-PROXY-CANARY")
    assert not ipt.chain_exists("nat", "NP-NOT-THERE")

    removed = ipt.cleanup()
    assert any("chain NP-SERVICES" in r for r in removed)
    assert any("rule PREROUTING" in r for r in removed)
    assert strip_counters(saved(run_in, ns, mode)) == foreign_only
    assert ipt.cleanup() == []


@pytest.mark.parametrize("mode", ["legacy", "nft"])
def test_restore_error_names_the_failing_line(netns_factory, mode: str) -> None:
    ns = netns_factory("iptbad")
    ipt = ExecIptables(mode, prefix=netns_prefix(ns))
    text = "*nat\n:NP-A - [0:0]\n-A NP-A -j RETURN\n-A NP-A -j NP-MISSING\nCOMMIT\n"
    with pytest.raises(IptablesError) as err:
        ipt.restore(text)
    assert err.value.line_number == 4, str(err.value)
    assert err.value.line == "-A NP-A -j NP-MISSING"
    assert f"iptables-{mode}-restore" in str(err.value)
    assert not ipt.chain_exists("nat", "NP-A")  # nothing of the transaction was committed


def test_detect_mode_follows_the_rules_in_the_namespace(netns_factory, run_in: RunIn) -> None:
    default = "legacy" if "legacy" in subprocess.run(["iptables", "--version"], capture_output=True,
                                                     text=True).stdout else "nft"
    empty = netns_factory("empty")
    assert detect_mode(prefix=netns_prefix(empty)) == default
    legacy = netns_factory("legacy")
    run_in(legacy, "iptables-legacy-restore", "--noflush",
           input="*nat\n:NP-SERVICES - [0:0]\n-A PREROUTING -j NP-SERVICES\nCOMMIT\n")
    assert detect_mode(prefix=netns_prefix(legacy)) == "legacy"
    nft = netns_factory("nft")
    run_in(nft, "iptables-nft-restore", "--noflush",
           input="*nat\n:NETPLANE-CNI-MASQ - [0:0]\n-A POSTROUTING -j NETPLANE-CNI-MASQ\nCOMMIT\n")
    run_in(nft, "iptables-legacy-restore", "--noflush", input="*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
    assert detect_mode(prefix=netns_prefix(nft)) == "nft"
