"""Issue 5, Service features with real packets (one sandbox for the module): ClusterIP from pods
and nodes, named and numeric targetPort, TCP/UDP/SCTP, NodePort and externalIPs from an external
host, LoadBalancer ingress IPs with source ranges, ClientIP affinity with its timeout, REJECT
without endpoints, headless/ExternalName ignored, masquerade/hairpin and the cluster-CIDR
detector, the conntrack-INVALID drop, metrics and health endpoints.

Endpoint choice is always checked as a distribution over many connections.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time

import pytest

pytestmark = pytest.mark.netns

EXT_IP = "203.0.113.10"
LB_IP = "198.51.100.10"


@pytest.fixture(scope="module")
def env(cluster, kit):
    """Three web pods (web-a, web-c on node1, web-b on node2), a named-port variant on node2
    whose "web" port is 8070, client pods on both nodes, and the Services the tests share."""
    k = kit
    web = {"app": "web"}
    cluster.run_pods(
        k.server_pod("web-a", "node1", labels={**web, "solo": "a"}),
        k.server_pod("web-b", "node2", labels=web),
        k.server_pod("web-c", "node1", labels=web),
        k.server_pod("named-x", "node1", labels={"app": "named"}),
        k.server_pod("named-y", "node2", labels={"app": "named"}, tcp_port=8070),
        k.client_pod("cli1", "node1"),
        k.client_pod("cli2", "node2"),
    )
    cluster.apply(
        k.service("web", selector=web, ports=[
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
            {"name": "alt", "port": 81, "targetPort": 8090, "protocol": "TCP"},
            {"name": "udp", "port": 53, "targetPort": "echo-udp", "protocol": "UDP"}]),
        k.service("named", selector={"app": "named"}),
        k.service("np", selector=web, type="NodePort", externalIPs=[EXT_IP]),
        k.service("solo", selector={"solo": "a"}),
        k.service("empty", selector={"app": "nothing"}, type="NodePort", ports=[
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
            {"name": "udp", "port": 53, "targetPort": "echo-udp", "protocol": "UDP"}]),
    )
    # External host → node1 for the external and load-balancer IPs (inside the sandbox's host
    # namespace: the underlay has no route to them, as a router in front of a cluster would).
    for host in ("client", "sink"):
        for ip in (EXT_IP, LB_IP):
            cluster.run(f"host/{host}", "ip", "route", "replace", f"{ip}/32", "via", cluster.node_ip("node1"))
    ips = {p: cluster.pod_ip(p) for p in ("web-a", "web-b", "web-c", "cli1", "cli2")}
    pod_cidrs = {n: cluster.get("node", n)["spec"]["podCIDR"] for n in ("node1", "node2")}
    web_ip = cluster.cluster_ip("web")
    for svc in ("web", "named", "np", "solo"):
        cluster.wait_everywhere(cluster.cluster_ip(svc), 80)
    cluster.wait_everywhere(EXT_IP, 80)
    return {"ips": ips, "pod_cidrs": pod_cidrs, "web": web_ip}


def spread(summary: dict, names: set[str], at_least: int = 10) -> None:
    """Every connection answered, by exactly `names`, each at least `at_least` times."""
    assert summary["ok"] == sum(summary["endpoints"].values()) and not summary["errors"], summary
    assert set(summary["endpoints"]) == names, summary
    assert min(summary["endpoints"].values()) >= at_least, summary


def in_cidr(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


WEB = {"web-a", "web-b", "web-c"}


def test_cluster_ip_from_pods_spreads_and_keeps_the_source(cluster, env):
    for client in ("cli1", "cli2"):
        s = cluster.connect(f"pod/{client}", env["web"], 80, n=90)
        assert s["ok"] == 90, s
        spread(s, WEB)
        # Cluster-CIDR detector: pod → ClusterIP is not masqueraded, on this node or across.
        assert s["peers"] == {env["ips"][client]: 90}, s
        assert s["local_ports"] == {"8080": 90}, s


def test_cluster_ip_from_a_node_is_masqueraded(cluster, env):
    s = cluster.connect("node/node1", env["web"], 80, n=90)
    assert s["ok"] == 90, s
    spread(s, WEB)
    # Not a pod source: masqueraded to the node's address on the way out (its pod gateway or
    # overlay address, both inside node1's podCIDR), never the underlay address it started with.
    assert cluster.node_ip("node1") not in s["peers"], s
    assert all(in_cidr(ip, env["pod_cidrs"]["node1"]) for ip in s["peers"]), s


def test_numeric_target_port(cluster, env):
    s = cluster.connect("pod/cli1", env["web"], 81, n=60)
    assert s["ok"] == 60 and s["local_ports"] == {"8090": 60}, s
    spread(s, WEB)


def test_named_target_port_resolves_per_endpoint(cluster, env):
    ip = cluster.cluster_ip("named")
    s = cluster.connect("pod/cli2", ip, 80, n=60)
    spread(s, {"named-x", "named-y"})
    # "web" is 8080 on named-x and 8070 on named-y: each endpoint is reached on its own port.
    assert s["local_ports"] == {"8080": s["endpoints"]["named-x"], "8070": s["endpoints"]["named-y"]}, s


def test_udp_cluster_ip(cluster, env):
    s = cluster.connect("pod/cli1", env["web"], 53, proto="udp", n=90)
    assert s["ok"] == 90, s
    spread(s, WEB)
    assert s["local_ports"] == {"8081": 90} and s["peers"] == {env["ips"]["cli1"]: 90}, s


def _sctp_supported(cluster) -> bool:
    probe = "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)"
    return cluster.run("node/node1", "python3", "-c", probe, check=False).returncode == 0


def test_sctp_service(cluster, env, kit):
    cluster.apply(kit.service("sctp", selector={"app": "web"},
                              ports=[{"name": "s", "port": 9, "targetPort": 8080, "protocol": "SCTP"}]))
    ip = cluster.cluster_ip("sctp")
    # The rule level (always): the SCTP service-port is dispatched on node1 with `-p sctp`.
    kit.eventually(lambda: any("-p sctp" in r and ip in r for r in cluster.np_rules("node1")),
                   what="an SCTP rule for the sctp Service")
    if not _sctp_supported(cluster):
        pytest.skip("this kernel has no SCTP sockets (EPROTONOSUPPORT in a namespace): "
                    "SCTP checked at the rule level only")
    # Packets (kernels with SCTP): two pods serving SCTP 7070 behind an SCTP Service.
    cluster.run_pods(kit.server_pod("sctp-a", "node1", labels={"sctp": "yes"}, sctp=[7070]),
                     kit.server_pod("sctp-b", "node2", labels={"sctp": "yes"}, sctp=[7070]))
    cluster.apply(kit.service("sctp2", selector={"sctp": "yes"},
                              ports=[{"name": "s", "port": 9, "targetPort": 7070, "protocol": "SCTP"}]))
    ip2 = cluster.cluster_ip("sctp2")
    cluster.wait_answers("pod/cli1", ip2, 9, proto="sctp")
    spread(cluster.connect("pod/cli1", ip2, 9, proto="sctp", n=60), {"sctp-a", "sctp-b"})


def test_node_port_from_an_external_host(cluster, env):
    port = cluster.node_port("np")
    for node in ("node1", "node2"):
        cluster.wait_answers("host/client", cluster.node_ip(node), port)
        s = cluster.connect("host/client", cluster.node_ip(node), port, n=90)
        assert s["ok"] == 90, s
        spread(s, WEB)
        # externalTrafficPolicy Cluster: masqueraded, the external source is not kept.
        assert cluster.host_ip("client") not in s["peers"], s
    s = cluster.connect("pod/cli1", cluster.node_ip("node2"), port, n=30)
    assert s["ok"] == 30, s


def test_external_ip_from_host_and_pod(cluster, env):
    s = cluster.wait_answers("host/client", EXT_IP, 80)
    s = cluster.connect("host/client", EXT_IP, 80, n=90)
    assert s["ok"] == 90, s
    spread(s, WEB)
    s = cluster.connect("pod/cli2", EXT_IP, 80, n=60)
    assert s["ok"] == 60, s
    # A port the Service does not have on the external IP is not proxied.
    assert cluster.connect("host/client", EXT_IP, 81, n=2, timeout=0.5)["ok"] == 0


def test_load_balancer_ingress_ip_with_source_ranges(cluster, env, kit):
    client_ip = cluster.host_ip("client")
    cluster.apply(kit.service("lb", selector={"app": "web"}, type="LoadBalancer",
                              loadBalancerSourceRanges=[f"{client_ip}/32"]))
    cluster.patch_status("svc", "lb", {"loadBalancer": {"ingress": [{"ip": LB_IP}]}})
    cluster.wait_answers("host/client", LB_IP, 80)
    s = cluster.connect("host/client", LB_IP, 80, n=90)
    assert s["ok"] == 90, s
    spread(s, WEB)
    # sink is not in loadBalancerSourceRanges: dropped (a timeout, not a refusal).
    cluster.wait_fails("host/sink", LB_IP, 80, how="timeout")
    # The ranges guard the LB IP only: the NodePort stays open to everyone.
    s = cluster.wait_answers("host/sink", cluster.node_ip("node1"), cluster.node_port("lb"))
    # Without ranges, sink may use the LB IP too.
    cluster.kubectl("patch", "svc", "lb", "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/loadBalancerSourceRanges"}]))
    cluster.wait_answers("host/sink", LB_IP, 80)


def test_session_affinity_client_ip_with_timeout(cluster, env, kit):
    cluster.apply(kit.service("sticky", selector={"app": "web"}, sessionAffinity="ClientIP",
                              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 1}}))
    ip = cluster.cluster_ip("sticky")
    cluster.wait_answers("pod/cli1", ip, 80)
    time.sleep(1.5)  # forget the probe's choice
    picks = []
    for round_ in range(10):
        s = cluster.connect("pod/cli1", ip, 80, n=10)
        assert s["ok"] == 10 and len(s["endpoints"]) == 1, (round_, s)  # sticky within the timeout
        picks.append(next(iter(s["endpoints"])))
        if round_ >= 2:
            time.sleep(1.6)  # idle longer than timeoutSeconds: the next connection is a new pick
    # Rounds 0-2 follow each other within the timeout: the same endpoint all along.
    assert picks[0] == picks[1] == picks[2], picks
    # After idle gaps the choice is random again: 8 picks over 3 endpoints are not all equal
    # unless affinity outlived its timeout (chance 1 in 2187).
    assert len(set(picks[2:])) >= 2, picks


def test_no_endpoints_rejects_fast(cluster, env):
    ip = cluster.cluster_ip("empty")
    for where in ("pod/cli1", "node/node2"):
        s = cluster.wait_fails(where, ip, 80, how="refused")
        s = cluster.connect(where, ip, 80, n=5, timeout=2.0)
        assert s["refused"] == 5 and s["elapsed"] < 1.5, s
    s = cluster.connect("host/client", cluster.node_ip("node1"), cluster.node_port("empty"), n=3, timeout=2.0)
    assert s["refused"] == 3 and s["elapsed"] < 1.5, s
    s = cluster.connect("pod/cli1", ip, 53, proto="udp", n=3, timeout=2.0)
    # ICMP port unreachable for UDP (the kernel rate-limits ICMP errors per destination, so
    # not necessarily for every datagram; never an answer).
    assert s["ok"] == 0 and s["refused"] >= 1, s


def test_headless_and_external_name_services_are_ignored(cluster, env, kit):
    cluster.apply(
        kit.service("headless-svc", selector={"app": "web"}, clusterIP="None"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extname-svc"},
         "spec": {"type": "ExternalName", "externalName": "example.com",
                  "ports": [{"name": "http", "port": 80}]}},
        kit.service("control-svc", selector={"app": "web"}),
    )
    ip = cluster.cluster_ip("control-svc")
    cluster.wait_answers("pod/cli1", ip, 80)
    time.sleep(1.5)  # one more sync period for anything late
    for node in ("node1", "node2"):
        text = cluster.iptables_save(node)
        assert "default/control-svc" in text or ip in text
        assert "headless-svc" not in text and "extname-svc" not in text
        assert "example.com" not in text


def test_hairpin_pod_reaching_itself_is_masqueraded(cluster, env):
    ip = cluster.cluster_ip("solo")
    cluster.wait_answers("pod/web-a", ip, 80)
    s = cluster.connect("pod/web-a", ip, 80, n=20)
    assert s["endpoints"] == {"web-a": 20}, s
    (peer,) = s["peers"]
    # Without masquerade the reply would never leave the pod; with it the pod sees its node.
    assert peer != env["ips"]["web-a"] and in_cidr(peer, env["pod_cidrs"]["node1"]), s
    # Another pod to the same service is not masqueraded.
    s = cluster.connect("pod/cli1", ip, 80, n=10)
    assert s["peers"] == {env["ips"]["cli1"]: 10}, s


def _invalid_drops(cluster, node: str) -> int:
    """Packets counted by netplane's conntrack-INVALID drop rule in the node's filter table."""
    text = cluster.run(f"node/{node}", "iptables-save", "-c", "-t", "filter").stdout
    rules = [l for l in text.splitlines() if "NP-" in l and "INVALID" in l and "DROP" in l]
    assert rules, "no NP- rule dropping ctstate INVALID in the filter table:\n" + text
    return sum(int(re.match(r"\[(\d+):", l).group(1)) for l in rules)


SEND_INVALID = r"""
import sys, time
from scapy.all import IP, TCP, conf, send
from scapy.supersocket import L3RawSocket
# The kernel's raw socket: it resolves the gateway's MAC. scapy's own L2 path may fall back to
# broadcast, and a router never forwards broadcast frames (the packet would not be a test).
conf.L3socket = L3RawSocket
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    send(IP(dst=dst) / TCP(sport=40000 + i, dport=port, flags="SF", seq=1000), verbose=False)
    time.sleep(0.05)
