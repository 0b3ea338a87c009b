"""A sandbox cluster per test module from topologies/dns.yaml (`dns: true`), and `dig` run inside
its client pod with `netplane exec` (the pod's netns and resolv.conf: 10.96.0.10, the cluster
search path, ndots:5), its output parsed into a DigResult the tests assert on.

The cluster is removed with `netplane down` at module teardown, which must leave nothing behind.
The only processes the tests signal are the cluster's own (its upstream dnsmasq, by the pid file
the sandbox writes).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
TOPOLOGY = os.path.join(REPO, "topologies", "dns.yaml")
NETPLANE = os.path.join(os.path.dirname(sys.executable), "netplane")
ZONE = "cluster.local"


# -- dig output ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RR:
    name: str    # as printed (case kept), with the trailing dot
    ttl: int
    rtype: str
    data: str    # rdata as dig prints it, whitespace collapsed

    @property
    def fields(self) -> list[str]:
        return self.data.split()


@dataclass
class DigResult:
    """One dig run: the (last) response header and sections, plus dig's own diagnostics."""

    text: str
    status: str = ""
    flags: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    edns: str | None = None         # the response's "; EDNS: ..." line, None without an OPT RR
    server_proto: str = ""          # "UDP" / "TCP" from ";; SERVER: ... (UDP)"
    truncated_retry: bool = False   # ";; Truncated, retrying in TCP mode."
    transfer_failed: bool = False   # "; Transfer failed." (AXFR/IXFR)
    returncode: int = 0

    def rrs(self, rtype: str, section: str = "answer") -> list[RR]:
        return [rr for rr in getattr(self, section) if rr.rtype == rtype]

    def values(self, rtype: str, section: str = "answer") -> list[str]:
        return [rr.data for rr in self.rrs(rtype, section)]


_HEADER = re.compile(r";; ->>HEADER<<- opcode: (\w+), status: (\w+), id: \d+")
_FLAGS = re.compile(r";; flags:([^;]*);\s*(.*)")
_SECTION = re.compile(r";; (ANSWER|AUTHORITY|ADDITIONAL|QUESTION) SECTION:")
_SERVER = re.compile(r";; SERVER: \S+ \((\w+)\)")


def parse_dig(text: str, returncode: int = 0) -> DigResult:
    """dig's default output → DigResult. With +qr, the query is printed first; every header
    resets what was read, so the result is the last response."""
    res = DigResult(text=text, returncode=returncode)
    section = None
    for line in text.splitlines():
        line = line.rstrip()
        if m := _HEADER.match(line):
            res.status, res.flags, res.counts, section = m.group(2), set(), {}, None
            res.answer, res.authority, res.additional, res.edns = [], [], [], None
            continue
        if m := _FLAGS.match(line):
            res.flags = set(m.group(1).split())
            res.counts = {k.strip(): int(v) for k, v in (p.split(":") for p in m.group(2).split(",") if ":" in p)}
            continue
        if m := _SECTION.match(line):
            section = m.group(1).lower()
            continue
        if line.startswith("; EDNS:"):
            res.edns = line
            continue
        if m := _SERVER.match(line):
            res.server_proto = m.group(1)
            continue
        if line.startswith(";; Truncated, retrying in TCP mode"):
            res.truncated_retry = True
        if line.startswith("; Transfer failed"):
            res.transfer_failed = True
        if not line:
            section = None  # dig ends every section with a blank line
            continue
        if line.startswith(";"):
            continue
        if section in ("answer", "authority", "additional"):
            parts = line.split(None, 4)
            if len(parts) >= 4 and parts[2] == "IN":
                name, ttl, _cls, rtype = parts[:4]
                data = " ".join(parts[4].split()) if len(parts) > 4 else ""
                getattr(res, section).append(RR(name, int(ttl), rtype, data))
    return res


# -- the cluster --------------------------------------------------------------------------------------


