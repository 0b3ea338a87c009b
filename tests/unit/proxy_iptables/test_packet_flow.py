"""Packet-flow tests in the style of kube-proxy's runPacketFlowTests: compile a state, then trace
first packets through the Ruleset and check the possible endpoints, masquerading and the filter
verdict. Covers every feature of the iptables layout and kube-proxy.md §5."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.iptables.trace import Packet, TraceError, Tracer, trace
from netplane.proxy.iptables.ruleset import make_ruleset
from netplane.proxy.model import (
    EndpointInfo,
    NodeContext,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)

NODE_IP = "192.168.0.2"
POD = "10.0.0.2"  # inside the cluster CIDR
EXTERNAL = "203.0.113.2"
NODE = NodeContext("node1", zone="z1", node_ips=(NODE_IP,), cluster_cidr="10.0.0.0/8")


@dataclass(frozen=True)
class Flow:
    name: str
    source: str
    dest: str
    port: int
    output: str  # "ep1, ep2" (sorted), "REJECT", "DROP", or "" (not a service: passes as is)
    masq: bool = False
    protocol: str = "tcp"
    local_source: bool = False


def spn(name: str, port: str = "p80", proto: str = "TCP") -> ServicePortName:
    return ServicePortName("ns1", name, port, proto)


def ep(ip: str, port: int = 80, node: str = "", **kw) -> EndpointInfo:
    return EndpointInfo(ip, port, node_name=node, **kw)


def compile_state(services: list[ServicePortInfo], endpoints: dict, node: NodeContext = NODE):
    svcs = {s.name: s for s in services}
    st = ProxyState(svcs, endpoints, frozenset(svcs))
    return RuleCompiler(node).compile(st, full=True)


def run_flows(services, endpoints, flows: list[Flow], node: NodeContext = NODE) -> None:
    tracer = Tracer(compile_state(services, endpoints, node), node)
    failures = []
    for flow in flows:
        result = tracer.trace(Packet(flow.source, flow.protocol, flow.dest, flow.port,
                                     flow.local_source))
        if result.verdict != "ACCEPT":
            output = result.verdict
        else:
            output = ", ".join(sorted(result.endpoints))
        if output != flow.output or result.masquerade != flow.masq:
            failures.append(f"{flow.name}: got {output!r} masq={result.masquerade}, want "
                            f"{flow.output!r} masq={flow.masq} (paths: "
                            f"{[o.path for o in result.outcomes]})")
    assert not failures, "\n".join(failures)


def test_cluster_ip_general():
    svc2 = dict(cluster_ip="172.30.0.42", target_port=80)
    services = [
        ServicePortInfo(spn("svc1", "http"), "172.30.0.41", 80, "TCP", 80),
        ServicePortInfo(spn("svc2", "http"), port=80, protocol="TCP", **svc2),
        ServicePortInfo(spn("svc2", "https"), port=443, protocol="TCP", **svc2),
        ServicePortInfo(spn("svc2", "dns-sctp", "SCTP"), port=53, protocol="SCTP", **svc2),
        ServicePortInfo(spn("svc2", "dns-tcp"), port=53, protocol="TCP", **svc2),
        ServicePortInfo(spn("svc3", "dns", "UDP"), "172.30.0.43", 53, "UDP", 53),
    ]
    endpoints = {
        spn("svc1", "http"): (ep("10.180.0.1", node="node1"),),
        spn("svc2", "http"): (ep("10.180.0.1", node="node1"), ep("10.180.2.1", node="host2")),
        spn("svc2", "https"): (ep("10.180.0.1", 8443, "node1"), ep("10.180.2.1", 8443, "host2")),
        spn("svc2", "dns-sctp", "SCTP"): (ep("10.180.0.1", 53, "node1"),
                                           ep("10.180.2.1", 53, "host2")),
        spn("svc2", "dns-tcp"): (ep("10.180.0.1", 5353, "node1"), ep("10.180.2.1", 5353, "host2")),
        spn("svc3", "dns", "UDP"): (ep("10.180.3.1", 53),),
    }
    run_flows(services, endpoints, [
        Flow("simple clusterIP", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80",
             masq=True),
        Flow("clusterIP with multiple endpoints", POD, "172.30.0.42", 80,
             "10.180.0.1:80, 10.180.2.1:80"),
        Flow("clusterIP with TargetPort", POD, "172.30.0.42", 443,
             "10.180.0.1:8443, 10.180.2.1:8443"),
        Flow("clusterIP with TCP and SCTP on same port (TCP)", POD, "172.30.0.42", 53,
             "10.180.0.1:5353, 10.180.2.1:5353"),
        Flow("clusterIP with TCP and SCTP on same port (SCTP)", POD, "172.30.0.42", 53,
             "10.180.0.1:53, 10.180.2.1:53", protocol="sctp"),
        Flow("UDP clusterIP", POD, "172.30.0.43", 53, "10.180.3.1:53", protocol="udp"),
        Flow("TCP to a UDP-only port", POD, "172.30.0.43", 53, ""),
        Flow("TCP-only port does not match UDP", POD, "172.30.0.41", 80, "", protocol="udp"),
        Flow("clusterIP with unknown port", POD, "172.30.0.41", 8080, ""),
        Flow("not a service IP", POD, "172.30.9.9", 80, ""),
        Flow("external to clusterIP is masqueraded", EXTERNAL, "172.30.0.41", 80,
             "10.180.0.1:80", masq=True),
        Flow("node to clusterIP is masqueraded", NODE_IP, "172.30.0.41", 80, "10.180.0.1:80",
             masq=True, local_source=True),
    ])


def test_no_endpoints_reject():
    services = [ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001,
                                external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",))]
    run_flows(services, {}, [
        Flow("pod to cluster IP with no endpoints", POD, "172.30.0.41", 80, "REJECT"),
        Flow("external to external IP with no endpoints", EXTERNAL, "192.168.99.11", 80,
             "REJECT"),
        Flow("pod to NodePort with no endpoints", POD, NODE_IP, 3001, "REJECT"),
        Flow("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 3001, "REJECT"),
        Flow("pod to LoadBalancer IP with no endpoints", POD, "1.2.3.4", 80, "REJECT"),
        Flow("external to LoadBalancer IP with no endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT"),
        Flow("node to cluster IP with no endpoints", NODE_IP, "172.30.0.41", 80, "REJECT",
             local_source=True),
        Flow("other ports are untouched", EXTERNAL, NODE_IP, 22, ""),
    ])


def etp_local_service(**kw) -> ServicePortInfo:
    return ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001,
                           external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",),
                           external_policy_local=True, **kw)


BOTH = "10.180.0.1:80, 10.180.2.1:80"
TWO_NODES = {spn("svc1"): (ep("10.180.0.1", node="node1"), ep("10.180.2.1", node="host2"))}


def test_external_traffic_policy_local():
    run_flows([etp_local_service()], TWO_NODES, [
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", POD, "172.30.0.41", 80,
             BOTH),
        Flow("pod to external IP hits both endpoints, unmasqueraded", POD, "192.168.99.11", 80,
             BOTH),
        Flow("pod to LB IP hits both endpoints, unmasqueraded", POD, "1.2.3.4", 80, BOTH),
        Flow("pod to NodePort hits both endpoints, unmasqueraded", POD, NODE_IP, 3001, BOTH),
        Flow("external to cluster IP hits both endpoints, masqueraded", EXTERNAL, "172.30.0.41",
             80, BOTH, masq=True),
        Flow("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL,
             "192.168.99.11", 80, "10.180.0.1:80"),
        Flow("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL, "1.2.3.4",
             80, "10.180.0.1:80"),
        Flow("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL, NODE_IP,
             3001, "10.180.0.1:80"),
        Flow("node to external IP hits both endpoints, masqueraded", NODE_IP, "192.168.99.11",
             80, BOTH, masq=True, local_source=True),
        Flow("node to NodePort hits both endpoints, masqueraded", NODE_IP, NODE_IP, 3001, BOTH,
             masq=True, local_source=True),
    ])


def test_external_traffic_policy_local_without_local_endpoints():
    remote_only = {spn("svc1"): (ep("10.180.2.1", node="host2"),)}
    run_flows([etp_local_service()], remote_only, [
        Flow("external to NodePort drops", EXTERNAL, NODE_IP, 3001, "DROP"),
        Flow("external to external IP drops", EXTERNAL, "192.168.99.11", 80, "DROP"),
        Flow("external to LB IP drops", EXTERNAL, "1.2.3.4", 80, "DROP"),
        Flow("pod to external IP still short-circuits", POD, "192.168.99.11", 80,
             "10.180.2.1:80"),
        Flow("node to NodePort still short-circuits, masqueraded", NODE_IP, NODE_IP, 3001,
             "10.180.2.1:80", masq=True, local_source=True),
        Flow("cluster IP unaffected", POD, "172.30.0.41", 80, "10.180.2.1:80"),
    ])


def test_endpoints_without_node_name_are_not_local():
    no_node = {spn("svc1"): (ep("10.180.0.1"),)}
    run_flows([etp_local_service()], no_node, [
        Flow("external to NodePort drops", EXTERNAL, NODE_IP, 3001, "DROP"),
        Flow("pod to cluster IP works", POD, "172.30.0.41", 80, "10.180.0.1:80"),
    ])


def test_internal_traffic_policy_local():
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001,
                          internal_policy_local=True)
    run_flows([svc], TWO_NODES, [
        Flow("pod to cluster IP hits only local endpoint", POD, "172.30.0.41", 80,
             "10.180.0.1:80"),
        Flow("external to cluster IP hits only local endpoint, masqueraded", EXTERNAL,
             "172.30.0.41", 80, "10.180.0.1:80", masq=True),
        Flow("iTP does not apply to NodePort traffic", EXTERNAL, NODE_IP, 3001, BOTH,
             masq=True),
    ])
    remote_only = {spn("svc1"): (ep("10.180.2.1", node="host2"),)}
    run_flows([svc], remote_only, [
        Flow("no local endpoints: cluster IP drops (not rejects)", POD, "172.30.0.41", 80,
             "DROP"),
        Flow("NodePort still reaches the remote endpoint", EXTERNAL, NODE_IP, 3001,
             "10.180.2.1:80", masq=True),
    ])


def test_both_policies_local_keep_the_pod_short_circuit():
    # kube-proxy's UsesClusterEndpoints is true for every externally accessible service, so a
    # pod going to the external IP still reaches every endpoint (and the SVC chain exists).
    svc = etp_local_service(internal_policy_local=True)
    assert svc.uses_cluster_endpoints
    run_flows([svc], TWO_NODES, [
        Flow("pod to external IP: all endpoints", POD, "192.168.99.11", 80, BOTH),
        Flow("pod to cluster IP: local only", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("external to NodePort: local only", EXTERNAL, NODE_IP, 3001, "10.180.0.1:80"),
    ])


def test_session_affinity_keeps_every_endpoint_reachable():
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, affinity_timeout=10800)
    ruleset = compile_state([svc], TWO_NODES)
    rules = [r for c, rs in ruleset.tables["nat"].items() if c.startswith("NP-SVC-") for r in rs]
    assert sum("--rcheck --seconds 10800 --reap" in r for r in rules) == 2
    result = trace(ruleset, Packet(POD, "tcp", "172.30.0.41", 80), NODE)
    assert result.endpoints == {"10.180.0.1:80", "10.180.2.1:80"} and not result.masquerade
    # Each endpoint is reachable both through the affinity rule and through the random pick.
    paths = [o.path for o in result.outcomes]
    assert len(paths) == 4 and len(set(paths)) == 2


def test_load_balancer_source_ranges():
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001,
                          load_balancer_ips=("1.2.3.4", "5.6.7.8"),
                          load_balancer_source_ranges=("203.0.113.0/25",))
    run_flows([svc], TWO_NODES, [
        Flow("allowed external source", EXTERNAL, "1.2.3.4", 80, BOTH, masq=True),
        Flow("disallowed external source", "198.51.100.2", "1.2.3.4", 80, "DROP"),
        Flow("disallowed source to the other LB IP", "198.51.100.2", "5.6.7.8", 80, "DROP"),
        Flow("LB IP as source is not allowed when no node IP is in range", "5.6.7.8", "1.2.3.4",
             80, "DROP"),
        Flow("NodePort is not subject to source ranges", "198.51.100.2", NODE_IP, 3001, BOTH,
             masq=True),
    ])
    node_in_range = dataclasses.replace(NODE, node_ips=(NODE_IP, "203.0.113.10"))
    run_flows([svc], TWO_NODES, [
        Flow("node IP in range: LB IPs are allowed as sources", "5.6.7.8", "1.2.3.4", 80, BOTH,
             masq=True),
    ], node=node_in_range)


def test_terminating_endpoints_fallback():
    svc = etp_local_service()
    endpoints = {spn("svc1"): (
        ep("10.180.0.1", node="node1", ready=False, serving=True, terminating=True),
        ep("10.180.0.2", node="node1", ready=False, serving=False, terminating=True),
        ep("10.180.2.1", node="host2", ready=False, serving=True, terminating=True),
    )}
    run_flows([svc], endpoints, [
        Flow("cluster traffic falls back to serving terminating endpoints", POD, "172.30.0.41",
             80, "10.180.0.1:80, 10.180.2.1:80"),
        Flow("local traffic falls back to the local serving terminating endpoint", EXTERNAL,
             NODE_IP, 3001, "10.180.0.1:80"),
    ])
    with_ready = {spn("svc1"): endpoints[spn("svc1")] + (ep("10.180.2.2", node="host2"),)}
    run_flows([svc], with_ready, [
        Flow("a ready endpoint anywhere wins for cluster traffic", POD, "172.30.0.41", 80,
             "10.180.2.2:80"),
        Flow("local traffic still uses the local terminating endpoint", EXTERNAL, NODE_IP, 3001,
             "10.180.0.1:80"),
    ])


def test_topology_aware_routing():
    svc = etp_local_service(topology_aware=True)
    endpoints = {spn("svc1"): (
        ep("10.180.0.1", node="node1", zone="z1", zone_hints=("z1",)),
        ep("10.180.1.1", node="host2", zone="z1", zone_hints=("z1",)),
        ep("10.180.2.1", node="host3", zone="z2", zone_hints=("z2",)),
    )}
    run_flows([svc], endpoints, [
        Flow("cluster traffic stays in the zone", POD, "172.30.0.41", 80,
             "10.180.0.1:80, 10.180.1.1:80"),
        Flow("local traffic ignores hints", EXTERNAL, NODE_IP, 3001, "10.180.0.1:80"),
    ])
    unhinted = {spn("svc1"): endpoints[spn("svc1")][:2] + (ep("10.180.2.1", node="host3"),)}
    run_flows([svc], unhinted, [
        Flow("one endpoint without hints disables topology", POD, "172.30.0.41", 80,
             "10.180.0.1:80, 10.180.1.1:80, 10.180.2.1:80"),
    ])


def test_without_local_traffic_detector():
    node = dataclasses.replace(NODE, cluster_cidr="")
    run_flows([etp_local_service()], TWO_NODES, [
        Flow("external to cluster IP is not masqueraded", EXTERNAL, "172.30.0.41", 80, BOTH),
        Flow("pod to cluster IP is not masqueraded", POD, "172.30.0.41", 80, BOTH),
        Flow("no pod short-circuit: pod to external IP gets local endpoints", POD,
             "192.168.99.11", 80, "10.180.0.1:80"),
        Flow("node traffic is still short-circuited and masqueraded", NODE_IP, "192.168.99.11",
             80, BOTH, masq=True, local_source=True),
    ], node=node)


def test_masquerade_all():
    node = dataclasses.replace(NODE, masquerade_all=True)
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, internal_policy_local=True)
    run_flows([svc], TWO_NODES, [
        Flow("pod to cluster IP is masqueraded", POD, "172.30.0.41", 80, "10.180.0.1:80",
             masq=True),
    ], node=node)


def test_cluster_policy_external_traffic_is_masqueraded():
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001,
                          external_ips=("192.168.99.11",))
    run_flows([svc], TWO_NODES, [
        Flow("external to NodePort", EXTERNAL, NODE_IP, 3001, BOTH, masq=True),
        Flow("pod to external IP", POD, "192.168.99.11", 80, BOTH, masq=True),
        Flow("NodePort on another address of the wrong port", EXTERNAL, NODE_IP, 3002, ""),
        Flow("NodePort is not reachable on a non-local address", EXTERNAL, "192.168.0.99", 3001,
             ""),
    ])


def test_node_port_addresses():
    node = dataclasses.replace(NODE, node_ips=(NODE_IP, "172.18.0.5"),
                               node_port_addresses=("172.18.0.0/16",))
    svc = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001)
    run_flows([svc], TWO_NODES, [
        Flow("NodePort on an allowed address", EXTERNAL, "172.18.0.5", 3001, BOTH, masq=True),
        Flow("NodePort on another node address", EXTERNAL, NODE_IP, 3001, ""),
    ], node=node)


def test_many_services_dispatch_through_the_tree():
    services = [ServicePortInfo(spn(f"s{i}"), f"172.30.{i // 200}.{i % 200 + 1}", 80, "TCP", 80,
                                node_port=30000 + i) for i in range(600)]
    endpoints = {s.name: (ep(f"10.180.{i // 200}.{i % 200 + 1}", node="node1"),)
                 for i, s in enumerate(services)}
    flows = []
    for i in (0, 1, 199, 200, 377, 599):
        want = f"10.180.{i // 200}.{i % 200 + 1}:80"
        flows.append(Flow(f"cluster IP #{i}", POD, f"172.30.{i // 200}.{i % 200 + 1}", 80, want))
        flows.append(Flow(f"NodePort #{i}", EXTERNAL, NODE_IP, 30000 + i, want, masq=True))
    flows.append(Flow("unused IP in a populated prefix", POD, "172.30.1.250", 80, ""))
    run_flows(services, endpoints, flows)


def test_tracer_refuses_rules_it_cannot_judge():
    ruleset = make_ruleset({"nat": {"NP-SERVICES": ["-m string --string x -j ACCEPT"]},
                            "filter": {}})
    with pytest.raises(TraceError):
        trace(ruleset, Packet(POD, "tcp", "1.2.3.4", 80), NODE)
    dangling = make_ruleset({"nat": {"NP-SERVICES": ["-j NP-GONE"]}, "filter": {}})
    with pytest.raises(TraceError):
        trace(dangling, Packet(POD, "tcp", "1.2.3.4", 80), NODE)


def _masquerade_by_endpoint(services, endpoints, packet: Packet) -> dict[str, bool]:
    result = Tracer(compile_state(services, endpoints), NODE).trace(packet)
    return {o.endpoint: o.masquerade for o in result.outcomes if o.endpoint}


def test_hairpin_masquerades_exactly_the_connections_that_return_to_their_source():
    """Another node's endpoint has its DNAT inline (no NP-SEP chain, no hairpin rule); the
    cases where a packet from such an endpoint can reach this node's service chains keep the
    chain, so that a connection sent back to its own source is still masqueraded."""
    cluster = ServicePortInfo(spn("svc1"), "172.30.0.41", 80, "TCP", 80, node_port=3001)
    affinity = dataclasses.replace(cluster, name=spn("svc2"), cluster_ip="172.30.0.42",
                                   node_port=0, affinity_timeout=600)
    local = etp_local_service(health_check_node_port=30000)
    local = dataclasses.replace(local, name=spn("svc3"), cluster_ip="172.30.0.43",
                                node_port=3003, external_ips=(), load_balancer_ips=())
    eps = (ep("10.180.0.1", node="node1"), ep("10.180.2.1", node="host2"))
    endpoints = {cluster.name: eps, affinity.name: eps, local.name: eps}
    nat = compile_state([cluster, affinity, local], endpoints).tables["nat"]
    dnat_inline = {c: r for c, r in nat.items() if c.startswith("NP-SVC-")
                   and any("DNAT --to-destination 10.180.2.1:80" in rule for rule in r)}
    # Only the Cluster-policy service without affinity inlines host2's endpoint.
    assert len(dnat_inline) == 1
    services = [cluster, affinity, local]
    # The local endpoint reaching its own service: masqueraded only when sent back to itself.
    for dest in ("172.30.0.41", "172.30.0.42", "172.30.0.43"):
        assert _masquerade_by_endpoint(services, endpoints, Packet("10.180.0.1", "tcp", dest, 80)) \
            == {"10.180.0.1:80": True, "10.180.2.1:80": False}, dest
    # host2's pod reaching this node's NodePort of the Local service is sent to any endpoint
    # (pods go "through the LB"): its own address must still be masqueraded.
    assert _masquerade_by_endpoint(services, endpoints, Packet("10.180.2.1", "tcp", NODE_IP, 3003)) \
        == {"10.180.0.1:80": False, "10.180.2.1:80": True}
    # Under Cluster policy the EXT chain masquerades every external connection anyway.
    assert set(_masquerade_by_endpoint(services, endpoints,
                                       Packet("10.180.2.1", "tcp", NODE_IP, 3001)).values()) == {True}
