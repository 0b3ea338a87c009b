"""Issue 5, odd input and convergence with real packets (one sandbox for the module): odd but
valid names, a Service with 100 ports, one with 3,000 endpoints, hostile-looking but valid
objects (quotes, newlines, iptables syntax in free-text fields), and apply-twice convergence
(a resync with no change leaves the rules as they are; unrelated object changes cause no sync).

The 3,000 endpoints are addresses of the `sink` host: inside its namespace the whole /20 is a
local route (AnyIP) with one server behind it, and node1 routes the /20 to it. Every endpoint the
proxy may pick therefore answers, so 60 connections check the whole endpoint set's rules.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time

import pytest

pytestmark = pytest.mark.netns

ODD_NAME = "a" + "-0" * 30 + "z"            # 62 characters, as long and dashy as DNS-1035 allows
MANY_PORTS = 100
MANY_ENDPOINTS = 3000
SINK_RANGE = "10.250.0.0/20"
SINK_PORT = 7000
MARK = "PWNED"                               # in every hostile string; must never reach iptables


def chains(text: str, prefix: str) -> set[str]:
    return {line[1:].split()[0] for line in text.splitlines() if line.startswith(f":{prefix}")}


@pytest.fixture(scope="module")
def env(cluster, kit):
    cluster.run_pods(
        kit.server_pod("wide", "node2", labels={"app": "wide"},
                       extra_tcp=range(9000, 9000 + MANY_PORTS)),
        kit.server_pod("odd-1", "node1", labels={"app": "odd"}),
        kit.client_pod("cli1", "node1"),
    )
    return {}


def test_odd_names_and_a_hundred_ports(cluster, env, kit):
    before = cluster.iptables_save("node1", "nat")
    ports = [{"name": f"p-{i}" if i % 2 else f"x{i}-{'y' * 8}", "port": 1000 + i, "targetPort": 9000 + i,
              "protocol": "TCP"} for i in range(MANY_PORTS)]
    cluster.apply(kit.service("wide", selector={"app": "wide"}, ports=ports),
                  kit.service(ODD_NAME, selector={"app": "odd"},
                              ports=[{"name": "a", "port": 80, "targetPort": "web"},
                                     {"name": "b-b", "port": 80, "targetPort": "echo-udp", "protocol": "UDP"}]))
    wide, odd = cluster.cluster_ip("wide"), cluster.cluster_ip(ODD_NAME)
    cluster.wait_answers("pod/cli1", wide, 1000 + MANY_PORTS - 1)
    cluster.wait_answers("pod/cli1", odd, 80)
    after = cluster.iptables_save("node1", "nat")
    # One service chain per service-port. Endpoint chains (hairpin rule + DNAT) only for the
    # endpoints on node1 (odd-1's two ports); wide's endpoint on node2 is a DNAT rule inline.
    assert len(chains(after, "NP-SVC-") - chains(before, "NP-SVC-")) == MANY_PORTS + 2
    assert len(chains(after, "NP-SEP-") - chains(before, "NP-SEP-")) == 2
    wide_ip = cluster.pod_ip("wide")
    assert len(re.findall(rf"^-A NP-SVC-\S+ .*-j DNAT --to-destination {re.escape(wide_ip)}:", after,
                          re.M)) == MANY_PORTS
    for i in (0, 1, 37, 64, MANY_PORTS - 1):
        s = cluster.connect("pod/cli1", wide, 1000 + i, n=5)
        assert s["endpoints"] == {"wide": 5} and s["local_ports"] == {str(9000 + i): 5}, (i, s)
    assert cluster.connect("pod/cli1", odd, 80, proto="udp", n=5)["endpoints"] == {"odd-1": 5}
    # Chain names stay within iptables' 28 characters whatever the service name.
    assert all(len(c) <= 28 for c in chains(after, "NP-"))


@pytest.fixture
def sink(cluster, kit):
    """A server on the sink host answering for the whole SINK_RANGE; node1 routes it there."""
    cluster.run("host/sink", "ip", "route", "replace", "local", SINK_RANGE, "dev", "lo")
    cluster.run("node/node1", "ip", "route", "replace", SINK_RANGE, "via", cluster.host_ip("sink"))
    server = cluster.popen("host/sink", kit.PY, kit.SERVERS, "serve", "--name", "sink", "--tcp", str(SINK_PORT))
    try:
        assert server.stdout.readline().strip() == "READY"
        yield
    finally:
        server.kill()
        server.wait(10)


def test_thousands_of_endpoints(cluster, env, kit, sink):
    net = ipaddress.ip_network(SINK_RANGE)
    addrs = [str(a) for a in list(net.hosts())[:MANY_ENDPOINTS]]
    port = [{"name": "http", "port": SINK_PORT, "protocol": "TCP"}]
    slices = [kit.endpoint_slice(f"many-{i // 100}", "many",
                                 [kit.endpoint(a, node="node2") for a in addrs[i:i + 100]], port)
              for i in range(0, MANY_ENDPOINTS, 100)]
    t0 = time.monotonic()
    cluster.apply(kit.service("many", ports=[{"name": "http", "port": 80, "targetPort": SINK_PORT}]), *slices)
    ip = cluster.cluster_ip("many")

    def endpoints_of_service_chains() -> dict[str, int]:
        """NP-SVC chain → how many endpoints it picks from (a jump to an endpoint chain, or, for
        another node's endpoint as here, a DNAT rule inline)."""
        nat = cluster.iptables_save("node1", "nat")
        return {c: len(re.findall(rf"^-A {c} .*-j (NP-SEP-|DNAT )", nat, re.M))
                for c in chains(nat, "NP-SVC-")}

    kit.eventually(lambda: MANY_ENDPOINTS in endpoints_of_service_chains().values(), timeout=90, interval=1.0,
                   what=f"a service chain with {MANY_ENDPOINTS} endpoints on node1")
    took = time.monotonic() - t0
    # Every endpoint answers (they are all the sink), so 60 random picks must all succeed.
    s = cluster.connect("pod/cli1", ip, 80, n=60)
    assert s["endpoints"] == {"sink": 60}, s
    nat = cluster.iptables_save("node1", "nat")
    assert not any(f"{a}:{SINK_PORT}" in line for line in nat.splitlines() if line.startswith("-A NP-SEP-")
                   for a in addrs[:50])  # node2's endpoints have no endpoint chains on node1
    print(f"{MANY_ENDPOINTS} endpoints programmed on node1 in {took:.1f}s (apply included)")


def test_hostile_but_valid_objects_inject_nothing(cluster, env, kit):
    ips_odd = cluster.pod_ip("odd-1")
    hostile = f'x" -j ACCEPT\n-A NP-SERVICES -j DROP {MARK}\nCOMMIT\n*filter\n-A INPUT -j DROP # {MARK} \' $(reboot)'
    svc = kit.service("hostile", ports=[{"name": "http", "port": 80, "targetPort": kit.TCP_PORT}],
                      annotations={"service.kubernetes.io/topology-mode": hostile,
                                   "example.com/note": hostile, "service.kubernetes.io/x": hostile})
    svc["metadata"]["labels"] = {"quote": "a-b_c.d"}
    ep = kit.endpoint(ips_odd, node="node1", zone=hostile)
    ep["hostname"] = "host-1"
    ep["targetRef"] = {"kind": "Pod", "name": "odd-1", "namespace": "default"}
    sl = kit.endpoint_slice("hostile-1", "hostile", [ep], [{"name": "http", "port": kit.TCP_PORT, "protocol": "TCP"}])
    sl["metadata"]["annotations"] = {"note": hostile}
    before = {t: cluster.iptables_save("node1", t) for t in ("filter", "nat")}
    cluster.apply(svc, sl)
    ip = cluster.cluster_ip("hostile")
    cluster.wait_answers("pod/cli1", ip, 80)
    assert cluster.connect("pod/cli1", ip, 80, n=10)["endpoints"] == {"odd-1": 10}
    for node in ("node1", "node2"):
        text = cluster.iptables_save(node)
        assert MARK not in text and "reboot" not in text, text
    # Built-in chains hold exactly what they held before (netplane's hook jumps included).
    after = {t: cluster.iptables_save("node1", t) for t in ("filter", "nat")}
    for table in after:
        def builtin(text: str) -> list[str]:
            return sorted(l for l in text.splitlines()
                          if re.match(r"-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ", l))
        assert builtin(after[table]) == builtin(before[table]), table
    assert cluster.connect("pod/cli1", cluster.cluster_ip("wide"), 1000, n=3)["ok"] == 3


def _counts(cluster, kit, node: str) -> tuple[float, float]:
    """(syncs so far, iptables-restore runs so far) of the node's current proxy process."""
    text = cluster.metrics(node)
    syncs = sum(kit.metric_value(text, "netplane_proxy_syncs_total", {"kind": k}) or 0.0
                for k in ("full", "partial"))
    return syncs, kit.metric_value(text, "netplane_proxy_iptables_restores_total") or 0.0


def test_apply_twice_converges(cluster, env, kit):
    """A restart is a fresh full sync from nothing: identical rules. Then syncs without a
    relevant change (periodic ones every --sync-period, and after Service annotations the proxy
    ignores) write nothing: no iptables-restore run, identical rules."""
    node = "node1"
    cluster.set_proxy_args(node, ["--sync-period", "2s"])

    def same_twice() -> list[str] | None:
        a = cluster.np_rules(node)
        time.sleep(1.0)
        return a if a == cluster.np_rules(node) else None

    rules = kit.eventually(same_twice, timeout=60, what="rules stop changing")
    cluster.restart_proxy(node)
    assert cluster.np_rules(node) == rules, "a restarted proxy's first (full) sync changed the rules"
    syncs0, restores0 = _counts(cluster, kit, node)
    cluster.kubectl("annotate", "svc", "wide", "example.com/touched=yes")
    cluster.kubectl("annotate", "svc", ODD_NAME, "example.com/touched=yes")
    kit.eventually(lambda: _counts(cluster, kit, node)[0] >= syncs0 + 2, timeout=20,
                   what="two more (periodic) syncs")
    syncs1, restores1 = _counts(cluster, kit, node)
    assert restores1 == restores0, f"syncs without changes ran iptables-restore: {restores0} -> {restores1}"
    assert cluster.np_rules(node) == rules, "a sync without changes changed the rules"


def test_unrelated_endpoint_slice_change_writes_nothing(cluster, env, kit):
    """A label on an EndpointSlice (or on its Service: the controller copies it to the slices)
    changes no endpoint: no rule is written."""
    node = "node2"
    rules = cluster.np_rules(node)
    syncs0, restores0 = _counts(cluster, kit, node)
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=wide",
                                        "-o", "json").stdout)["items"]
    cluster.kubectl("label", "endpointslice", slices[0]["metadata"]["name"], "touched=yes")
    cluster.kubectl("label", "svc", ODD_NAME, "touched=yes")
    time.sleep(2.5)  # > the min sync period
    syncs1, restores1 = _counts(cluster, kit, node)
    assert restores1 == restores0, f"label-only changes ran iptables-restore: {restores0} -> {restores1}"
    assert cluster.np_rules(node) == rules
