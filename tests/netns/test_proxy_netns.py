"""`netplane proxy` end to end without the sandbox: the real process in a "node" namespace, the
embedded apiserver (this process) reachable from inside that namespace on its loopback, two
"pods" wired to the node with veths, and real TCP/UDP traffic to a ClusterIP.

Namespaces (all made here, deleted at teardown):
  node  : lo with 172.18.0.2/32 (the node IP); veths to the pods, routes /32 per pod;
          the apiserver socket on 127.0.0.1:<port>; `netplane proxy` runs here
  pod-a : eth0 10.244.1.2/32, default via 10.244.1.1 (onlink); TCP/UDP servers answering "a"
  pod-b : eth0 10.244.1.3/32, same, answering "b"

What it proves: DNAT of a ClusterIP to both endpoints (≥40 connections hit both); an endpoint
change is a partial sync that rewrites only the chains it touches (iptables-save before/after)
and the next sync writes nothing (no iptables-restore at all, from the proxy's metrics); a UDP
flow pinned to a removed endpoint is moved by the conntrack cleanup; an outside flush of every
table is repaired by a full resync; SIGTERM leaves the rules in place; `--cleanup` removes
everything netplane owns and leaves the foreign rules.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netplane.apiserver.main import ApiServer
from netplane.k8s import Client
from netplane.k8s.config import load_kubeconfig, write_kubeconfig
from netplane.proxy.iptables.ruleset import parse_save
from netplane.sandbox.nsutil import listening_socket_in

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

RunIn = Callable[..., subprocess.CompletedProcess[str]]
NETPLANE = os.path.join(os.path.dirname(sys.executable), "netplane")
VIP, UDP_VIP = "10.96.0.50", "10.96.0.53"
TCP_PORT, UDP_PORT, TARGET_TCP, TARGET_UDP = 80, 53, 8080, 5353
POD_IPS = {"a": "10.244.1.2", "b": "10.244.1.3"}
METRICS = "127.0.0.1:10249"
FOREIGN = ("*nat\n:FOREIGN-MASQ - [0:0]\n-A FOREIGN-MASQ -s 10.9.0.0/16 -j MASQUERADE\n"
           "-A POSTROUTING -j FOREIGN-MASQ\nCOMMIT\n*filter\n-A INPUT -s 192.0.2.0/24 -j DROP\nCOMMIT\n")

SERVER = r"""
import socket, sys, threading
name, tcp, udp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", tcp)); t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", udp))
def udp_loop():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(name.encode(), peer)
threading.Thread(target=udp_loop, daemon=True).start()
while True:
    c, _ = t.accept(); c.sendall(name.encode()); c.close()
"""

TCP_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=1); out.append(s.recv(16).decode() or "?"); s.close()
    except OSError as e:
        out.append("-")
print(" ".join(out))
"""

UDP_CLIENT = r"""
import socket, sys
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", sport)); s.settimeout(1)
s.sendto(b"ping", (host, port))
try:
    print(s.recvfrom(16)[0].decode())
except OSError:
    print("-")
"""


# -- topology -------------------------------------------------------------------------------------