"""

SNIFF = r"""
import sys
from scapy.all import sniff
pkts = sniff(iface="eth0", timeout=float(sys.argv[1]),
             lfilter=lambda p: p.haslayer("TCP") and p["TCP"].flags == "SF")
print(len(pkts), flush=True)
"""


def test_conntrack_invalid_forwarded_packets_are_dropped(cluster, env, kit):
    pytest.importorskip("scapy")
    before = _invalid_drops(cluster, "node1")
    # A normal connection through the node is not counted.
    assert cluster.connect("pod/cli1", env["ips"]["web-c"], 8080, n=5)["ok"] == 5
    assert _invalid_drops(cluster, "node1") == before
    # SYN+FIN is an invalid TCP flag combination for conntrack: node1 must drop it in FORWARD.
    sniffer = cluster.popen("pod/web-c", kit.PY, "-c", SNIFF, "4")
    time.sleep(1.5)  # scapy import + socket open
    cluster.run("pod/cli1", kit.PY, "-c", SEND_INVALID, env["ips"]["web-c"], "8080", "5")
    out, err = sniffer.communicate(timeout=30)
    after = _invalid_drops(cluster, "node1")
    assert after - before >= 5, (before, after)
    assert out.strip() == "0", f"web-c received the invalid packets: {out} {err}"


def test_metrics_healthz_livez(cluster, env, kit):
    for node in ("node1", "node2"):
        text = cluster.metrics(node)
        for name in ("kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                     "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                     "kubeproxy_sync_proxy_rules_iptables_total"):
            assert name in text, f"{name} missing from {node}'s /metrics"
        last = kit.metric_value(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
        assert last and abs(time.time() - last) < 3600, last
        nat_rules = kit.metric_value(text, "kubeproxy_sync_proxy_rules_iptables_total", {"table": "nat"})
        assert nat_rules and nat_rules > 0, nat_rules
        full = kit.metric_value(text, "netplane_proxy_syncs_total", {"kind": "full"})
        assert full and full >= 1, full
        base = f"http://{cluster.node_ip(node)}:10256"
        health = cluster.http(f"node/{node}", f"{base}/healthz")
        assert health["status"] == 200, health
        body = json.loads(health["body"])
        assert "lastUpdated" in body and "currentTime" in body, body
        assert cluster.http(f"node/{node}", f"{base}/livez")["status"] == 200
        after = cluster.metrics(node)
        assert kit.metric_value(after, "kubeproxy_proxy_healthz_total", {"code": "200"}) is not None or \
            "proxy_healthz_total" in after
