"""Issue 5, the proxy as a process (one sandbox for the module): a restart (SIGKILL and SIGTERM)
keeps an open TCP connection and the rules; an apiserver outage (the whole control plane frozen,
then the apiserver unreachable while the proxy restarts) keeps the rules and the traffic; the
masqueradeAll and nodePortAddresses flags, set through the node's proxy.args and a restart.

Signals go only to processes of the cluster this module made: its proxies (by the pid file the
sandbox writes) and its daemon (by the pid in its state.json), which is always resumed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time

import pytest

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def env(cluster):
    ip = cluster.run_nodeport_across_nodes("l")
    return {"ip": ip, "cli2": cluster.pod_ip("cli2"),
            # node2's pod gateway: a local address of the node that is not its underlay address
            "gw2": str(ipaddress.ip_network(cluster.get("node", "node2")["spec"]["podCIDR"])[1])}


def spread(summary: dict, names: set[str], at_least: int = 10) -> None:
    assert summary["ok"] == sum(summary["endpoints"].values()) and not summary["errors"], summary
    assert set(summary["endpoints"]) == names and min(summary["endpoints"].values()) >= at_least, summary


def test_restart_keeps_an_open_connection_and_the_rules(cluster, env, kit):
    rules = cluster.np_rules("node2")
    hold = cluster.popen("pod/cli2", kit.PY, kit.SERVERS, "hold", "--to", f"{env['ip']}:80",
                         "--duration", "14", "--interval", "0.2")
    assert "CONNECTED" in hold.stderr.readline()
    pid0 = cluster.proxy_pid("node2")
    pid1 = cluster.restart_proxy("node2", signal.SIGKILL)   # crash
    assert cluster.np_rules("node2") == rules, "rules changed across a crash and restart"
    pid2 = cluster.restart_proxy("node2", signal.SIGTERM)   # orderly stop
    assert len({pid0, pid1, pid2}) == 3
    assert cluster.np_rules("node2") == rules, "rules changed across a stop and restart"
    out, err = hold.communicate(timeout=60)
    result = json.loads(out)
    assert result["failures"] == 0 and not result["closed"] and result["probes"] >= 30, (result, err)
    spread(cluster.connect("pod/cli2", env["ip"], 80, n=60), {"l1", "l2"})


def test_apiserver_outage_keeps_rules(cluster, env, kit):
    rules = {n: cluster.np_rules(n) for n in ("node1", "node2")}
    # 1. The whole control plane (apiserver, controllers, kubelets: one daemon process) freezes:
    #    watches go silent, new API connections hang. The proxies must keep their rules.
    daemon = int(cluster.state["pid"])
    os.kill(daemon, signal.SIGSTOP)
    try:
        time.sleep(4)
        spread(cluster.connect("pod/cli1", env["ip"], 80, n=60), {"l1", "l2"})
        assert {n: cluster.np_rules(n) for n in rules} == rules
    finally:
        os.kill(daemon, signal.SIGCONT)
    # 2. The apiserver is unreachable from the nodes (connections refused at its underlay
    #    address, as when its process is down) and node1's proxy restarts meanwhile: the new
    #    process cannot list anything and must leave the rules of the old one alone.
    reject = ["INPUT", "-p", "tcp", "--dport", "6443", "-j", "REJECT", "--reject-with", "tcp-reset"]
    cluster.run("underlay/", "iptables", "-I", *reject)
    try:
        old = cluster.proxy_pid("node1")
        os.kill(old, signal.SIGTERM)
        kit.eventually(lambda: cluster.proxy_pid("node1") != old, timeout=20, what="node1 proxy restarted")
        time.sleep(3)
        assert cluster.np_rules("node1") == rules["node1"], "the proxy changed the rules without an apiserver"
        spread(cluster.connect("pod/cli1", env["ip"], 80, n=60), {"l1", "l2"})
    finally:
        cluster.run("underlay/", "iptables", "-D", *reject)
    cluster.wait_proxy_healthy("node1", timeout=60)
    assert cluster.np_rules("node1") == rules["node1"]
    spread(cluster.connect("pod/cli1", env["ip"], 80, n=60), {"l1", "l2"})


def test_masquerade_all_and_node_port_addresses(cluster, env):
    port = cluster.node_port("l")
    node2 = cluster.node_ip("node2")
    # Defaults: pod → ClusterIP keeps its source; NodePorts answer on every local address,
    # including node2's pod-gateway address.
    s = cluster.connect("pod/cli2", env["ip"], 80, n=20)
    assert s["peers"] == {env["cli2"]: 20}, s
    assert cluster.connect("pod/cli2", env["gw2"], port, n=3)["ok"] == 3
    cluster.set_proxy_args("node2", ["--masquerade-all", "--nodeport-addresses", f"{node2}/32"])
    try:
        cluster.restart_proxy("node2")
        cluster.wait_fails("pod/cli2", env["gw2"], port, how="refused")   # not a NodePort address now
        cluster.wait_answers("host/client", node2, port)
        spread(cluster.connect("host/client", node2, port, n=60), {"l1", "l2"})
        s = cluster.wait_answers("pod/cli2", env["ip"], 80, expect=lambda s: env["cli2"] not in s["peers"])
        s = cluster.connect("pod/cli2", env["ip"], 80, n=60)
        spread(s, {"l1", "l2"})
        assert env["cli2"] not in s["peers"], s   # masqueradeAll: pods are masqueraded too
    finally:
        cluster.set_proxy_args("node2", [])
        cluster.restart_proxy("node2")
    s = cluster.wait_answers("pod/cli2", env["ip"], 80, expect=lambda s: s["peers"] == {env["cli2"]: 3})
