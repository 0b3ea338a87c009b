"""Issue 5, the proxy hosted in the node agent (`netplane agent --proxy iptables`, topology
`proxy: agent`; one DaemonSet on kind): Services work from pods, the node and an external host
with no `netplane proxy` process anywhere, the proxy's ports belong to the agent process, and an
agent restart keeps an open connection and the rules.

Signals go only to this module's cluster: its agents, by the pid file the sandbox writes.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def backend() -> str:
    """Overrides conftest's backend parameter: this module's cluster hosts the proxy in the agents."""
    return "agent"


@pytest.fixture(scope="module")
def env(cluster):
    ip = cluster.run_nodeport_across_nodes("h")
    return {"ip": ip, "node_port": cluster.node_port("h")}


def agent_pid(cluster, node: str) -> int:
    with open(os.path.join(cluster.names.node_dir(node), "agent.pid")) as f:
        return int(f.read())


def listener_pids(cluster, node: str, port: int) -> set[int]:
    out = cluster.run(f"node/{node}", "ss", "-Hltnp", f"sport = :{port}").stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def test_services_work_with_the_proxy_inside_the_agent(cluster, env, kit):
    for node in ("node1", "node2"):
        assert not os.path.exists(os.path.join(cluster.names.node_dir(node), "proxy.pid"))
        pid = agent_pid(cluster, node)
        # kube-proxy's ports (metrics 10249, healthz 10256) are served by the agent itself.
        assert listener_pids(cluster, node, 10249) == {pid}, node
        assert listener_pids(cluster, node, 10256) == {pid}, node
        assert kit.metric_value(cluster.metrics(node), "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
    # ClusterIP from pods on both nodes and from a node: both endpoints, pod sources kept.
    for where in ("pod/cli1", "pod/cli2", "node/node1"):
        kit.spread(cluster.connect(where, env["ip"], 80, n=60), {"h1", "h2"})
    kept = cluster.connect("pod/cli1", env["ip"], 80, n=20)
    assert kept["peers"] == {cluster.pod_ip("cli1"): 20}, kept
    # NodePort from the external host: both endpoints, masqueraded (Cluster policy).
    outside = cluster.connect("host/client", cluster.node_ip("node1"), env["node_port"], n=60)
    kit.spread(outside, {"h1", "h2"})
    assert outside["peers"] and cluster.host_ip("client") not in outside["peers"], outside


def test_agent_restart_keeps_an_open_connection_and_the_rules(cluster, env, kit):
    rules = cluster.np_rules("node2")
    hold = cluster.popen("pod/cli2", kit.PY, kit.SERVERS, "hold", "--to", f"{env['ip']}:80",
                         "--duration", "10", "--interval", "0.2")
    assert "CONNECTED" in hold.stderr.readline()
    old = agent_pid(cluster, "node2")
    os.kill(old, signal.SIGTERM)
    kit.eventually(lambda: agent_pid(cluster, "node2") != old, timeout=30, what="node2 agent restarted")
    cluster.wait_proxy_healthy("node2", timeout=60)
    assert cluster.np_rules("node2") == rules, "rules changed across an agent restart"
    out, err = hold.communicate(timeout=60)
    result = json.loads(out)
    assert result["failures"] == 0 and not result["closed"] and result["probes"] >= 20, (result, err)
    kit.spread(cluster.connect("pod/cli2", env["ip"], 80, n=60), {"h1", "h2"})
