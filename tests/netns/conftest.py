"""Fixtures for tests that build networks out of real network namespaces (needs root).

Rules these fixtures enforce, so a netns test can never touch the host's network:
- every namespace is named ``nptest-<session token>-<n>-<label>``: unique per test session, so
  engineers running tests side by side never collide, and anything left over is recognisable;
- everything a test does to the network happens *inside* those namespaces (``run_in``, or a
  program started with ``ip netns exec <ns>``); the root namespace is never modified;
- namespaces are deleted at teardown even when the test fails, after killing the processes
  still running inside them (only ours can be: nothing else knows these names);
- a leak check runs last and fails the test if one of this session's namespaces survived.

Fixtures:
- ``netns_factory``: ``make(label="ns") -> name``; a new namespace with ``lo`` up.
- ``run_in``: ``run_in(ns, *cmd, check=True, timeout=10, input=None) -> CompletedProcess``
  runs ``ip netns exec <ns> cmd...`` and captures text output.
- ``ping``: ``ping(ns, address, count=1, timeout=1.0) -> bool``: real ICMP echo from ``ns``,
  with iputils ``ping`` when installed, else a raw-socket echo in Python (same packets).
- ``netns_leak_check``: snapshot of ``ip netns list`` before the test; after it, fails on any
  namespace of this session that is still there (``netns_factory`` already uses it).

Tests mark themselves ``@pytest.mark.netns``; ``netns_factory`` skips, with the reason, when not
root or when ``ip`` is missing, so the same suite runs (skipped) for an unprivileged user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

NETNS_PREFIX = "nptest-"
# One token per pytest process: names from parallel sessions never collide.
SESSION_PREFIX = f"{NETNS_PREFIX}{secrets.token_hex(3)}-"
IP = shutil.which("ip")


def netns_unavailable_reason() -> str | None:
    """Why netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "netns tests need root (they create network namespaces)"
    if IP is None:
        return "netns tests need iproute2's `ip` on PATH"
    return None


