"""The cluster DNS behind netplane's kube-proxy, without an upstream: topologies/dns.yaml with
`proxy: iptables` (pods reach 10.96.0.10 through the kube-dns Service, no static DNAT from the
sandbox) and without the upstream-dns host (names outside the cluster get REFUSED)."""

from __future__ import annotations

import os

import pytest

from netplane.sandbox.cluster_dns import DNAT_CHAIN

pytestmark = pytest.mark.netns

HERE = os.path.dirname(os.path.abspath(__file__))
TOPOLOGY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "topologies", "dns.yaml")
SVC = "default.svc.cluster.local"


@pytest.fixture(scope="module")
def cluster(bring_up, tmp_path_factory):
    with open(TOPOLOGY) as f:
        text = f.read()
    upstream = "hosts:\n  - name: upstream\n    role: upstream-dns\n"
    assert "\nproxy: none\n" in text and upstream in text
    text = text.replace("\nproxy: none\n", "\nproxy: iptables\n").replace(upstream, "")
    yield from bring_up(text, str(tmp_path_factory.mktemp("dns-proxy")))


def test_dns_service_is_served_by_the_proxy_not_a_static_dnat(cluster):
    for node in cluster.state["nodes"]:
        rules = cluster.run("ip", "netns", "exec", cluster.state["nodes"][node]["netns"], "iptables-save",
                            "-t", "nat").stdout
        assert DNAT_CHAIN not in rules
        assert cluster.state["dns"]["ip"] in rules  # the proxy's rules for the kube-dns ClusterIP
    r = cluster.dig(f"web.{SVC}")
    assert r.status == "NOERROR" and r.values("A") == [cluster.cluster_ip("web")], r.text


def test_tcp_and_search_path_through_the_service(cluster):
    tcp = cluster.dig("+tcp", f"db.{SVC}")
    assert tcp.server_proto == "TCP"
    assert sorted(tcp.values("A")) == sorted([cluster.pod_ip("db-0"), cluster.pod_ip("db-1")])
    out = cluster.exec("client", "getent", "hosts", "web").stdout.split()
    assert out[:2] == [cluster.cluster_ip("web"), f"web.{SVC}"]


def test_without_an_upstream_outside_names_are_refused(cluster):
    assert cluster.state["dns"]["upstream"] is None
    r = cluster.dig("www.example.test")
    assert r.status == "REFUSED" and not r.answer, r.text
    # The ExternalName CNAME is still answered; its target cannot be followed.
    ext = cluster.dig(f"ext.{SVC}")
    assert ext.status == "NOERROR" and ext.values("CNAME") == ["www.example.test."], ext.text
    assert not ext.values("A")
    # PTRs outside the cluster fall through to nobody either.
    assert cluster.dig("-x", "192.0.2.1").status == "REFUSED"
