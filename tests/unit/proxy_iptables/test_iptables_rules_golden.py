"""RuleCompiler output: golden restore text, kube-proxy equivalence, jump consistency, and
that nothing in a ProxyState can add a line to the restore input."""

from __future__ import annotations

import dataclasses

import pytest

from netplane.errors import ConfigError
from netplane.proxy.iptables import names
from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.iptables.ruleset import (
    diff,
    missing_jump_targets,
    normalise_parsed,
    parse_rule,
    render_restore,
)
from netplane.proxy.model import (
    EndpointInfo,
    NodeContext,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)

NODE = NodeContext("node1", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")


def spn(ns: str, name: str, port: str = "p80", proto: str = "TCP") -> ServicePortName:
    return ServicePortName(ns, name, port, proto)


def state(services: list[ServicePortInfo], endpoints: dict | None = None) -> ProxyState:
    svcs = {s.name: s for s in services}
    return ProxyState(svcs, endpoints or {}, frozenset(svcs) | frozenset(endpoints or ()))


def compile_full(st: ProxyState, node: NodeContext = NODE, **kw):
    return RuleCompiler(node, **kw).compile(st, full=True)


GOLDEN_CLUSTER_IP = """\
*filter
:NP-EXTERNAL-NODEPORTS - [0:0]
:NP-EXTERNAL-SERVICES - [0:0]
:NP-FILTER-NODEPORTS - [0:0]
:NP-FILTER-SERVICES - [0:0]
:NP-FORWARD - [0:0]
:NP-PROXY-CANARY - [0:0]
:NP-PROXY-FIREWALL - [0:0]
-A NP-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL -j NP-EXTERNAL-NODEPORTS
-A NP-FILTER-SERVICES -d 172.30.0.46/32 -p tcp -m tcp --dport 80 -m comment --comment "ns6/svc6:p80 has no endpoints" -j REJECT
-A NP-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NP-FORWARD -m comment --comment "netplane forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A NP-FORWARD -m comment --comment "netplane forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:NP-MARK-MASQ - [0:0]
:NP-NODEPORTS - [0:0]
:NP-POSTROUTING - [0:0]
:NP-PROXY-CANARY - [0:0]
:NP-SEP-SXIVWICOYRO3J4NJ - [0:0]
:NP-SERVICES - [0:0]
:NP-SVC-XPGD46QRK7WJZT7O - [0:0]
-A NP-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A NP-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A NP-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A NP-POSTROUTING -m comment --comment "netplane service traffic requiring SNAT" -j MASQUERADE --random-fully
-A NP-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -m comment --comment "ns1/svc1:p80" -j NP-MARK-MASQ
-A NP-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.180.0.1:80
-A NP-SERVICES -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -m comment --comment "ns1/svc1:p80 cluster IP" -j NP-SVC-XPGD46QRK7WJZT7O
-A NP-SERVICES ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment "netplane service nodeports; NOTE: this must be the last rule in this chain" -j NP-NODEPORTS
-A NP-SVC-XPGD46QRK7WJZT7O ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -m comment --comment "ns1/svc1:p80 cluster IP" -j NP-MARK-MASQ
-A NP-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j NP-SEP-SXIVWICOYRO3J4NJ
-A NP-SVC-XPGD46QRK7WJZT7O -p tcp -m comment --comment "ns1/svc1:p80 -> 10.180.2.1:80" -m tcp -j DNAT --to-destination 10.180.2.1:80
COMMIT
"""


def test_golden_cluster_ip_service_and_a_service_without_endpoints():
    # 10.180.0.1 is on this node: its NP-SEP chain holds the hairpin rule. 10.180.2.1 is on
    # host2: no packet from it can reach this chain, so its DNAT is inline.
    st = state(
        [ServicePortInfo(spn("ns1", "svc1"), "172.30.0.41", 80, "TCP", 80),
         ServicePortInfo(spn("ns6", "svc6"), "172.30.0.46", 80, "TCP", 80)],
        {spn("ns1", "svc1"): (EndpointInfo("10.180.0.1", 80, node_name="node1"),
                              EndpointInfo("10.180.2.1", 80, node_name="host2"))})
    assert render_restore(diff(None, compile_full(st))) == GOLDEN_CLUSTER_IP


def test_golden_dispatch_tree_for_twenty_services():
    services = [ServicePortInfo(spn("ns", f"s{i}"), f"10.96.{i // 10}.{i % 10 + 1}", 53, "UDP",
                                53) for i in range(20)]
    eps = {s.name: (EndpointInfo("10.244.0.9", 53),) for s in services}
    nat = compile_full(state(services, eps)).tables["nat"]
    # 20 entries > 16: the root splits; the levels with a single child (10.0.0.0/4, /8, /12,
    # /16) are skipped, the /20 holds both /24 leaves.
    assert nat["NP-D-0a600000-20"] == ("-d 10.96.0.0/24 -j NP-D-0a600000-24",
                                       "-d 10.96.1.0/24 -j NP-D-0a600100-24")
    assert nat["NP-SERVICES"] == (
        "-d 10.96.0.0/20 -j NP-D-0a600000-20",
        '! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m comment --comment "netplane service '
        'nodeports; NOTE: this must be the last rule in this chain" -j NP-NODEPORTS')
    leaf = nat["NP-D-0a600100-24"]
    assert len(leaf) == 10 and leaf[0].startswith(
        "-d 10.96.1.1/32 -p udp -m udp --dport 53 -m comment --comment \"ns/s10:p80 cluster IP\""
        " -j NP-SVC-")
    assert not missing_jump_targets(compile_full(state(services, eps)))


# --- equivalence with kube-proxy --------------------------------------------------------------
# kube-proxy's expected nat/filter rules for its TestOverallIPTablesRulesWithMultipleServices
# (pkg/proxy/iptables/proxier_test.go), per-service part, with KUBE- renamed to NP-.

KUBE_NODE = NodeContext("test-hostname", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")
KUBE_SERVICE_CHAINS = """\
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
"""
# kube-proxy's linear dispatch rules (KUBE-SERVICES without its last rule, KUBE-NODEPORTS,
# and the filter chains), table → rules.
KUBE_DISPATCH = {
    "nat": """\
-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
""",
    "filter": """\
-m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
""",
}


def kube_overall_state() -> ProxyState:
    def svc(n: int, ip: str, **kw) -> ServicePortInfo:
        return ServicePortInfo(spn(f"ns{n}", f"svc{n}"), ip, 80, "TCP", 80, **kw)

    def ep(ip: str, node: str = "") -> EndpointInfo:
        return EndpointInfo(ip, 80, node_name=node)

    return state(
        [svc(1, "172.30.0.41"),
         svc(2, "172.30.0.42", node_port=3001, load_balancer_ips=("1.2.3.4",),
             external_ips=("192.168.99.22",), external_policy_local=True,
             health_check_node_port=30000),
         svc(3, "172.30.0.43", node_port=3003),
         svc(4, "172.30.0.44", external_ips=("192.168.99.33",)),
         svc(5, "172.30.0.45", node_port=3002, load_balancer_ips=("5.6.7.8",),
             load_balancer_source_ranges=("203.0.113.0/25",)),
         svc(6, "172.30.0.46")],
        {spn("ns1", "svc1"): (ep("10.180.0.1"),), spn("ns2", "svc2"): (ep("10.180.0.2"),),
         spn("ns3", "svc3"): (ep("10.180.0.3"),),
         spn("ns4", "svc4"): (ep("10.180.0.4"), ep("10.180.0.5", "test-hostname")),
         spn("ns5", "svc5"): (ep("10.180.0.3"),)})


def canonical(rule: str) -> str:
    """normalise_rule, plus comments moved first: kube-proxy writes them first, netplane writes
    them where iptables-save keeps them; a comment match never changes what a rule does."""
    parsed = parse_rule(rule.replace("KUBE-", "NP-"))
    matches = tuple(m for m in parsed.matches if m.module == "comment") + tuple(
        m for m in parsed.matches if m.module != "comment")
    return normalise_parsed(dataclasses.replace(parsed, matches=matches))


def leaf_rules(chains, root: str, tree_prefix: str, skip_tail: int = 0) -> list[str]:
    """The entries of a dispatch tree, flattened back into kube-proxy's linear list."""
    rules = list(chains[root][:len(chains[root]) - skip_tail])
    out = []
    for rule in rules:
        target = rule.split(" -j ")[-1]
        if target.startswith(tree_prefix):
            out.extend(leaf_rules(chains, target, tree_prefix))
        else:
            out.append(rule)
    return out


def test_per_service_chains_match_kube_proxy():
    ruleset = compile_full(kube_overall_state(), KUBE_NODE)
    nat = ruleset.tables["nat"]
    mine = sorted(f"{chain} {canonical(rule)}" for chain, rules in nat.items()
                  if names.is_service_chain(chain) for rule in rules)
    theirs = sorted(f"{line.split()[1].replace('KUBE-', 'NP-')} "
                    f"{canonical(line.split(' ', 2)[2])}"
                    for line in KUBE_SERVICE_CHAINS.splitlines())
    assert mine == theirs


def test_dispatch_entries_match_kube_proxy():
    ruleset = compile_full(kube_overall_state(), KUBE_NODE)
    nat, filt = ruleset.tables["nat"], ruleset.tables["filter"]
    mine_nat = (leaf_rules(nat, names.SERVICES, names.NAT_IP_TREE, skip_tail=1)
                + leaf_rules(nat, names.NODEPORTS, names.NAT_PORT_TREE))
    # NodePort REJECT/DROP entries sit behind one "addrtype --dst-type LOCAL" jump.
    gate = filt[names.EXTERNAL_SERVICES][-1]
    assert gate == f"-m addrtype --dst-type LOCAL -j {names.EXTERNAL_NODEPORTS}"
    mine_filter = (
        leaf_rules(filt, names.FILTER_SERVICES, names.FILTER_SERVICES_TREE)
        + leaf_rules(filt, names.EXTERNAL_SERVICES, names.EXTERNAL_IP_TREE, skip_tail=1)
        + ["-m addrtype --dst-type LOCAL " + r for r in
           leaf_rules(filt, names.EXTERNAL_NODEPORTS, names.EXTERNAL_PORT_TREE)]
        + leaf_rules(filt, names.PROXY_FIREWALL, names.FIREWALL_TREE)
        + leaf_rules(filt, names.FILTER_NODEPORTS, names.HEALTHCHECK_TREE))
    assert sorted(map(canonical, mine_nat)) == sorted(
        map(canonical, KUBE_DISPATCH["nat"].splitlines()))
    assert sorted(map(canonical, mine_filter)) == sorted(
        map(canonical, KUBE_DISPATCH["filter"].splitlines()))
    assert not missing_jump_targets(ruleset)


# --- variants ---------------------------------------------------------------------------------

def _one(node: NodeContext, **svc_kw) -> dict:
    info = ServicePortInfo(spn("ns", "web"), "10.96.0.10", 80, "TCP", 8080, **svc_kw)
    st = state([info], {info.name: (EndpointInfo("10.244.1.5", 8080, node_name="node1"),)})
    return compile_full(st, node).tables


def test_masquerade_all_and_missing_detector():
    svc = names.service_chain(names.SVC, "ns/web:p80", "tcp")
    masq_all = _one(dataclasses.replace(NODE, masquerade_all=True))["nat"][svc][0]
    assert masq_all.startswith("-d 10.96.0.10/32 ") and masq_all.endswith("-j NP-MARK-MASQ")
    no_detector = _one(dataclasses.replace(NODE, cluster_cidr=""))["nat"][svc]
    assert not any("NP-MARK-MASQ" in r for r in no_detector)


def test_node_port_addresses_restrict_the_nodeport_jump():
    node = dataclasses.replace(NODE, node_ips=("192.168.0.2", "172.18.0.5", "127.0.0.1"),
                               node_port_addresses=("172.18.0.0/16", "127.0.0.0/8"))
    tail = [r for r in _one(node, node_port=30080)["nat"][names.SERVICES]
            if r.endswith("-j NP-NODEPORTS")]
    assert len(tail) == 1 and tail[0].startswith("-d 172.18.0.5/32 ")


def test_large_cluster_mode_drops_endpoint_comments_only():
    services = [ServicePortInfo(spn("ns", f"s{i}"), f"10.96.0.{i + 1}", 80, "TCP", 80)
                for i in range(3)]
    eps = {s.name: tuple(EndpointInfo(f"10.244.{i}.{j}", 80) for j in range(1, 5))
           for i, s in enumerate(services)}
    small = compile_full(state(services, eps), large_cluster_threshold=12).tables["nat"]
    large = compile_full(state(services, eps), large_cluster_threshold=11).tables["nat"]
    sep = names.endpoint_chain("ns/s0:p80", "tcp", "10.244.0.1:80")
    assert "-m comment" in small[sep][0] and "-m comment" not in " ".join(large[sep])
    svc = names.service_chain(names.SVC, "ns/s0:p80", "tcp")
    assert "cluster IP" in large[svc][0]  # the masquerade rule keeps its comment
    assert not any("->" in r for r in large[svc])
    assert any("cluster IP" in r for r in large[names.SERVICES])


def test_internal_policy_local_without_local_endpoints_drops():
    info = ServicePortInfo(spn("ns", "web"), "10.96.0.10", 80, "TCP", 80,
                           internal_policy_local=True)
    st = state([info], {info.name: (EndpointInfo("10.244.2.5", 80, node_name="other"),)})
    tables = compile_full(st).tables
    assert tables["filter"][names.FILTER_SERVICES][0].endswith(
        '-m comment --comment "ns/web:p80 has no local endpoints" -j DROP')
    assert not any(c.startswith(("NP-SVC-", "NP-SVL-", "NP-SEP-")) for c in tables["nat"])


def test_invalid_node_context_is_a_config_error():
    with pytest.raises(ConfigError, match="node1"):
        RuleCompiler(dataclasses.replace(NODE, cluster_cidr="10.0.0.0/33"))


# --- hostile input ----------------------------------------------------------------------------

HOSTILE = 'x"\n-A INPUT -j ACCEPT\n#'


def hostile_states() -> list[ProxyState]:
    good = ServicePortInfo(spn("ns", "ok"), "10.96.0.1", 80, "TCP", 80, node_port=30001,
                           external_ips=("192.168.1.1",), load_balancer_ips=("1.1.1.1",),
                           load_balancer_source_ranges=("1.0.0.0/8",), affinity_timeout=30,
                           health_check_node_port=30002, external_policy_local=True)
    ep = EndpointInfo("10.244.0.1", 80, node_name="node1")
    variants = [
        dataclasses.replace(good, name=spn(HOSTILE, HOSTILE, HOSTILE)),
        dataclasses.replace(good, name=spn("ns", "p", "x", HOSTILE), protocol=HOSTILE),
        dataclasses.replace(good, cluster_ip=HOSTILE),
        dataclasses.replace(good, external_ips=(HOSTILE, "192.168.1.2")),
        dataclasses.replace(good, load_balancer_ips=(HOSTILE,)),
        dataclasses.replace(good, load_balancer_source_ranges=(HOSTILE,)),
        dataclasses.replace(good, port=HOSTILE),  # type: ignore[arg-type]
        dataclasses.replace(good, node_port=HOSTILE),  # type: ignore[arg-type]
        dataclasses.replace(good, health_check_node_port=HOSTILE),  # type: ignore[arg-type]
        dataclasses.replace(good, affinity_timeout=HOSTILE),  # type: ignore[arg-type]
    ]
    states = [state([v], {v.name: (ep,)}) for v in variants]
    for field in ("ip", "port", "node_name", "zone"):
        bad_ep = dataclasses.replace(ep, **{field: HOSTILE})
        states.append(state([good], {good.name: (bad_ep, ep)}))
    return states


@pytest.mark.parametrize("st", hostile_states())
def test_no_field_can_add_a_line_to_the_restore_input(st):
    text = render_restore(diff(None, compile_full(st)))
    allowed = {"", "ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE"}
    for line in text.splitlines():
        assert line.startswith(("*", ":NP-", "-A NP-", "COMMIT")), line
        if line.startswith("-A "):
            rule = parse_rule(line.split(" ", 2)[2])  # one well-formed rule per line
            assert rule.target in allowed or names.is_owned_chain(rule.target), line
            for match in rule.matches:  # hostile text only ever survives inside a comment
                if match.module != "comment":
                    assert HOSTILE not in str(match)