def list_netns() -> set[str]:
    """Names from `ip netns list` (the part before any "(id: N)")."""
    out = subprocess.run([IP or "ip", "netns", "list"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def leaked_netns(before: set[str], after: set[str], prefix: str = SESSION_PREFIX) -> set[str]:
    """Namespaces with ``prefix`` present after but not before (someone forgot to delete)."""
    return {name for name in after - before if name.startswith(prefix)}


def run_in_netns(ns: str, *cmd: str, check: bool = True, timeout: float = 10,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``ip netns exec ns cmd...``; raises with stdout/stderr in the message when check fails."""
    proc = subprocess.run([IP or "ip", "netns", "exec", ns, *cmd], capture_output=True,
                          text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"`ip netns exec {ns} {' '.join(cmd)}` exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


# A minimal ICMP echo for machines without iputils-ping: raw socket, one echo per try.
_PY_PING = r"""
import os, socket, struct, sys, time
dst, count, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for seq in range(1, count + 1):
    body = b"netplane-test-ping"
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    sock.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body, (dst, 0))
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(2048)
        except socket.timeout:
            break
        ihl = (data[0] & 0x0F) * 4
        typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and rid == ident and rseq == seq and addr[0] == dst:
            sys.exit(0)
sys.exit(1)
"""


def ping_from(ns: str, address: str, count: int = 1, timeout: float = 1.0) -> bool:
    """True when ``address`` answers an ICMP echo sent from inside ``ns``."""
    if shutil.which("ping"):
        cmd = ["ping", "-n", "-c", str(count), "-W", str(max(1, round(timeout))), address]
    else:
        cmd = [sys.executable, "-c", _PY_PING, address, str(count), str(timeout)]
    return run_in_netns(ns, *cmd, check=False, timeout=count * timeout + 10).returncode == 0


def _kill_netns_processes(name: str) -> None:
    """SIGKILL what still runs in a namespace this session made (so it really goes away)."""
    out = subprocess.run([IP or "ip", "netns", "pids", name], capture_output=True, text=True,
                         timeout=10).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class NetnsFactory:
    """Makes namespaces for one test and deletes all of them in ``cleanup``."""

    prefix: str
    created: list[str] = field(default_factory=list)

    def __call__(self, label: str = "ns") -> str:
        name = f"{self.prefix}{len(self.created)}-{label}"
        subprocess.run([IP or "ip", "netns", "add", name], check=True, capture_output=True,
                       timeout=10)
        self.created.append(name)  # before anything else can fail: cleanup must see it
        run_in_netns(name, "ip", "link", "set", "lo", "up")
        return name

    def cleanup(self) -> list[str]:
        """Delete every namespace made here; returns the error messages (never raises)."""
        errors = []
        for name in reversed(self.created):
            try:
                _kill_netns_processes(name)
                proc = subprocess.run([IP or "ip", "netns", "delete", name],
                                      capture_output=True, text=True, timeout=10)
                if proc.returncode != 0 and name in list_netns():
                    errors.append(f"ip netns delete {name}: {proc.stderr.strip()}")
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"deleting {name}: {e}")
        self.created.clear()
        return errors


_test_counter = iter(range(1_000_000))


@pytest.fixture
def netns_leak_check() -> Iterator[set[str]]:
    """Yields the namespaces present before the test; fails if this session's leaked."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    before = list_netns()
    yield before
    leaked = leaked_netns(before, list_netns())
    if leaked:
        pytest.fail(f"network namespaces leaked by this test: {sorted(leaked)}")


@pytest.fixture
def netns_factory(netns_leak_check: set[str]) -> Iterator[NetnsFactory]:
    """``make(label) -> name`` for unique namespaces with lo up, all deleted at teardown."""
    factory = NetnsFactory(prefix=f"{SESSION_PREFIX}{next(_test_counter)}-")
    try:
        yield factory
    finally:
        errors = factory.cleanup()
        if errors:
            pytest.fail("netns teardown failed: " + "; ".join(errors))


@pytest.fixture
def run_in() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_in(ns, *cmd, check=True, timeout=10, input=None)``."""
    return run_in_netns


@pytest.fixture
def ping() -> Callable[..., bool]:
    """``ping(ns, address, count=1, timeout=1.0) -> bool`` with real ICMP packets."""
    return ping_from


# -- sandbox clusters -------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETPLANE = os.path.join(os.path.dirname(sys.executable), "netplane")


@dataclass
class Sandbox:
    """A running `netplane up` cluster, driven the way a user drives it: CLI and kubectl."""

    name: str
    kubeconfig: str
    state: dict

    def netplane(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([NETPLANE, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"netplane {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def exec(self, pod: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.netplane("exec", "--name", self.name, pod, "--", *cmd, check=check, timeout=timeout)

    def pod_json(self, pod: str, namespace: str = "default") -> dict:
        import json

        return json.loads(self.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)

    def wait_ready(self, pod: str, namespace: str = "default", timeout: float = 30) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while True:
            obj = self.pod_json(pod, namespace)
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True":
                return obj
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {namespace}/{pod} not Ready after {timeout}s: {obj.get('status')}")
            time.sleep(0.2)


def sandbox_leftovers(name: str) -> list[str]:
    """Everything of cluster `name` that should be gone after `netplane down`."""
    from netplane.sandbox.names import ClusterNames
    from netplane.sandbox.network import leftovers

    return leftovers(ClusterNames(name))


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    """`make(topology="topologies/default.yaml") -> Sandbox`: a fresh cluster with a unique name;
    always removed with `netplane down` at teardown, which then must leave nothing behind."""
    import json

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    made: list[str] = []

    def make(topology: str = "topologies/default.yaml", timeout: float = 120) -> Sandbox:
        name = "t" + secrets.token_hex(3)
        made.append(name)
        path = topology if os.path.isabs(topology) else os.path.join(REPO, topology)
        proc = subprocess.run([NETPLANE, "up", path, "--name", name, "--timeout", str(timeout)],
                              capture_output=True, text=True, timeout=timeout + 60)
        if proc.returncode != 0:
            raise AssertionError(f"netplane up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        from netplane.sandbox.names import ClusterNames

        names = ClusterNames(name)
        with open(names.state_file) as f:
            state = json.load(f)
        return Sandbox(name, names.kubeconfig, state)

    yield make
    problems = []
    for name in made:
        down = subprocess.run([NETPLANE, "down", "--name", name], capture_output=True, text=True, timeout=120)
        if down.returncode != 0:
            problems.append(f"netplane down --name {name}: {down.stderr}")
        left = sandbox_leftovers(name)
        if left:
            problems.append(f"cluster {name} left: {left}")
    assert not problems, "\n".join(problems)


def root_netns_state() -> dict[str, str]:
    """The root namespace's links, addresses, routes, rules and iptables rules: tests assert it
    is identical before and after, because nothing of netplane may ever live there."""
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "rules": out("ip", "rule", "show"),
        "iptables": "\n".join(l for l in out("iptables-save").splitlines() if not l.startswith("#")),
        "ip_forward": open("/proc/sys/net/ipv4/ip_forward").read(),
    }


@pytest.fixture
def root_netns_snapshot() -> Callable[[], dict[str, str]]:
    return root_netns_state
