"""Issue 5, traffic policies with real packets (one sandbox for the module):
externalTrafficPolicy Local (source kept, only local endpoints, pod/node short-circuit, DROP with
no local endpoint, the healthCheckNodePort server), internalTrafficPolicy Local, the
terminating-endpoint fallback, topology hints by zone, and stale UDP conntrack entries removed
when the endpoints change.

Pods: p1, p3 on node1 (zone-a); p2, p4 on node2 (zone-b); clients cli1 (node1), cli2 (node2).
Hand-written EndpointSlices (selector-less Services) pin the endpoint conditions and hints.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.netns

EXT_VIA_NODE1 = "203.0.113.21"
EXT_VIA_NODE2 = "203.0.113.22"


@pytest.fixture(scope="module")
def env(cluster, kit):
    k = kit
    cluster.run_pods(
        k.server_pod("p1", "node1", labels={"loc": "both", "loc1": "only"}),
        k.server_pod("p2", "node2", labels={"loc": "both"}),
        k.server_pod("p3", "node1"),
        k.server_pod("p4", "node2"),
        k.client_pod("cli1", "node1"),
        k.client_pod("cli2", "node2"),
    )
    lb_local = dict(type="LoadBalancer", externalTrafficPolicy="Local")
    cluster.apply(
        k.service("etp", selector={"loc": "both"}, externalIPs=[EXT_VIA_NODE1, EXT_VIA_NODE2], **lb_local),
        # Same external IPs as etp, another port (81), so the two never share an IP:port.
        k.service("etp-one", selector={"loc1": "only"}, externalIPs=[EXT_VIA_NODE1, EXT_VIA_NODE2],
                  ports=[{"name": "http", "port": 81, "targetPort": "web"}], **lb_local),
        k.service("itp", selector={"loc": "both"}, internalTrafficPolicy="Local"),
        k.service("itp-one", selector={"loc1": "only"}, internalTrafficPolicy="Local"),
    )
    cluster.run("host/client", "ip", "route", "replace", f"{EXT_VIA_NODE1}/32", "via", cluster.node_ip("node1"))
    cluster.run("host/client", "ip", "route", "replace", f"{EXT_VIA_NODE2}/32", "via", cluster.node_ip("node2"))
    ips = {p: cluster.pod_ip(p) for p in ("p1", "p2", "p3", "p4", "cli1", "cli2")}
    cluster.wait_everywhere(cluster.cluster_ip("etp"), 80)
    cluster.wait_everywhere(cluster.cluster_ip("etp-one"), 81)
    cluster.wait_everywhere(cluster.cluster_ip("itp"), 80)
    cluster.wait_everywhere(cluster.cluster_ip("itp-one"), 80, nodes=["node1"])
    return {"ips": ips}


def spread(summary: dict, names: set[str], at_least: int = 10) -> None:
    assert summary["ok"] == sum(summary["endpoints"].values()) and not summary["errors"], summary
    assert set(summary["endpoints"]) == names, summary
    assert min(summary["endpoints"].values()) >= at_least, summary


# -- externalTrafficPolicy: Local --------------------------------------------------------------


def test_etp_local_external_clients_reach_only_local_endpoints_with_their_source(cluster, env):
    client = cluster.host_ip("client")
    port = cluster.node_port("etp")
    for node, local in (("node1", "p1"), ("node2", "p2")):
        cluster.wait_answers("host/client", cluster.node_ip(node), port)
        s = cluster.connect("host/client", cluster.node_ip(node), port, n=40)
        assert s["endpoints"] == {local: 40} and s["peers"] == {client: 40}, (node, s)
    for ext, local in ((EXT_VIA_NODE1, "p1"), (EXT_VIA_NODE2, "p2")):
        s = cluster.connect("host/client", ext, 80, n=40)
        assert s["endpoints"] == {local: 40} and s["peers"] == {client: 40}, (ext, s)


def test_etp_local_without_local_endpoint_drops(cluster, env):
    port = cluster.node_port("etp-one")
    cluster.wait_answers("host/client", cluster.node_ip("node1"), port)
    # DROP, not REJECT: endpoints exist, just not here.
    cluster.wait_fails("host/client", cluster.node_ip("node2"), port, how="timeout")
    cluster.wait_fails("host/client", EXT_VIA_NODE2, 81, how="timeout")
    s = cluster.connect("host/client", EXT_VIA_NODE1, 81, n=5)
    assert s["endpoints"] == {"p1": 5}, s


def test_etp_local_pod_short_circuit_uses_all_endpoints_unmasqueraded(cluster, env):
    port = cluster.node_port("etp-one")
    # cli2's own node has no endpoint of etp-one, yet a pod going through its node is sent to
    # every endpoint (here p1 on node1), keeping its source.
    s = cluster.connect("pod/cli2", cluster.node_ip("node2"), port, n=20)
    assert s["endpoints"] == {"p1": 20} and s["peers"] == {env["ips"]["cli2"]: 20}, s
    s = cluster.connect("pod/cli2", cluster.node_ip("node2"), cluster.node_port("etp"), n=60)
    spread(s, {"p1", "p2"})
    assert s["peers"] == {env["ips"]["cli2"]: 60}, s


def test_etp_local_node_short_circuit_is_masqueraded(cluster, env):
    s = cluster.connect("node/node2", cluster.node_ip("node2"), cluster.node_port("etp-one"), n=20)
    assert s["endpoints"] == {"p1": 20}, s
    assert cluster.node_ip("node2") not in s["peers"], s  # masqueraded on its way to node1


def test_health_check_node_port(cluster, env, kit):
    for svc, local_counts in (("etp", {"node1": 1, "node2": 1}), ("etp-one", {"node1": 1, "node2": 0})):
        hcnp = int(cluster.get("svc", svc)["spec"]["healthCheckNodePort"])
        for node, count in local_counts.items():
            url = f"http://{cluster.node_ip(node)}:{hcnp}/"
            res = kit.eventually(lambda url=url, count=count: (
                r := cluster.http("host/client", url))["status"] == (200 if count else 503) and r,
                what=f"{svc} health check on {node}")
            body = json.loads(res["body"])
            assert body["service"] == {"namespace": "default", "name": svc}, body
            assert body["localEndpoints"] == count, body
            headers = {k.lower(): v for k, v in res["headers"].items()}
            assert headers.get("x-load-balancing-endpoint-weight") == str(count), headers


# -- internalTrafficPolicy: Local -------------------------------------------------------------


def test_itp_local_uses_only_local_endpoints(cluster, env):
    ip = cluster.cluster_ip("itp")
    cluster.wait_answers("pod/cli1", ip, 80)
    for client, local in (("cli1", "p1"), ("cli2", "p2")):
        s = cluster.connect(f"pod/{client}", ip, 80, n=40)
        assert s["endpoints"] == {local: 40}, (client, s)
        assert s["peers"] == {env["ips"][client]: 40}, s


def test_itp_local_without_local_endpoint_drops(cluster, env):
    ip = cluster.cluster_ip("itp-one")
    cluster.wait_answers("pod/cli1", ip, 80)
    cluster.wait_fails("pod/cli2", ip, 80, how="timeout")  # DROP, not REJECT


# -- terminating endpoints ----------------------------------------------------------------------


def test_terminating_endpoint_fallback(cluster, env, kit):
    k, ips = kit, env["ips"]
    port = [{"name": "http", "port": kit.TCP_PORT, "protocol": "TCP"}]

    def slice_with(p1: dict, p2: dict, p3: dict) -> dict:
        return k.endpoint_slice("term-1", "term", [
            k.endpoint(ips["p1"], node="node1", **p1),
            k.endpoint(ips["p2"], node="node2", **p2),
            k.endpoint(ips["p3"], node="node1", **p3)], port)

    serving_terminating = dict(ready=False, serving=True, terminating=True)
    not_serving = dict(ready=False, serving=False, terminating=True)
    cluster.apply(k.service("term", ports=[{"name": "http", "port": 80, "targetPort": kit.TCP_PORT}]),
                  slice_with(dict(ready=True), serving_terminating, not_serving))
    ip = cluster.cluster_ip("term")
    # 1. A ready endpoint exists: only it is used.
    cluster.wait_answers("pod/cli1", ip, 80)
    s = cluster.connect("pod/cli1", ip, 80, n=40)
    assert s["endpoints"] == {"p1": 40}, s
    # 2. No ready endpoint: fall back to serving+terminating (p2), never the not-serving p3.
    cluster.apply(slice_with(not_serving, serving_terminating, not_serving))
    cluster.wait_answers("pod/cli1", ip, 80, expect=lambda s: set(s["endpoints"]) == {"p2"})
    s = cluster.connect("pod/cli1", ip, 80, n=40)
    assert s["endpoints"] == {"p2": 40}, s
    # 2b. Two serving+terminating endpoints share the traffic.
    cluster.apply(slice_with(not_serving, serving_terminating, serving_terminating))
    cluster.wait_answers("pod/cli1", ip, 80, expect=lambda s: "p3" in s["endpoints"])
    spread(cluster.connect("pod/cli1", ip, 80, n=60), {"p2", "p3"})
    # 3. Nothing serving: as if there were no endpoints (REJECT).
    cluster.apply(slice_with(not_serving, not_serving, not_serving))
    cluster.wait_fails("pod/cli1", ip, 80, how="refused")


# -- topology hints ----------------------------------------------------------------------------


def test_topology_hints_by_zone(cluster, env, kit):
    k, ips = kit, env["ips"]
    port = [{"name": "http", "port": kit.TCP_PORT, "protocol": "TCP"}]
    eps = [k.endpoint(ips["p1"], node="node1", zone="zone-a", hints=["zone-a"]),
           k.endpoint(ips["p4"], node="node2", zone="zone-b", hints=["zone-a"]),
           k.endpoint(ips["p2"], node="node2", zone="zone-b", hints=["zone-b"])]
    svc_port = [{"name": "http", "port": 80, "targetPort": kit.TCP_PORT}]
    cluster.apply(
        k.service("zonal", ports=svc_port, annotations={"service.kubernetes.io/topology-mode": "Auto"}),
        k.endpoint_slice("zonal-1", "zonal", eps, port),
        k.service("zonal-off", ports=svc_port),
        k.endpoint_slice("zonal-off-1", "zonal-off", eps, port),
    )
    ip, ip_off = cluster.cluster_ip("zonal"), cluster.cluster_ip("zonal-off")
    cluster.wait_answers("pod/cli2", ip, 80)
    cluster.wait_answers("pod/cli1", ip_off, 80)
    # zone-a (node1): the endpoints hinted for zone-a, wherever they run; zone-b: its own.
    spread(cluster.connect("pod/cli1", ip, 80, n=60), {"p1", "p4"})
    s = cluster.connect("pod/cli2", ip, 80, n=40)
    assert s["endpoints"] == {"p2": 40}, s
    # Without the annotation the hints are ignored.
    spread(cluster.connect("pod/cli1", ip_off, 80, n=90), {"p1", "p2", "p4"})
    # One endpoint without hints: hints are ignored for the whole service.
    cluster.apply(k.endpoint_slice("zonal-1", "zonal", [*eps, k.endpoint(ips["p3"], node="node1", zone="zone-a")],
                                   port))
    cluster.wait_answers("pod/cli2", ip, 80, expect=lambda s: set(s["endpoints"]) != {"p2"}, timeout=20)
    spread(cluster.connect("pod/cli2", ip, 80, n=120), {"p1", "p2", "p3", "p4"})


# -- stale UDP conntrack -----------------------------------------------------------------------


def test_udp_client_follows_an_endpoint_swap(cluster, env, kit):
    k, ips = kit, env["ips"]
    port = [{"name": "dns", "port": kit.UDP_PORT, "protocol": "UDP"}]
    cluster.apply(k.service("udp-swap", ports=[{"name": "dns", "port": 53, "targetPort": kit.UDP_PORT,
                                                "protocol": "UDP"}]),
                  k.endpoint_slice("udp-swap-1", "udp-swap", [k.endpoint(ips["p1"], node="node1")], port))
    ip = cluster.cluster_ip("udp-swap")
    cluster.wait_answers("pod/cli1", ip, 53, proto="udp")
    # One socket = one conntrack flow, kept alive by a datagram every 0.2 s. p1 keeps running,
    # so if the flow's entry survived the swap, p1 would go on answering.
    stream = cluster.popen("pod/cli1", kit.PY, kit.SERVERS, "udp-stream", "--to", f"{ip}:53",
                           "--duration", "9", "--interval", "0.2")
    time.sleep(2.5)
    swapped_at = 2.5
    cluster.apply(k.endpoint_slice("udp-swap-1", "udp-swap", [k.endpoint(ips["p2"], node="node2")], port))
    out, err = stream.communicate(timeout=60)
    seq = json.loads(out)["sequence"]
    before = {ep for t, ep in seq if t < swapped_at - 0.3}
    assert before == {"p1"}, seq
    p2_times = [t for t, ep in seq if ep == "p2"]
    assert p2_times, f"the flow never reached the new endpoint: {seq}"
    assert p2_times[0] < swapped_at + 4.0, seq
    after = [ep for t, ep in seq if t > p2_times[0]]
    assert "p1" not in after, seq
    assert after.count("p2") >= 0.8 * len(after), seq
