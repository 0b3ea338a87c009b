"""The iptables rule compiler against real iptables, in namespaces this test creates.

- What RuleCompiler writes is accepted by iptables-restore (legacy and nft), and what
  iptables-save prints back parses and normalises to exactly the compiled Ruleset (so drift
  detection compares like with like); an incremental plan converges to the next Ruleset and
  deletes stale chains.
- Real packets: a node-originated connection to a service VIP reaches the endpoint through
  NP-SERVICES → dispatch tree → NP-SVC → NP-SEP DNAT, and a service without endpoints refuses.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.iptables.ruleset import (
    HOOK_JUMPS,
    diff,
    normalise_ruleset,
    parse_save,
    render_restore,
)
from netplane.proxy.model import (
    EndpointInfo,
    NodeContext,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

NODE = NodeContext("node1", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")
MODES = [m for m in ("legacy", "nft") if shutil.which(f"iptables-{m}-restore")]


def spn(name: str, port: str = "p80", proto: str = "TCP") -> ServicePortName:
    return ServicePortName("ns1", name, port, proto)


def rich_state() -> ProxyState:
    """Every kind of rule the compiler writes, plus enough services for a dispatch tree."""
    services = [
        ServicePortInfo(spn("lb"), "172.30.0.41", 80, "TCP", 80, node_port=30001,
                        external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",),
                        load_balancer_source_ranges=("203.0.113.0/25",), affinity_timeout=10800,
                        external_policy_local=True, health_check_node_port=30000),
        ServicePortInfo(spn("dns", "dns", "UDP"), "172.30.0.10", 53, "UDP", 53, node_port=30053),
        ServicePortInfo(spn("sctp", "s", "SCTP"), "172.30.0.12", 9, "SCTP", 9),
        ServicePortInfo(spn("itp"), "172.30.0.13", 80, "TCP", 80, internal_policy_local=True),
        ServicePortInfo(spn("empty"), "172.30.0.14", 80, "TCP", 80, node_port=30014,
                        external_ips=("192.168.99.14",)),
    ] + [ServicePortInfo(spn(f"bulk{i}"), f"172.30.{1 + i // 100}.{i % 100 + 1}", 80, "TCP",
                         80, node_port=31000 + i) for i in range(150)]
    endpoints = {
        spn("lb"): (EndpointInfo("10.180.0.1", 80, node_name="node1"),
                    EndpointInfo("10.180.2.1", 80, node_name="host2")),
        spn("dns", "dns", "UDP"): (EndpointInfo("10.180.0.53", 53),),
        spn("sctp", "s", "SCTP"): (EndpointInfo("10.180.0.9", 9),),
        spn("itp"): (EndpointInfo("10.180.2.13", 80, node_name="host2"),),
    }
    for i in range(150):
        endpoints[spn(f"bulk{i}")] = tuple(EndpointInfo(f"10.181.{i}.{j}", 80) for j in (1, 2, 3))
    return ProxyState({s.name: s for s in services}, endpoints,
                      frozenset(s.name for s in services))


def restore(run_in, ns: str, mode: str, text: str) -> None:
    proc = run_in(ns, f"iptables-{mode}-restore", "-w", "--noflush", input=text, check=False)
    assert proc.returncode == 0, f"iptables-{mode}-restore failed: {proc.stderr}\n{text[:2000]}"


def saved(run_in, ns: str, mode: str):
    return parse_save(run_in(ns, f"iptables-{mode}-save").stdout)


@pytest.mark.parametrize("mode", MODES)
def test_restore_save_roundtrip_and_incremental_convergence(netns_factory, run_in, mode):
    ns = netns_factory("ipt")
    compiler = RuleCompiler(NODE)
    first = compiler.compile(rich_state(), full=True)
    restore(run_in, ns, mode, render_restore(diff(None, first)))
    assert saved(run_in, ns, mode) == normalise_ruleset(first)
    # The hook jumps are valid rules for this iptables too.
    for table, chain, rule in HOOK_JUMPS:
        run_in(ns, f"iptables-{mode}", "-w", "-t", table, "-A", chain, *shlex.split(rule))
        run_in(ns, f"iptables-{mode}", "-w", "-t", table, "-C", chain, *shlex.split(rule))

    # One service loses an endpoint, one goes away, one gains endpoints.
    st = rich_state()
    services = dict(st.services)
    endpoints = dict(st.endpoints)
    endpoints[spn("lb")] = endpoints[spn("lb")][:1]
    del services[spn("bulk7")]
    endpoints[spn("empty")] = (EndpointInfo("10.180.0.14", 80, node_name="node1"),)
    changed = frozenset({spn("lb"), spn("bulk7"), spn("empty")})
    second = compiler.compile(ProxyState(services, endpoints, changed), full=False)
    plan = diff(first, second)
    assert plan.delete["nat"]  # stale SEP/SVC chains go
    restore(run_in, ns, mode, render_restore(plan))
    now = saved(run_in, ns, mode)
    assert now == normalise_ruleset(second)
    # Neutron's convergence check: applying again would change nothing.
    assert diff(now, normalise_ruleset(second)).empty()


SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(f"hello from {sys.argv[1]} to {peer[0]}".encode()); c.close()
"""
CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(c.recv(100).decode())
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.parametrize("mode", MODES)
def test_real_connections_follow_the_rules(netns_factory, run_in, mode):
    # A "node" namespace holding the rules and an endpoint (on its lo), and a "client" namespace
    # on a veth link that routes the service range to the node.
    node, client = netns_factory("node"), netns_factory("client")
    run_in(node, "ip", "link", "add", "np-n0", "type", "veth", "peer", "name", "np-c0")
    run_in(node, "ip", "link", "set", "np-c0", "netns", client)
    run_in(node, "ip", "addr", "add", "192.168.0.2/24", "dev", "np-n0")
    run_in(node, "ip", "link", "set", "np-n0", "up")
    run_in(node, "ip", "addr", "add", "10.180.0.1/32", "dev", "lo")
    run_in(node, "ip", "route", "add", "172.30.0.0/16", "dev", "np-n0")
    run_in(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # this namespace's own settings
    # Linux 6.x rate-limits ICMP errors per peer starting from an empty bucket (nstat shows
    # IcmpOutRateLimitHost), which would eat the REJECTs this test is about.
    run_in(node, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
    run_in(client, "ip", "addr", "add", "192.168.0.9/24", "dev", "np-c0")
    run_in(client, "ip", "link", "set", "np-c0", "up")
    run_in(client, "ip", "route", "add", "172.30.0.0/16", "via", "192.168.0.2")

    services = [ServicePortInfo(spn("web"), "172.30.0.41", 80, "TCP", 8080, node_port=30080),
                ServicePortInfo(spn("none"), "172.30.0.42", 80, "TCP", 8080, node_port=30081)]
    services += [ServicePortInfo(spn(f"bulk{i}"), f"172.30.{1 + i // 100}.{i % 100 + 1}", 80,
                                 "TCP", 80, node_port=31000 + i) for i in range(40)]
    endpoints = {spn("web"): (EndpointInfo("10.180.0.1", 8080, node_name="node1"),)}
    endpoints |= {spn(f"bulk{i}"): (EndpointInfo("10.181.0.1", 80),) for i in range(40)}
    st = ProxyState({s.name: s for s in services}, endpoints, frozenset(s.name for s in services))
    ruleset = RuleCompiler(NODE).compile(st, full=True)
    assert any(c.startswith("NP-D-") for c in ruleset.tables["nat"])  # a real tree
    assert any(c.startswith("NP-P-") for c in ruleset.tables["nat"])
    restore(run_in, node, mode, render_restore(diff(None, ruleset)))
    for table, chain, rule in HOOK_JUMPS:
        run_in(node, f"iptables-{mode}", "-w", "-t", table, "-A", chain, *shlex.split(rule))

    server = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", SERVER,
                               "10.180.0.1", "8080"], stdout=subprocess.PIPE, text=True)

    def connect(ns: str, ip: str, port: int) -> str:
        return run_in(ns, sys.executable, "-c", CLIENT, ip, str(port), timeout=20).stdout.strip()

    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # nat PREROUTING → NP-SERVICES → tree leaf → NP-SVC → NP-SEP → DNAT.
        assert connect(client, "172.30.0.41", 80).startswith("hello from 10.180.0.1")
        # Last rule of NP-SERVICES → NP-NODEPORTS port tree → NP-EXT → ... → DNAT.
        assert connect(client, "192.168.0.2", 30080).startswith("hello from 10.180.0.1")
        # nat OUTPUT for the node's own connections.
        assert connect(node, "172.30.0.41", 80).startswith("hello from 10.180.0.1")
        # No endpoints: REJECT (ICMP port unreachable) from NP-FILTER-SERVICES in FORWARD and
        # from NP-EXTERNAL-NODEPORTS in INPUT.
        assert connect(client, "172.30.0.42", 80) == "ConnectionRefusedError"
        assert connect(client, "192.168.0.2", 30081) == "ConnectionRefusedError"
        # A port no service uses on a VIP is not intercepted (and nothing listens there).
        assert not connect(client, "172.30.0.41", 81).startswith("hello")
    finally:
        server.kill()
        server.wait(timeout=10)