def wire(run_in: RunIn, node: str, pod: str, name: str, ip: str) -> None:
    host_if = f"np{name}"
    run_in(node, "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pod)
    run_in(node, "ip", "addr", "add", "10.244.1.1/32", "dev", host_if)
    run_in(node, "ip", "link", "set", host_if, "up")
    run_in(node, "ip", "route", "add", f"{ip}/32", "dev", host_if)
    run_in(pod, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
    run_in(pod, "ip", "link", "set", "eth0", "up")
    run_in(pod, "ip", "route", "add", "default", "via", "10.244.1.1", "dev", "eth0", "onlink")


@pytest.fixture
def cluster(netns_factory, run_in: RunIn, tmp_path) -> Iterator[dict[str, Any]]:
    node = netns_factory("node")
    pods = {name: netns_factory(f"pod{name}") for name in POD_IPS}
    run_in(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run_in(node, "ip", "addr", "add", "172.18.0.2/32", "dev", "lo")
    # Node-originated service traffic needs a route before OUTPUT's DNAT (nodes have a default);
    # the DNAT then re-routes it to a pod.
    run_in(node, "ip", "route", "add", "default", "dev", "lo", "src", "172.18.0.2")
    for name, ip in POD_IPS.items():
        wire(run_in, node, pods[name], name, ip)
    run_in(node, "iptables-nft-restore", "--noflush", input=FOREIGN)

    sock = listening_socket_in(node, "127.0.0.1", 0)
    port = sock.getsockname()[1]
    apiserver = ApiServer(listen=[("127.0.0.1", 0)], sockets=[sock]).start()
    procs: list[subprocess.Popen] = []
    try:
        inside = tmp_path / "kubeconfig.node"
        write_kubeconfig(inside, f"http://127.0.0.1:{port}")
        outside = tmp_path / "kubeconfig"
        write_kubeconfig(outside, apiserver.url)
        client = Client(load_kubeconfig(str(outside)))
        client.create("/api/v1/nodes", {"metadata": {"name": "node1", "labels": {
            "topology.kubernetes.io/zone": "z1"}}})
        client.patch("/api/v1/nodes/node1/status", {"status": {"addresses": [
            {"type": "InternalIP", "address": "172.18.0.2"}]}})
        for name, ns in pods.items():
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name,
                                           str(TARGET_TCP), str(TARGET_UDP)]))
        for name, ip in POD_IPS.items():
            wait_for(lambda ip=ip: tcp(run_in, node, ip, TARGET_TCP, 1) != ["-"], f"server in pod {name}")
        log = open(tmp_path / "proxy.log", "w")
        proxy = subprocess.Popen(
            ["ip", "netns", "exec", node, NETPLANE, "-v", "proxy", "--backend", "iptables",
             "--kubeconfig", str(inside), "--node-name", "node1", "--cluster-cidr", "10.244.0.0/16",
             "--iptables-mode", "nft", "--metrics-addr", METRICS, "--healthz-addr", "127.0.0.1:10256",
             "--min-sync-period", "200ms", "--sync-period", "2s"],
            stdout=log, stderr=subprocess.STDOUT)
        procs.append(proxy)
        yield {"node": node, "pods": pods, "client": client, "proxy": proxy,
               "log": tmp_path / "proxy.log"}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        apiserver.stop()


# -- helpers --------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def tcp(run_in: RunIn, ns: str, host: str, port: int, n: int) -> list[str]:
    return run_in(ns, sys.executable, "-c", TCP_CLIENT, host, str(port), str(n), timeout=60).stdout.split()


def udp(run_in: RunIn, ns: str, sport: int) -> str:
    return run_in(ns, sys.executable, "-c", UDP_CLIENT, UDP_VIP, str(UDP_PORT), str(sport)).stdout.strip()


def metrics(run_in: RunIn, ns: str) -> dict[str, float]:
    script = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=2).read().decode())"
    proc = run_in(ns, sys.executable, "-c", script, check=False)
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def nat_rules(run_in: RunIn, ns: str):
    return parse_save(run_in(ns, "iptables-nft-save", "-t", "nat").stdout).chains("nat")


def service(name: str, vip: str, port: int, target: int, proto: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": vip, "ports": [{"name": "p", "port": port, "targetPort": target,
                                                   "protocol": proto}]}}


def endpoint_slice(name: str, svc: str, target: int, proto: str, *pods: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [POD_IPS[p]], "conditions": {"ready": True}, "nodeName": "node1"}
                          for p in pods],
            "ports": [{"name": "p", "port": target, "protocol": proto}]}


SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


# -- the test -------------------------------------------------------------------------------------


