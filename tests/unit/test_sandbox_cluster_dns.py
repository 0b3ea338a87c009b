"""The sandbox cluster DNS's pure parts: Corefile, manifests, DNAT rules, upstream test server."""

from __future__ import annotations

import pytest

from netplane.dns.config import parse_config
from netplane.sandbox import cluster_dns
from netplane.sandbox.topology import load_topology

BASE = """\
name: t
nodes: 3
network: {clusterDomain: example.internal, serviceCIDR: 10.100.0.0/16}
dns: true
"""


def topo(extra: str = ""):
    return load_topology("t.yaml", text=BASE + extra)


def test_upstream_is_the_first_host_with_the_role():
    t = topo("hosts:\n  - {name: c, role: client}\n  - {name: up, role: upstream-dns}\n"
             "  - {name: up2, role: upstream-dns}\n")
    assert cluster_dns.upstream_host(t) == ("up", t.underlay_plan.hosts["up"]) == ("up", "172.30.0.6")
    assert cluster_dns.upstream_host(topo()) is None


def test_corefile_forwards_to_the_upstream_and_never_caches_the_cluster_zone():
    t = topo()
    config = parse_config(cluster_dns.corefile(t, "172.30.0.9"), "Corefile")
    assert config.cluster_zone == "example.internal"
    assert [(u.host, u.port) for u in config.forward.upstreams] == [("172.30.0.9", 53)]
    assert config.kubernetes.pods == "insecure" and config.loop and config.reload is not None
    assert "disable success example.internal" in cluster_dns.corefile(t, "172.30.0.9")


def test_corefile_without_upstream_forwards_nowhere():
    config = parse_config(cluster_dns.corefile(topo(), None), "Corefile")
    assert config.forward is None and config.cache is None and not config.loop
    assert config.kubernetes is not None


def test_service_and_pods():
    t = topo()
    svc = cluster_dns.service_manifest(t)
    assert svc["metadata"] == {"name": "kube-dns", "namespace": "kube-system",
                               "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}}
    assert svc["spec"]["clusterIP"] == t.dns_ip == "10.100.0.10"
    assert {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")}
    assert cluster_dns.dns_nodes(t) == ["node1", "node2"]
    assert cluster_dns.dns_nodes(load_topology("x.yaml", text="nodes: 1\ndns: true\n")) == ["node1"]
    cmd = cluster_dns.dns_command("/v/bin/netplane", kubeconfig="/k", config="/c")
    pod = cluster_dns.pod_manifest("node2", cmd, "172.30.0.9")
    spec = pod["spec"]
    assert pod["metadata"]["labels"] == svc["spec"]["selector"]
    assert spec["nodeName"] == "node2" and spec["dnsConfig"] == {"nameservers": ["172.30.0.9"]}
    (c,) = spec["containers"]
    assert c["command"][:2] == ["/v/bin/netplane", "dns"] and "$(POD_IP):53" in c["command"]
    assert c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    # Never the host's resolver, also without an upstream.
    assert cluster_dns.pod_manifest("node1", cmd, None)["spec"]["dnsConfig"] == {"nameservers": ["127.0.0.1"]}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_dnat_spreads_flows_evenly(n):
    ips = [f"10.244.{i}.2" for i in range(n)]
    rules = cluster_dns.dnat_rules("10.96.0.10", ips)
    lines = rules.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert "-A PREROUTING -d 10.96.0.10/32 -j NETPLANE-DNS" in lines
    assert "-A OUTPUT -d 10.96.0.10/32 -j NETPLANE-DNS" in lines
    for proto in ("udp", "tcp"):
        chain = [line for line in lines if line.startswith(f"-A NETPLANE-DNS -p {proto} ")]
        assert [line.rsplit(" ", 1)[1] for line in chain] == [f"{ip}:53" for ip in ips]
        # P(pod i) = prod(1 - p_j for j < i) * p_i must be 1/n for every pod.
        left, shares = 1.0, []
        for line in chain:
            p = float(line.split("--probability ")[1].split()[0]) if "--probability" in line else 1.0
            shares.append(left * p)
            left *= 1 - p
        assert shares == pytest.approx([1 / n] * n, abs=1e-4)
    with pytest.raises(ValueError):
        cluster_dns.dnat_rules("10.96.0.10", [])


def test_upstream_server_answers_only_its_hosts_file():
    hosts = cluster_dns.upstream_hosts_file()
    assert {line.split()[1]: line.split()[0] for line in hosts.splitlines()} == dict(cluster_dns.UPSTREAM_RECORDS)
    cmd = cluster_dns.dnsmasq_command("172.30.0.9", "/s/hosts", "/s/pid")
    assert cmd[0] == "dnsmasq"
    for flag in ("--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--addn-hosts=/s/hosts",
                 "--listen-address=172.30.0.9", "--bind-interfaces", "--local=/example.test/"):
        assert flag in cmd
    assert not any(arg.startswith("--server") for arg in cmd)