@dataclass
class DnsCluster:
    name: str
    kubeconfig: str
    state: dict[str, Any]

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", "--kubeconfig", self.kubeconfig, *args, input=input, check=check)

    def apply(self, *objects: dict[str, Any]) -> None:
        # One JSON document after the other (kubectl's validation of a `List` needs OpenAPI,
        # which the embedded apiserver does not serve).
        self.kubectl("apply", "-f", "-", input="\n".join(json.dumps(o) for o in objects))

    def exec(self, pod: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run(NETPLANE, "exec", "--name", self.name, pod, "--", *cmd, check=check, timeout=timeout)

    def dig(self, *args: str, pod: str = "client", timeout: float = 30) -> DigResult:
        """dig in `pod` with a short, single try (an unanswered query shows as a timeout, not as a
        slow test); the resolver is the pod's own resolv.conf unless args name a @server."""
        proc = self.exec(pod, "dig", "+time=2", "+tries=1", *args, check=False, timeout=timeout)
        return parse_dig(proc.stdout + proc.stderr, proc.returncode)

    def requests_total(self, qtype: str) -> int:
        """Queries of `qtype` the DNS pods have seen (coredns_dns_requests_total, summed)."""
        total = 0
        for ip in self.state["dns"]["pods"].values():
            out = self.exec("client", "curl", "-sf", "-m", "2", f"http://{ip}:9153/metrics").stdout
            for line in out.splitlines():
                if line.startswith("coredns_dns_requests_total{") and f'type="{qtype}"' in line:
                    total += int(float(line.rsplit(None, 1)[1]))
        return total

    @property
    def dns_pod_ips(self) -> set[str]:
        return set(self.state["dns"]["pods"].values())

    def pod_ip(self, pod: str, namespace: str = "default") -> str:
        return self.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout.strip()

    def cluster_ip(self, service: str, namespace: str = "default") -> str:
        return self.kubectl("get", "svc", service, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout.strip()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "DNS sandbox tests need root (network namespaces)"
    for tool in ("ip", "kubectl", "dig", "dnsmasq", "curl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"DNS sandbox tests need {tool}"
    return None


def bring_up(topology_text: str | None = None, tmp_dir: str | None = None) -> Iterator[DnsCluster]:
    """`netplane up` of topologies/dns.yaml (or of `topology_text`), `netplane down` afterwards."""
    from netplane.sandbox.names import ClusterNames
    from netplane.sandbox.network import leftovers

    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    path = TOPOLOGY
    if topology_text is not None:
        assert tmp_dir is not None
        path = os.path.join(tmp_dir, "dns-topology.yaml")
        with open(path, "w") as f:
            f.write(topology_text)
    name = "d" + secrets.token_hex(3)
    names = ClusterNames(name)
    try:
        proc = subprocess.run([NETPLANE, "up", path, "--name", name, "--timeout", "120"],
                              capture_output=True, text=True, timeout=200)
        if proc.returncode != 0:
            raise AssertionError(f"netplane up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with open(names.state_file) as f:
            state = json.load(f)
        yield DnsCluster(name, names.kubeconfig, state)
    finally:
        down = subprocess.run([NETPLANE, "down", "--name", name], capture_output=True, text=True, timeout=120)
        left = leftovers(names)
        assert down.returncode == 0 and not left, f"netplane down: {down.stderr}; left: {left}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsCluster]:
    yield from bring_up()


def eventually(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.1,
               what: str = "condition") -> tuple[Any, float]:
    """Poll `check` until truthy; returns (value, seconds it took) or raises with the last value."""
    start = time.monotonic()
    while True:
        last = check()
        if last:
            return last, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not reached after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., tuple[Any, float]]:
    """Test modules here cannot import this conftest (importlib import mode): helpers are fixtures."""
    return eventually


@pytest.fixture(name="parse_dig")
def parse_dig_fixture() -> Callable[..., DigResult]:
    return parse_dig


@pytest.fixture(name="bring_up", scope="session")
def bring_up_fixture() -> Callable[..., Iterator[DnsCluster]]:
    """`yield from bring_up(topology_text, tmp_dir)` in a module fixture: a variant cluster."""
    return bring_up
