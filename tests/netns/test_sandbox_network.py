"""The sandbox's network layer in real namespaces: the underlay carries packets between nodes and
hosts, a socket bound inside the underlay is reachable from a node, node routes are replaced and
pruned, teardown removes everything by name, and the root namespace is never touched."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest

from netplane.sandbox import network
from netplane.sandbox.names import ClusterNames
from netplane.sandbox.nsutil import NamespaceError, listening_socket_in

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]


@pytest.fixture
def cluster(root_netns_snapshot):
    names = ClusterNames("t" + uuid.uuid4().hex[:6])
    before = root_netns_snapshot()
    try:
        yield names
    finally:
        network.teardown(names)
        assert not [ns for ns in network.netns_list() if ns.startswith(names.prefix)]
        assert not os.path.exists(names.cgroup_dir)
        assert not os.path.exists(names.state_dir)
        assert root_netns_snapshot() == before


def test_plan_underlay_is_kind_like():
    plan = network.plan_underlay("172.31.9.0/24", 1400, ["n1", "n2"], [("client", None), ("dns", "172.31.9.53")])
    assert plan.gateway == "172.31.9.1"
    assert dict(plan.nodes) == {"n1": "172.31.9.2", "n2": "172.31.9.3"}
    assert dict(plan.hosts) == {"client": "172.31.9.4", "dns": "172.31.9.53"}
    assert plan.prefixlen == 24


def test_underlay_nodes_hosts_routes_and_teardown(cluster):
    names = cluster
    plan = network.plan_underlay("172.31.251.0/24", 1500, ["a", "b"], [("client", None)])
    network.build(names, plan, node_names=["a", "b"], host_names=["client"])

    def ping(netns: str, ip: str) -> int:
        return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W1", ip],
                              capture_output=True).returncode

    assert ping(names.node("a"), plan.nodes["b"]) == 0
    assert ping(names.host("client"), plan.nodes["a"]) == 0
    assert ping(names.node("b"), plan.gateway) == 0
    fwd = subprocess.run(["ip", "netns", "exec", names.node("a"), "cat", "/proc/sys/net/ipv4/ip_forward"],
                         capture_output=True, text=True).stdout.strip()
    assert fwd == "1"
    assert os.path.isdir(names.node_cgroup("a"))

    # A listening socket made inside the underlay answers a node (how nodes reach the apiserver).
    sock = listening_socket_in(names.underlay, plan.gateway, 6443)
    try:
        def serve() -> None:
            conn, _ = sock.accept()
            conn.sendall(b"hello from the underlay")
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        got = subprocess.run(
            ["ip", "netns", "exec", names.node("a"), "python3", "-c",
             f"import socket; s=socket.create_connection(('{plan.gateway}', 6443), timeout=5); print(s.recv(100).decode())"],
            capture_output=True, text=True, timeout=20,
        )
        assert got.stdout.strip() == "hello from the underlay", got.stderr
    finally:
        sock.close()

    # Node routes: replaced, then pruned to exactly what is wanted.
    network.set_node_routes(names.node("a"), {"10.244.1.0/24": plan.nodes["b"], "10.244.2.0/24": plan.nodes["b"]})
    network.set_node_routes(names.node("a"), {"10.244.1.0/24": plan.nodes["b"]})
    routes = subprocess.run(["ip", "-n", names.node("a"), "route"], capture_output=True, text=True).stdout
    assert f"10.244.1.0/24 via {plan.nodes['b']}" in routes
    assert "10.244.2.0/24" not in routes

    # A process left in a node namespace and the node cgroup does not survive teardown.
    proc = subprocess.Popen(["ip", "netns", "exec", names.node("a"), "sleep", "600"])
    with open(os.path.join(names.node_cgroup("a"), "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    removed = network.teardown(names)
    assert proc.wait(10) != 0
    assert f"netns {names.underlay}" in removed and f"netns {names.node('a')}" in removed


def test_socket_in_missing_namespace_is_a_clear_error():
    with pytest.raises(NamespaceError, match="np-nope-ul"):
        listening_socket_in("np-nope-ul", "127.0.0.1", 0)
