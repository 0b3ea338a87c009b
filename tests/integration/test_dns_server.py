"""`netplane dns` as a process on 127.0.0.1, fed by the embedded apiserver, queried with dig and
dnslib: cluster answers, case through the fast path, EDNS0, UDP truncation + TCP, changes visible
on the next query, forwarding, /health /ready /metrics, lameduck, several workers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dnslib
import pytest

from netplane.k8s import Client, load_config

from .conftest import NETPLANE, ApiServerProcess, free_port

DIG = shutil.which("dig")
NS = "default"


class FakeUpstream:
    """A UDP resolver on 127.0.0.1 answering every A query with 192.0.2.7 (TTL 60)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dnslib.DNSRecord.parse(data)
            self.queries.append(str(q.q.qname))
            reply = q.reply()
            if q.q.qtype == dnslib.QTYPE.A:
                reply.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A("192.0.2.7"), ttl=60))
            self.sock.sendto(reply.pack(), addr)

    def close(self) -> None:
        self.sock.close()


class DnsProcess:
    """A `netplane dns` child in its own session, stopped by PID."""

    def __init__(self, workdir: Path, kubeconfig: Path, corefile: str, *extra: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.health, self.ready, self.metrics = free_port(), free_port(), free_port()
        (workdir / "Corefile").write_text(corefile)
        self.log_path = workdir / "dns.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(NETPLANE), "dns", "--kubeconfig", str(kubeconfig), "--config", str(workdir / "Corefile"),
             "--listen", f"127.0.0.1:{self.port}", "--health-addr", f"127.0.0.1:{self.health}",
             "--ready-addr", f"127.0.0.1:{self.ready}", "--metrics-addr", f"127.0.0.1:{self.metrics}", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "dns ready" in self.log_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"netplane dns did not start:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is not None:
            return self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def query(self, name: str, qtype: str = "A", *, edns: int | None = None, tcp: bool = False,
              qid: int | None = None) -> dnslib.DNSRecord:
        q = dnslib.DNSRecord.question(name, qtype)
        if qid is not None:
            q.header.id = qid
        if edns is not None:
            q.add_ar(dnslib.EDNS0(udp_len=edns))
        data = q.pack()
        if tcp:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                c.sendall(struct.pack("!H", len(data)) + data)
                (n,) = struct.unpack("!H", _recv_exact(c, 2))
                reply = _recv_exact(c, n)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(data, ("127.0.0.1", self.port))
                reply = s.recv(65535)
        parsed = dnslib.DNSRecord.parse(reply)
        assert parsed.header.id == q.header.id
        return parsed

    def dig(self, *args: str) -> str:
        if DIG is None:
            pytest.skip("dig not installed")
        res = subprocess.run([DIG, "@127.0.0.1", "-p", str(self.port), "+time=3", "+tries=1", *args],
                             capture_output=True, text=True, timeout=20)
        return res.stdout


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


COREFILE = """\
.:53 {{
    errors
    health {{
        lameduck {lameduck}
    }}
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    prometheus :9153
    forward . 127.0.0.1:{upstream}
    cache 30
}}
"""


@pytest.fixture(scope="module")
def cluster(apiserver: ApiServerProcess) -> Iterator[Client]:
    client = Client(load_config(str(apiserver.kubeconfig)))
    yield client
    client.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def dns(apiserver: ApiServerProcess, cluster: Client, upstream: FakeUpstream, tmp_path_factory) -> Iterator[DnsProcess]:
    create_service(cluster, "web", ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
    create_headless(cluster, "big", 100)
    proc = DnsProcess(tmp_path_factory.mktemp("dns"), apiserver.kubeconfig,
                      COREFILE.format(lameduck="0s", upstream=upstream.port))
    yield proc
    code = proc.stop()
    print(f"--- dns log (tail) ---\n{proc.log_text()[-2000:]}")
    assert code == 0


def create_service(client: Client, name: str, *, ports: list[dict] | None = None, headless: bool = False) -> dict:
    spec: dict = {"ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}], "selector": {"app": name}}
    if headless:
        spec["clusterIP"] = "None"
    return client.create(f"/api/v1/namespaces/{NS}/services",
                         {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
                          "spec": spec})


def endpoint_slice(name: str, service: str, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def create_headless(client: Client, name: str, n: int) -> list[str]:
    create_service(client, name, headless=True)
    ips = [f"10.244.{i // 200}.{i % 200 + 2}" for i in range(n)]
    client.create(SLICES, endpoint_slice(f"{name}-abc", name, ips))
    return ips


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def a_records(reply: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A)


# -- answers -------------------------------------------------------------------------------------


def test_cluster_records_with_dig(dns: DnsProcess, cluster: Client):
    ip = cluster.get(f"/api/v1/namespaces/{NS}/services/web")["spec"]["clusterIP"]
    assert dns.dig("+short", "web.default.svc.cluster.local").split() == [ip]
    assert dns.dig("+short", "SRV", "_http._tcp.web.default.svc.cluster.local").split() == \
        ["0", "100", "80", "web.default.svc.cluster.local."]
    assert dns.dig("+short", "-x", ip).split() == ["web.default.svc.cluster.local."]
    out = dns.dig("nosuch.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd ra" in out
    assert "status: NOERROR" in dns.dig("web.default.svc.cluster.local", "AAAA")


def test_case_is_preserved_through_the_fast_path(dns: DnsProcess):
    for qid in (11, 12, 13):  # the 2nd and 3rd come from the wire cache
        r = dns.query("WeB.default.svc.cluster.local", qid=qid)
        assert str(r.q.qname) == "WeB.default.svc.cluster.local."
        assert [str(rr.rname) for rr in r.rr] == ["WeB.default.svc.cluster.local."]
        assert r.header.aa == 1


def test_edns0_is_echoed(dns: DnsProcess):
    r = dns.query("web.default.svc.cluster.local", edns=1232)
    assert [rr.rtype for rr in r.ar] == [dnslib.QTYPE.OPT]
    assert [rr.rtype for rr in dns.query("web.default.svc.cluster.local").ar] == []
    assert "OPT PSEUDOSECTION" in dns.dig("web.default.svc.cluster.local")  # dig sends EDNS0 (+cookie)


def test_headless_100_endpoints_truncated_over_udp_full_over_tcp(dns: DnsProcess):
    expected = sorted(f"10.244.{i // 200}.{i % 200 + 2}" for i in range(100))
    for _ in range(2):  # slow path, then fast path
        udp = dns.query("big.default.svc.cluster.local")
        assert udp.header.tc == 1 and udp.rr == [] and str(udp.q.qname) == "big.default.svc.cluster.local."
    tcp = dns.query("big.default.svc.cluster.local", tcp=True)
    assert tcp.header.tc == 0 and a_records(tcp) == expected
    # dig retries over TCP by itself when it sees TC.
    out = dns.dig("+short", "big.default.svc.cluster.local")
    assert sorted(out.split()) == expected


def test_changes_are_visible_to_the_next_query(dns: DnsProcess, cluster: Client):
    name = "later.default.svc.cluster.local"
    assert dns.query(name).header.rcode == dnslib.RCODE.NXDOMAIN
    assert dns.query(name).header.rcode == dnslib.RCODE.NXDOMAIN  # now in the wire cache
    created = create_service(cluster, "later")
    ip = created["spec"]["clusterIP"]
    # The informer needs a moment to see the event; from the first fresh answer on, never stale.
    wait_for(lambda: dns.query(name).header.rcode == dnslib.RCODE.NOERROR, what="the new service")
    for _ in range(20):
        assert a_records(dns.query(name)) == [ip]

    create_headless(cluster, "scaled", 2)
    hname = "scaled.default.svc.cluster.local"
    wait_for(lambda: len(a_records(dns.query(hname))) == 2, what="2 endpoints")
    s = cluster.get(f"{SLICES}/scaled-abc")
    s["endpoints"] = s["endpoints"][:1]
    cluster.update(f"{SLICES}/scaled-abc", s)
    wait_for(lambda: len(a_records(dns.query(hname))) == 1, what="scale down to 1")
    for _ in range(20):
        assert len(a_records(dns.query(hname))) == 1

    cluster.delete(f"/api/v1/namespaces/{NS}/services/later")
    wait_for(lambda: dns.query(name).header.rcode == dnslib.RCODE.NXDOMAIN, what="the deletion")
    for _ in range(20):
        assert dns.query(name).header.rcode == dnslib.RCODE.NXDOMAIN


def test_other_names_are_forwarded(dns: DnsProcess, upstream: FakeUpstream):
    r = dns.query("www.Example.org")
    assert a_records(r) == ["192.0.2.7"] and str(r.q.qname) == "www.Example.org."
    assert "www.Example.org." in upstream.queries or "www.example.org." in [q.lower() for q in upstream.queries]


# -- HTTP ----------------------------------------------------------------------------------------


def metric(text: str, pattern: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_ready_and_metrics(dns: DnsProcess):
    assert dns.http(dns.health, "/health") == (200, "OK")
    assert dns.http(dns.ready, "/ready") == (200, "OK")
    requests = r'coredns_dns_requests_total\{.*proto="udp".*type="A"\}'
    before = metric(dns.http(dns.metrics, "/metrics")[1], requests)
    for i in range(50):
        dns.query("web.default.svc.cluster.local", qid=i)
    status, text = dns.http(dns.metrics, "/metrics")
    assert status == 200
    assert metric(text, requests) - before == 50  # fast-path answers are all counted
    assert metric(text, r'coredns_dns_responses_total\{.*rcode="NOERROR",plugin="kubernetes"\}') >= 50
    assert metric(text, r'coredns_dns_responses_total\{.*rcode="NXDOMAIN",plugin="kubernetes"\}') >= 1
    assert metric(text, r'coredns_dns_request_duration_seconds_count\{.*type="A"\}') >= 50
    assert metric(text, r"coredns_build_info\{") == 1
    for name in ("coredns_dns_request_size_bytes_bucket", "coredns_dns_response_size_bytes_bucket",
                 "coredns_cache_misses_total", "coredns_forward_requests_total", "coredns_panics_total"):
        assert name in text


def test_lameduck_and_not_ready_before_sync(apiserver: ApiServerProcess, upstream: FakeUpstream, tmp_path):
    # An apiserver address nobody listens on: never synced → /ready 503 (after the 5 s startup
    # wait the listeners serve anyway, and unknown cluster names get SERVFAIL).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(apiserver.kubeconfig.read_text().replace(
        re.search(r"server: (\S+)", apiserver.kubeconfig.read_text()).group(1), f"http://127.0.0.1:{free_port()}"))
    proc = DnsProcess(tmp_path, kubeconfig, COREFILE.format(lameduck="2s", upstream=upstream.port))
    try:
        assert dns_status(proc) == (503, "kubernetes\n")
        assert proc.query("nosuch.default.svc.cluster.local").header.rcode == dnslib.RCODE.SERVFAIL
        os.kill(proc.proc.pid, signal.SIGTERM)
        wait_for(lambda: proc.http(proc.ready, "/ready") == (503, "lameduck\n"), what="lameduck")
        assert proc.http(proc.health, "/health") == (200, "OK")
        assert proc.query("www.example.org").rr  # still answering while lameduck
        assert proc.proc.poll() is None
        assert proc.proc.wait(15) == 0
    finally:
        proc.stop()


def dns_status(proc: DnsProcess) -> tuple[int, str]:
    return proc.http(proc.ready, "/ready")


def test_two_workers_share_the_port_and_sum_metrics(apiserver: ApiServerProcess, cluster: Client,
                                                    upstream: FakeUpstream, tmp_path):
    create_service(cluster, "pair")
    proc = DnsProcess(tmp_path, apiserver.kubeconfig, COREFILE.format(lameduck="0s", upstream=upstream.port),
                      "--workers", "2")
    try:
        pids = subprocess.run(["ps", "--ppid", str(proc.proc.pid), "-o", "pid="], capture_output=True,
                              text=True).stdout.split()
        assert len(pids) == 1  # one forked worker besides the first process
        wait_for(lambda: proc.http(proc.ready, "/ready")[0] == 200, what="both workers ready")
        # Different source ports spread over both sockets; every answer is right whichever answers.
        for i in range(40):
            assert proc.query("pair.default.svc.cluster.local", qid=i).header.rcode == dnslib.RCODE.NOERROR
        text = proc.http(proc.metrics, "/metrics")[1]
        assert metric(text, r'coredns_dns_requests_total\{.*type="A"\}') == 40
        assert proc.stop() == 0
        assert subprocess.run(["ps", "-p", pids[0]], capture_output=True).returncode != 0  # worker gone too
    finally:
        proc.stop()


# -- the batched UDP loop (recvmmsg/sendmmsg) and its fallback --------------------------------------


@pytest.mark.parametrize("recvmmsg", ["64", "0"], ids=["batched", "recvfrom"])
def test_burst_from_many_sockets_every_answer_right(apiserver: ApiServerProcess, cluster: Client,
                                                    upstream: FakeUpstream, tmp_path, monkeypatch, recvmmsg):
    """Four sockets send 250 queries each without waiting: cluster names in several letter cases
    (wire-cache hits and misses), NXDOMAIN names, names for the upstream, malformed datagrams.
    Every query gets one answer with its ID, its exact question and the right records; the
    requests counter counts each once."""
    import random

    from netplane.dns.server import RECVMMSG_ENV

    monkeypatch.setenv(RECVMMSG_ENV, recvmmsg)
    ips = {}
    for i in range(8):
        name = f"burst{i}"
        try:
            ips[name] = create_service(cluster, name)["spec"]["clusterIP"]
        except Exception:  # the other parametrization created it already
            ips[name] = cluster.get(f"/api/v1/namespaces/{NS}/services/{name}")["spec"]["clusterIP"]
    proc = DnsProcess(tmp_path, apiserver.kubeconfig, COREFILE.format(lameduck="0s", upstream=upstream.port))
    try:
        assert ("one recvfrom/sendto per UDP datagram" in proc.log_text()) == (recvmmsg == "0")
        wait_for(lambda: all(proc.query(f"{n}.{NS}.svc.cluster.local").rr for n in ips), what="services in DNS")
        # A slow-path answer is counted just after it is sent: let the last ones land.
        time.sleep(0.2)
        warm = requests(proc)
        rng = random.Random(3)
        socks = []
        expected: dict[tuple[int, int], tuple[str, str]] = {}
        for n in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.settimeout(5)
            socks.append(s)
        try:
            for k in range(250):
                for n, s in enumerate(socks):
                    qid = rng.randrange(65536)
                    while (n, qid) in expected:
                        qid = rng.randrange(65536)
                    roll = rng.random()
                    if roll < 0.05:  # malformed: FORMERR with the same ID
                        s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\xc0", ("127.0.0.1", proc.port))
                        expected[(n, qid)] = ("FORMERR", "")
                        continue
                    if roll < 0.08:
                        kind, qname = "FWD", f"name{rng.randrange(3)}.example.org"
                    elif roll < 0.18:
                        kind, qname = "NX", f"nosuch{rng.randrange(3)}.{NS}.svc.cluster.local"
                    else:
                        svc = rng.choice(sorted(ips))
                        kind, qname = svc, f"{svc}.{NS}.svc.cluster.local"
                        if rng.random() < 0.2:
                            qname = "".join(c.upper() if rng.random() < 0.5 else c for c in qname)
                    q = dnslib.DNSRecord.question(qname, "A")
                    q.header.id = qid
                    s.sendto(q.pack(), ("127.0.0.1", proc.port))
                    expected[(n, qid)] = (kind, qname)
            got = {}
            for n, s in enumerate(socks):
                for _ in range(sum(1 for key in expected if key[0] == n)):
                    data = s.recv(4096)
                    key = (n, struct.unpack_from("!H", data)[0])
                    assert key in expected and key not in got
                    got[key] = dnslib.DNSRecord.parse(data)
        finally:
            for s in socks:
                s.close()
        for key, (kind, qname) in expected.items():
            r = got[key]
            if kind == "FORMERR":
                assert r.header.rcode == dnslib.RCODE.FORMERR
                continue
            assert str(r.q.qname) == qname + "."
            if kind == "NX":
                assert r.header.rcode == dnslib.RCODE.NXDOMAIN
            elif kind == "FWD":
                assert a_records(r) == ["192.0.2.7"]
            else:
                assert a_records(r) == [ips[kind]] and str(r.rr[0].rname) == qname + "."
        wait_for(lambda: requests(proc) - warm >= len(expected), what="every answer counted")
        time.sleep(0.2)
        text = proc.http(proc.metrics, "/metrics")[1]
        assert metric(text, r"coredns_dns_requests_total\{") - warm == len(expected)
        assert metric(text, r"coredns_panics_total") == 0
    finally:
        assert proc.stop() == 0


def requests(proc: DnsProcess) -> float:
    return metric(proc.http(proc.metrics, "/metrics")[1], r"coredns_dns_requests_total\{")
