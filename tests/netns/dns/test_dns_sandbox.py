"""The cluster DNS in a sandbox (issue 6 acceptance): dig from a pod for every record form and rcode,
the ndots:5 search path as glibc walks it, changes visible on the next query, the upstream host,
and an upstream that stops answering.

Expected values come from the cluster (kubectl: ClusterIPs, pod IPs), from objects the tests
write themselves (EndpointSlices) or from the upstream's hosts file; never from the DNS code.
Cluster: topologies/dns.yaml with `proxy: none` (the sandbox DNATs 10.96.0.10 to the DNS pods).
"""

from __future__ import annotations

import os
import secrets
import signal
import time

import pytest

from netplane.sandbox.cluster_dns import UPSTREAM_RECORDS

pytestmark = pytest.mark.netns

ZONE = "cluster.local"  # topologies/dns.yaml: the default clusterDomain
SVC = f"default.svc.{ZONE}"


def fqdn(name: str) -> str:
    return f"{name}.{SVC}"


def slice_manifest(service: str, ips: list[str], *, ready: list[bool] | None = None,
                   port: tuple[str, int] | None = ("tcp-80", 80)) -> dict:
    ready = ready or [True] * len(ips)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-manual", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": r}} for ip, r in zip(ips, ready)],
        "ports": [{"name": port[0], "port": port[1], "protocol": "TCP"}] if port else [],
    }