def test_proxy_end_to_end(cluster: dict[str, Any], run_in: RunIn, root_netns_snapshot) -> None:
    node, client, proxy = cluster["node"], cluster["client"], cluster["proxy"]
    root_before = root_netns_snapshot()

    def log_tail() -> str:
        return cluster["log"].read_text()[-3000:]

    client.create("/api/v1/namespaces/default/services", service("web", VIP, TCP_PORT, TARGET_TCP, "TCP"))
    client.create("/api/v1/namespaces/default/services", service("dns", UDP_VIP, UDP_PORT, TARGET_UDP, "UDP"))
    client.create(SLICES, endpoint_slice("web-1", "web", TARGET_TCP, "TCP", "a", "b"))
    client.create(SLICES, endpoint_slice("dns-1", "dns", TARGET_UDP, "UDP", "a", "b"))

    # 1. ClusterIP DNAT spreads new connections over both endpoints, from the node (OUTPUT)
    #    and from a pod (PREROUTING).
    first = wait_for(lambda: (r := tcp(run_in, node, VIP, TCP_PORT, 1)) != ["-"] and r,
                     "the first sync: " + log_tail())
    assert first[0] in ("a", "b")
    seen = tcp(run_in, node, VIP, TCP_PORT, 60)
    assert "-" not in seen and seen.count("a") >= 5 and seen.count("b") >= 5, seen
    from_pod = tcp(run_in, cluster["pods"]["a"], VIP, TCP_PORT, 40)
    assert "-" not in from_pod and {"a", "b"} <= set(from_pod), from_pod

    # 2. An endpoint change is a partial sync touching only its chains; then nothing is written.
    wait_for(lambda: metrics(run_in, node).get('netplane_proxy_syncs_total{kind="full"}') == 1,
             "metrics")
    before = nat_rules(run_in, node)
    restores_before = metrics(run_in, node)["netplane_proxy_iptables_restores_total"]
    client.patch(f"{SLICES}/web-1", {"endpoints": [
        {"addresses": [POD_IPS["a"]], "conditions": {"ready": True}, "nodeName": "node1"}]})
    wait_for(lambda: set(tcp(run_in, node, VIP, TCP_PORT, 16)) == {"a"}, "web traffic to a only")
    after = nat_rules(run_in, node)
    changed = {c for c in set(before) | set(after) if before.get(c) != after.get(c)}
    web_sep_b = [c for c in before if c.startswith("NP-SEP-") and c not in after]
    assert len(web_sep_b) == 1, changed
    assert changed == {web_sep_b[0], *[c for c in changed if c.startswith("NP-SVC-")]}, changed
    assert len(changed) == 2, changed  # the web SVC chain and the removed endpoint's SEP chain
    m = metrics(run_in, node)
    assert m['netplane_proxy_syncs_total{kind="full"}'] == 1
    assert m["netplane_proxy_iptables_restores_total"] == restores_before + 1
    # The periodic syncs (every 2 s) that follow find nothing to do: no restore at all.
    partial = m['netplane_proxy_syncs_total{kind="partial"}']
    wait_for(lambda: metrics(run_in, node)['netplane_proxy_syncs_total{kind="partial"}'] >= partial + 2,
             "two more syncs", timeout=10)
    m = metrics(run_in, node)
    assert m["netplane_proxy_iptables_restores_total"] == restores_before + 1
    assert m['kubeproxy_sync_proxy_rules_iptables_last{table="nat"}'] == 0
    assert nat_rules(run_in, node) == after

    # 3. A UDP flow pinned (by conntrack) to an endpoint that is removed moves to the other one.
    sport = 40000
    pinned = udp(run_in, node, sport)
    assert pinned in ("a", "b") and all(udp(run_in, node, sport) == pinned for _ in range(3))
    other = "b" if pinned == "a" else "a"
    client.patch(f"{SLICES}/dns-1", {"endpoints": [
        {"addresses": [POD_IPS[other]], "conditions": {"ready": True}, "nodeName": "node1"}]})
    wait_for(lambda: udp(run_in, node, sport) == other, f"the UDP flow to move to {other}: " + log_tail())

    # 4. Someone flushes every table (a firewall reload): traffic breaks, the canary notices,
    #    a full resync repairs everything.
    good = nat_rules(run_in, node)
    for table in ("nat", "filter"):
        run_in(node, "iptables-nft", "-t", table, "-F")
        run_in(node, "iptables-nft", "-t", table, "-X")
    assert tcp(run_in, node, VIP, TCP_PORT, 1) == ["-"]
    wait_for(lambda: tcp(run_in, node, VIP, TCP_PORT, 1) == ["a"], "repair after the flush: " + log_tail())
    assert metrics(run_in, node)['netplane_proxy_syncs_total{kind="full"}'] == 2
    assert nat_rules(run_in, node) == good

    # 5. SIGTERM: the process exits 0 and the rules stay (connections survive restarts).
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(15) == 0, log_tail()
    assert tcp(run_in, node, VIP, TCP_PORT, 1) == ["a"]

    # 6. --cleanup removes everything netplane owns and nothing else.
    run_in(node, "iptables-nft-restore", "--noflush", input=FOREIGN)  # the flush took them
    out = run_in(node, NETPLANE, "proxy", "--cleanup", "--iptables-mode", "nft").stdout
    assert "chain NP-SERVICES" in out and "rule PREROUTING" in out
    saved = run_in(node, "iptables-nft-save").stdout
    assert "NP-" not in saved
    assert "-A FOREIGN-MASQ -s 10.9.0.0/16 -j MASQUERADE" in saved
    assert "-A POSTROUTING -j FOREIGN-MASQ" in saved and "-A INPUT -s 192.0.2.0/24 -j DROP" in saved
    assert tcp(run_in, node, VIP, TCP_PORT, 1) == ["-"]
    assert "nothing to remove" in run_in(node, NETPLANE, "proxy", "--cleanup", "--iptables-mode", "nft").stdout
    assert root_netns_snapshot() == root_before  # everything happened in our namespaces