def headless_service(name: str) -> dict:
    """Selector-less headless: its endpoints are whatever EndpointSlice the test writes."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"clusterIP": "None", "ports": [{"name": "tcp-80", "port": 80, "protocol": "TCP"}]}}


# -- records --------------------------------------------------------------------------------------------


def test_clusterip_service_a(cluster):
    r = cluster.dig(fqdn("web"))
    assert r.status == "NOERROR" and "aa" in r.flags, r.text
    assert r.values("A") == [cluster.cluster_ip("web")]
    assert r.answer[0].name == fqdn("web") + "."
    assert r.answer[0].ttl == 30  # the Corefile's `ttl 30`


def test_headless_service_one_a_per_ready_endpoint(cluster):
    r = cluster.dig(fqdn("db"))
    assert r.status == "NOERROR", r.text
    assert sorted(r.values("A")) == sorted([cluster.pod_ip("db-0"), cluster.pod_ip("db-1")])


@pytest.mark.parametrize("pod", ["db-0", "db-1"])
def test_hostname_subdomain_endpoint_record(cluster, pod):
    r = cluster.dig(f"{pod}.db.{SVC}")
    assert r.status == "NOERROR", r.text
    assert r.values("A") == [cluster.pod_ip(pod)]


def test_srv_named_ports_of_clusterip_service(cluster):
    r = cluster.dig("SRV", f"_http._tcp.{fqdn('web')}")
    assert r.status == "NOERROR", r.text
    assert [rr.fields for rr in r.rrs("SRV")] == [["0", "100", "80", fqdn("web") + "."]]
    assert r.values("A", "additional") == [cluster.cluster_ip("web")]
    udp = cluster.dig("SRV", f"_echo._udp.{fqdn('web')}")
    assert [rr.fields[2:] for rr in udp.rrs("SRV")] == [["7", fqdn("web") + "."]], udp.text
    # Every named port when the query has no _port._proto labels (CoreDNS: weight 100/N).
    both = cluster.dig("SRV", fqdn("web"))
    assert sorted((f[1], f[2]) for f in (rr.fields for rr in both.rrs("SRV"))) == [("50", "7"), ("50", "80")]


def test_srv_named_port_of_headless_service_targets_each_endpoint(cluster):
    r = cluster.dig("SRV", f"_pg._tcp.{fqdn('db')}")
    assert r.status == "NOERROR", r.text
    srv = sorted(rr.fields for rr in r.rrs("SRV"))
    assert srv == [["0", "50", "5432", f"db-0.db.{SVC}."], ["0", "50", "5432", f"db-1.db.{SVC}."]]
    glue = {rr.name: rr.data for rr in r.rrs("A", "additional")}
    assert glue == {f"db-0.db.{SVC}.": cluster.pod_ip("db-0"), f"db-1.db.{SVC}.": cluster.pod_ip("db-1")}


def test_ptr_for_service_and_endpoint_ips(cluster):
    assert cluster.dig("-x", cluster.cluster_ip("web")).values("PTR") == [fqdn("web") + "."]
    assert cluster.dig("-x", cluster.pod_ip("db-0")).values("PTR") == [f"db-0.db.{SVC}."]
    # An endpoint without a hostname is named by its dashed IP.
    ip = cluster.pod_ip("web-1")
    assert cluster.dig("-x", ip).values("PTR") == [f"{ip.replace('.', '-')}.web.{SVC}."]


def test_externalname_is_a_cname_plus_the_upstream_a(cluster):
    r = cluster.dig(fqdn("ext"))
    assert r.status == "NOERROR", r.text
    assert r.answer[0].rtype == "CNAME" and r.answer[0].data == "www.example.test."
    assert r.values("A") == [UPSTREAM_RECORDS["www.example.test"]]
    below = cluster.dig(f"x.{fqdn('ext')}")
    assert below.status == "NXDOMAIN", below.text


def test_dns_version_txt(cluster):
    r = cluster.dig("TXT", f"dns-version.{ZONE}")
    assert r.status == "NOERROR", r.text
    assert r.values("TXT") == ['"1.1.0"'] and r.answer[0].ttl == 28800


def test_ns_and_soa_at_the_apex(cluster):
    ns = cluster.dig("NS", ZONE)
    assert ns.status == "NOERROR" and "aa" in ns.flags, ns.text
    (target,) = ns.values("NS")
    assert target.lower().endswith(f".{ZONE}.")
    # The nameserver's address is the cluster DNS address (kube-dns) or a DNS pod.
    glue = [rr.data for rr in ns.rrs("A", "additional") if rr.name == target]
    assert glue and set(glue) <= {cluster.state["dns"]["ip"], *cluster.dns_pod_ips}, ns.text
    soa = cluster.dig("SOA", ZONE)
    (rr,) = soa.rrs("SOA")
    assert rr.name == f"{ZONE}." and rr.fields[0] == f"ns.dns.{ZONE}." and rr.fields[1] == f"hostmaster.{ZONE}."
    assert int(rr.fields[2]) > 1_600_000_000  # serial: a unix time


def test_nxdomain_and_nodata_carry_the_soa(cluster):
    nx = cluster.dig(fqdn("no-such-service"))
    assert nx.status == "NXDOMAIN" and not nx.answer, nx.text
    assert [rr.name for rr in nx.rrs("SOA", "authority")] == [f"{ZONE}."]
    # AAAA on a v4-only service: the name exists, so NODATA (NOERROR, no answer, SOA), not NXDOMAIN.
    nodata = cluster.dig("AAAA", fqdn("web"))
    assert nodata.status == "NOERROR" and not nodata.answer, nodata.text
    assert nodata.rrs("SOA", "authority"), nodata.text
    # Interior names exist (NODATA); an unknown namespace does not.
    assert cluster.dig(f"svc.{ZONE}").status == "NOERROR"
    assert cluster.dig(SVC).status == "NOERROR"
    assert cluster.dig(f"web.no-such-ns.svc.{ZONE}").status == "NXDOMAIN"


def test_zone_transfer_is_refused(cluster):
    r = cluster.dig("+comments", "+qr", "AXFR", ZONE)  # dig hides the header of transfers by default
    assert r.transfer_failed and r.status == "REFUSED", r.text


def test_query_name_case_is_preserved(cluster):
    r = cluster.dig(f"WeB.DeFault.svc.{ZONE.upper()}")
    assert r.status == "NOERROR", r.text
    assert r.answer[0].name == f"WeB.DeFault.svc.{ZONE.upper()}."
    assert r.values("A") == [cluster.cluster_ip("web")]


def test_edns0_is_echoed_and_absent_without_it(cluster):
    with_edns = cluster.dig("+bufsize=4096", fqdn("web"))
    assert with_edns.edns is not None and "version: 0" in with_edns.edns, with_edns.text
    plain = cluster.dig("+noedns", fqdn("web"))
    assert plain.status == "NOERROR" and plain.edns is None, plain.text
    assert plain.values("A") == [cluster.cluster_ip("web")]


def test_unknown_edns_version_gets_badvers(cluster):
    r = cluster.dig("+edns=1", "+noednsnegotiation", fqdn("web"))
    assert r.status == "BADVERS", r.text


def test_pods_insecure_records(cluster):
    ip = cluster.pod_ip("db-0")
    r = cluster.dig(f"{ip.replace('.', '-')}.default.pod.{ZONE}")
    assert r.status == "NOERROR" and r.values("A") == [ip], r.text
    assert cluster.dig(f"not-an-ip.default.pod.{ZONE}").status == "NXDOMAIN"
    assert cluster.dig(f"1-2-3-4.no-such-ns.pod.{ZONE}").status == "NXDOMAIN"


FORMERR_PROBE = r"""
import socket, struct, sys
# One question in the packet but QDCOUNT=2: malformed.
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 2, 0, 0, 0) + b"\x03web\x07default\x03svc\x07cluster\x05local\x00" + b"\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, (sys.argv[1], 53))
data = s.recv(4096)
print(struct.unpack("!H", data[:2])[0], data[3] & 0x0F)
"""


def test_malformed_query_gets_formerr(cluster):
    out = cluster.exec("client", "python3", "-c", FORMERR_PROBE, cluster.state["dns"]["ip"]).stdout.split()
    assert out == [str(0x4242), "1"]  # same ID, rcode FORMERR
    assert cluster.dig(fqdn("web")).status == "NOERROR"  # and still answering


def test_big_answer_truncated_over_udp_and_complete_over_tcp(cluster, eventually):
    ips = [f"198.51.100.{i}" for i in range(1, 61)]
    cluster.apply(headless_service("big"), slice_manifest("big", ips))
    try:
        eventually(lambda: len(cluster.dig("+tcp", fqdn("big")).values("A")) == 60, timeout=5, what="big ready")
        udp = cluster.dig("+noedns", "+ignore", fqdn("big"))
        assert "tc" in udp.flags and len(udp.values("A")) < 60, udp.text
        retried = cluster.dig("+noedns", fqdn("big"))  # dig retries over TCP, as resolvers do
        assert retried.truncated_retry and retried.server_proto == "TCP", retried.text
        assert sorted(retried.values("A")) == sorted(ips)
        tcp = cluster.dig("+tcp", fqdn("big"))
        assert "tc" not in tcp.flags and sorted(tcp.values("A")) == sorted(ips)
        # EDNS0 with room for all of it: one UDP answer, no truncation.
        wide = cluster.dig("+bufsize=4096", "+ignore", fqdn("big"))
        assert "tc" not in wide.flags and len(wide.values("A")) == 60, wide.text
    finally:
        cluster.kubectl("delete", "service", "big", "--ignore-not-found")
        cluster.kubectl("delete", "endpointslice", "big-manual", "--ignore-not-found")


# -- the search path (ndots:5) ----------------------------------------------------------------------------


def test_resolv_conf_of_pods(cluster):
    text = cluster.exec("client", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {cluster.state['dns']['ip']}" in text
    assert f"search {SVC} svc.{ZONE} {ZONE}" in text and "ndots:5" in text


def test_short_names_resolve_through_the_search_path(cluster):
    ip = cluster.cluster_ip("web")
    r = cluster.dig("+search", "web")
    assert r.status == "NOERROR" and r.answer[0].name == fqdn("web") + "." and r.values("A") == [ip], r.text
    getent = cluster.exec("client", "getent", "hosts", "web").stdout.split()
    assert getent[:2] == [ip, fqdn("web")]
    py = cluster.exec("client", "python3", "-c", "import socket; print(socket.gethostbyname('web'))").stdout.strip()
    assert py == ip
    assert cluster.exec("client", "getent", "ahostsv4", "web.default").stdout.split()[0] == ip
    assert cluster.exec("client", "getent", "hosts", "db-1.db").stdout.split()[0] == cluster.pod_ip("db-1")


def _a_queries_for(cluster, name: str) -> int:
    """A queries glibc sends for gethostbyname(name), counted by the DNS servers themselves."""
    before = cluster.requests_total("A")
    cluster.exec("client", "python3", "-c", f"import socket; socket.gethostbyname({name!r})")
    return cluster.requests_total("A") - before


def test_ndots5_order_of_tries(cluster):
    # 0 dots: the first search domain answers: one query.
    assert _a_queries_for(cluster, "web") == 1
    # 1 dot (< ndots): <ns>.svc.<zone> first (NXDOMAIN), then svc.<zone> answers: two queries.
    assert _a_queries_for(cluster, "web.default") == 2
    # 5 dots (>= ndots): tried as is first, and it exists: one query, no search walk.
    assert _a_queries_for(cluster, f"db-0.db.{SVC}") == 1
    # 4 dots: the search domains first (3 NXDOMAINs), then as is.
    assert _a_queries_for(cluster, fqdn("web")) == 4


# -- changes -----------------------------------------------------------------------------------------------


def test_new_service_answers_at_once_and_deleted_one_is_gone(cluster, eventually):
    name = "fresh-" + secrets.token_hex(2)
    assert cluster.dig(fqdn(name)).status == "NXDOMAIN"
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    try:
        ip = cluster.cluster_ip(name)
        (r, took) = eventually(lambda: (d := cluster.dig(fqdn(name))).status == "NOERROR" and d,
                               timeout=5, interval=0.05, what="new service answered")
        assert r.values("A") == [ip]
        assert took < 1.0, f"the new service answered only after {took:.2f}s"
    finally:
        cluster.kubectl("delete", "service", name)
    (gone, took) = eventually(lambda: cluster.dig(fqdn(name)).status == "NXDOMAIN", timeout=5, interval=0.05,
                              what="deleted service gone")
    assert took < 1.0, f"the deleted service was answered for {took:.2f}s"


def test_scaling_endpoints_shows_on_the_next_query(cluster, eventually):
    ips = ["198.51.100.101", "198.51.100.102", "198.51.100.103"]
    cluster.apply(headless_service("scaled"), slice_manifest("scaled", ips[:1]))
    try:
        def answers() -> list[str]:
            return sorted(cluster.dig(fqdn("scaled")).values("A"))

        eventually(lambda: answers() == ips[:1], timeout=5, interval=0.05, what="1 endpoint")
        cluster.apply(slice_manifest("scaled", ips))
        (_, took) = eventually(lambda: answers() == ips, timeout=5, interval=0.05, what="scaled to 3")
        assert took < 1.0, took
        # An endpoint that turns not-ready leaves the answer.
        cluster.apply(slice_manifest("scaled", ips, ready=[True, False, True]))
        eventually(lambda: answers() == [ips[0], ips[2]], timeout=5, interval=0.05, what="one not ready")
        # No ready endpoint at all: a headless service then does not exist (spec 2.4.1).
        cluster.apply(slice_manifest("scaled", ips, ready=[False, False, False]))
        eventually(lambda: cluster.dig(fqdn("scaled")).status == "NXDOMAIN", timeout=5, interval=0.05,
                   what="no ready endpoints → NXDOMAIN")
    finally:
        cluster.kubectl("delete", "service", "scaled", "--ignore-not-found")
        cluster.kubectl("delete", "endpointslice", "scaled-manual", "--ignore-not-found")


# -- upstream ------------------------------------------------------------------------------------------------


def test_outside_names_go_to_the_upstream_host(cluster):
    for name, ip in UPSTREAM_RECORDS.items():
        r = cluster.dig(name)
        assert r.status == "NOERROR" and r.values("A") == [ip], r.text
    assert cluster.dig(f"nothing-{secrets.token_hex(3)}.example.test").status == "NXDOMAIN"
    # The upstream is a test server that knows nothing else: never a real resolver.
    other = cluster.dig("www.kubernetes.io")
    assert other.status in ("REFUSED", "SERVFAIL", "NXDOMAIN") and not other.answer, other.text


def test_upstream_down_gives_servfail_in_bounded_time_and_cluster_names_still_answer(cluster, eventually):
    with open(cluster.state["dns"]["upstream"]["pid_file"]) as f:
        pid = int(f.read().split()[0])
    os.kill(pid, signal.SIGSTOP)  # the cluster's own dnsmasq: alive, but silent
    try:
        t0 = time.monotonic()
        r = cluster.dig("+time=15", f"down-{secrets.token_hex(3)}.example.test", timeout=30)
        took = time.monotonic() - t0
        assert r.status == "SERVFAIL", r.text
        assert took < 6.0, f"SERVFAIL after {took:.1f}s"
        t0 = time.monotonic()
        local = cluster.dig(fqdn("web"))
        assert local.status == "NOERROR" and local.values("A") == [cluster.cluster_ip("web")]
        assert time.monotonic() - t0 < 2.0
    finally:
        os.kill(pid, signal.SIGCONT)
    # Back: the next new name is answered by the upstream again.
    eventually(lambda: cluster.dig(f"back-{secrets.token_hex(3)}.example.test").status == "NXDOMAIN",
               timeout=15, interval=0.5, what="upstream answers again")
