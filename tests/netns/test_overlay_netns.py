"""The VXLAN overlay with real packets, in namespaces only.

Topology (all namespaces made by ``netns_factory``; the root namespace is never touched):

    underlay ns:  br0 ── ul-a, ul-b, ul-c (veths)                        172.31.77.0/24, MTU 1500
    node ns a/b/c: eth0 172.31.77.{2,3,4}; np.vx1 (VxlanOverlay(netns=...)); vpod 10.244.N.1/32
    pod ns a/b/c:  eth0 10.244.N.5/32, gw 10.244.N.1 (wired by hand here, like wiring.py would)

Captures run in a child (``ip netns exec <underlay> python -c SNIFFER``), never by moving the
test process into another namespace.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from netplane.cni.overlay import (
    ROUTE_PROTO,
    OverlayError,
    OverlaySyncError,
    Peer,
    VxlanOverlay,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

UNDERLAY_MTU = 1500
OVERLAY_MTU = UNDERLAY_MTU - 50
LARGEST_DF_PING = OVERLAY_MTU - 28  # 20 IPv4 + 8 ICMP

# Sniffs UDP to the VXLAN port on an interface of the namespace it is started in; prints READY
# once the socket is open, then one JSON list describing outer and inner headers.
SNIFFER = r"""
import json, sys
from scapy.all import sniff
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
iface, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def keep(p):
    return IP in p and UDP in p and p[UDP].dport == port
pkts = sniff(iface=iface, lfilter=keep, count=count, timeout=timeout,
             started_callback=lambda: print("READY", flush=True))
out = []
for p in pkts:
    outer = p[IP]
    rec = {"src": outer.src, "dst": outer.dst, "len": outer.len, "mf": int(outer.flags.MF),
           "frag": outer.frag, "dport": p[UDP].dport, "vni": None}
    if VXLAN in p:
        rec["vni"] = p[VXLAN].vni
        inner = p[VXLAN].payload
        if IP in inner:
            rec.update(inner_src=inner[IP].src, inner_dst=inner[IP].dst, inner_proto=inner[IP].proto)
    out.append(rec)
print(json.dumps(out), flush=True)
"""

TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(10)
print("LISTENING", flush=True)
c, addr = s.accept(); data = c.recv(100)
c.sendall(b"pong from " + addr[0].encode() + b": " + data); c.close()
"""

TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"hello"); print(c.recv(200).decode())
"""


@dataclass
class NodeNet:
    name: str
    ns: str
    pod_ns: str
    node_ip: str
    pod_cidr: str
    pod_ip: str
    overlay: VxlanOverlay
    mac: str = ""

    def peer(self) -> Peer:
        return Peer(node=self.name, node_ip=self.node_ip, pod_cidr=self.pod_cidr, vtep_mac=self.mac)


class Cluster:
    def __init__(self, underlay: str, nodes: dict[str, NodeNet], run_in):
        self.underlay = underlay
        self.nodes = nodes
        self.run_in = run_in

    def peers_of(self, name: str, *only: str) -> list[Peer]:
        return [n.peer() for n in self.nodes.values() if n.name != name and (not only or n.name in only)]

    def sync(self, name: str, *only: str) -> int:
        node = self.nodes[name]
        node.overlay.sync(self.peers_of(name, *only))
        return node.overlay.last_sync_changes

    def kernel_state(self, name: str) -> dict[str, list[str]]:
        """The device's neighbours, FDB and netplane routes as `ip`/`bridge` print them (an
        independent read, not the module's own observe())."""
        ns = self.nodes[name].ns

        def lines(*cmd: str) -> list[str]:
            out = self.run_in(ns, *cmd, check=False).stdout
            return sorted(" ".join(line.split()) for line in out.splitlines() if line.strip())

        return {
            "neigh": lines("ip", "-4", "neigh", "show", "dev", "np.vx1"),
            "fdb": lines("bridge", "fdb", "show", "dev", "np.vx1"),
            "routes": lines("ip", "-4", "route", "show", "proto", str(ROUTE_PROTO)),
        }


def _build(netns_factory, run_in, names: str) -> Cluster:
    underlay = netns_factory("ul")
    run_in(underlay, "ip", "link", "add", "br0", "mtu", str(UNDERLAY_MTU), "type", "bridge")
    run_in(underlay, "ip", "link", "set", "br0", "up")
    nodes = {}
    for i, name in enumerate(names, start=1):
        ns = netns_factory(f"node-{name}")
        pod_ns = netns_factory(f"pod-{name}")
        node_ip, cidr = f"172.31.77.{i + 1}", f"10.244.{i}.0/24"
        gw, pod_ip = f"10.244.{i}.1", f"10.244.{i}.5"
        # underlay: a veth from the bridge into the node namespace
        run_in(underlay, "ip", "link", "add", f"ul-{name}", "mtu", str(UNDERLAY_MTU), "type", "veth",
               "peer", "name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns)
        run_in(underlay, "ip", "link", "set", f"ul-{name}", "master", "br0", "up")
        run_in(ns, "ip", "addr", "add", f"{node_ip}/24", "dev", "eth0")
        run_in(ns, "ip", "link", "set", "eth0", "up")
        run_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # a ptp-style pod, wired the way wiring.py does it
        run_in(ns, "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
        run_in(ns, "ip", "addr", "add", f"{gw}/32", "dev", "vpod")
        run_in(ns, "ip", "link", "set", "vpod", "up")
        run_in(ns, "ip", "route", "add", f"{pod_ip}/32", "dev", "vpod", "scope", "link")
        run_in(pod_ns, "ip", "addr", "add", f"{pod_ip}/32", "dev", "eth0")
        run_in(pod_ns, "ip", "link", "set", "eth0", "mtu", str(OVERLAY_MTU), "up")
        run_in(pod_ns, "ip", "route", "add", gw, "dev", "eth0", "scope", "link")
        run_in(pod_ns, "ip", "route", "add", "default", "via", gw)
        overlay = VxlanOverlay(mtu=OVERLAY_MTU, local_ip=node_ip, pod_cidr=cidr, netns=ns)
        nodes[name] = NodeNet(name, ns, pod_ns, node_ip, cidr, pod_ip, overlay)
    for node in nodes.values():
        node.mac = node.overlay.ensure_device()
    cluster = Cluster(underlay, nodes, run_in)
    for name in nodes:
        cluster.sync(name)
    return cluster


def _root_overlay_lines() -> list[str]:
    """Anything in the root namespace that looks like ours (must stay empty)."""
    marks = ("np.vx", "172.31.77.", "vpod", "ul-a", "ul-b", "ul-c", f"proto {ROUTE_PROTO}")
    out = []
    for cmd in (["ip", "-o", "link", "show"], ["ip", "-o", "addr", "show"],
                ["ip", "route", "show", "table", "all"]):
        text = subprocess.run(cmd, capture_output=True, text=True).stdout
        out += [line for line in text.splitlines() if any(m in line for m in marks)]
    return out


@pytest.fixture
def root_guard():
    before = _root_overlay_lines()
    yield
    assert _root_overlay_lines() == before, "the root namespace changed"


@pytest.fixture
def cluster3(root_guard, netns_factory, run_in):
    return _build(netns_factory, run_in, "abc")


@pytest.fixture
def cluster2(root_guard, netns_factory, run_in):
    return _build(netns_factory, run_in, "ab")


@contextmanager
def sniffing(ns: str, iface: str, count: int, timeout: float = 8.0):
    """Runs SNIFFER in ``ns``; yields a list that holds the captured records after the block."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SNIFFER, iface, "8472",
                             str(count), str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    result: list[dict] = []
    try:
        ready = proc.stdout.readline()
        assert ready.strip() == "READY", f"sniffer did not start: {ready!r} {proc.stderr.read()}"
        yield result
        out, err = proc.communicate(timeout=timeout + 10)
        assert proc.returncode == 0, err
        result.extend(json.loads(out.strip().splitlines()[-1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------ tests


def test_pods_on_different_nodes_talk_through_vxlan(cluster3, run_in, ping):
    c = cluster3
    a, b, cc = c.nodes["a"], c.nodes["b"], c.nodes["c"]

    # converged: a second sync on every node writes nothing and the kernel state is unchanged
    states = {n: c.kernel_state(n) for n in c.nodes}
    assert all(c.sync(n) == 0 for n in c.nodes)
    assert {n: c.kernel_state(n) for n in c.nodes} == states
    assert states["a"] == {
        "neigh": sorted([f"10.244.2.0 lladdr {b.mac} PERMANENT", f"10.244.3.0 lladdr {cc.mac} PERMANENT"]),
        "fdb": sorted([f"{b.mac} dst 172.31.77.3 self permanent",
                       f"{cc.mac} dst 172.31.77.4 self permanent"]),
        "routes": ["10.244.2.0/24 via 10.244.2.0 dev np.vx1 onlink",
                   "10.244.3.0/24 via 10.244.3.0 dev np.vx1 onlink"],
    }
    dev = run_in(a.ns, "ip", "-d", "-o", "link", "show", "np.vx1").stdout
    for want in ("mtu 1450", "vxlan id 1 ", "local 172.31.77.2", "dev eth0", "dstport 8472",
                 "nolearning", "state UNKNOWN"):
        assert want in dev, (want, dev)
    assert "inet 10.244.1.0/32" in run_in(a.ns, "ip", "-4", "-o", "addr", "show", "np.vx1").stdout

    # ICMP pod a -> pod b, observed on the underlay bridge: VXLAN VNI 1 between node IPs,
    # pod IPs inside; plus the largest DF ping, which fills the 1500-byte underlay exactly.
    with sniffing(c.underlay, "br0", count=4) as seen:
        assert ping(a.pod_ns, b.pod_ip)
        big = run_in(a.pod_ns, "ping", "-n", "-c1", "-W2", "-M", "do", "-s", str(LARGEST_DF_PING),
                     b.pod_ip, check=False)
        assert big.returncode == 0, big.stdout + big.stderr
    assert len(seen) == 4, seen
    for rec in seen:
        assert rec["dport"] == 8472 and rec["vni"] == 1, rec
        assert rec["inner_proto"] == 1, rec
        assert (rec["src"], rec["dst"], rec["inner_src"], rec["inner_dst"]) in {
            (a.node_ip, b.node_ip, a.pod_ip, b.pod_ip),
            (b.node_ip, a.node_ip, b.pod_ip, a.pod_ip),
        }, rec
        assert rec["mf"] == 0 and rec["frag"] == 0, f"outer packet fragmented: {rec}"
    assert max(r["len"] for r in seen) == UNDERLAY_MTU

    # the third node, and back
    assert ping(a.pod_ns, cc.pod_ip) and ping(cc.pod_ns, b.pod_ip) and ping(b.pod_ns, a.pod_ip)
    # node -> remote pod uses the device address as source
    assert ping(a.ns, b.pod_ip)

    # TCP pod b -> pod c
    server = subprocess.Popen(["ip", "netns", "exec", cc.pod_ns, sys.executable, "-c", TCP_SERVER,
                               "8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "LISTENING"
        reply = run_in(b.pod_ns, sys.executable, "-c", TCP_CLIENT, cc.pod_ip, "8080").stdout.strip()
        assert reply == f"pong from {b.pod_ip}: hello"
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_mtu_errors_are_reported_not_black_holed(cluster2, run_in):
    c = cluster2
    a, b = c.nodes["a"], c.nodes["b"]

    def df_ping(ns: str, size: int) -> subprocess.CompletedProcess[str]:
        return run_in(ns, "ping", "-n", "-c1", "-W2", "-M", "do", "-s", str(size), b.pod_ip,
                      check=False)

    # from the node itself: the vxlan device's MTU (1450) is the limit
    assert df_ping(a.ns, LARGEST_DF_PING).returncode == 0
    too_big = df_ping(a.ns, LARGEST_DF_PING + 1)
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()
    assert "mtu=1450" in too_big.stdout + too_big.stderr

    # a pod with a (wrongly) larger MTU is told by its node (ICMP frag needed), not black-holed
    run_in(a.pod_ns, "ip", "link", "set", "eth0", "mtu", str(UNDERLAY_MTU))
    frag = df_ping(a.pod_ns, LARGEST_DF_PING + 1)
    out = frag.stdout + frag.stderr
    assert frag.returncode != 0
    assert "frag needed" in out.lower() and "1450" in out, out
    # and with the pod's correct MTU the error is immediate and local
    run_in(a.pod_ns, "ip", "link", "set", "eth0", "mtu", str(OVERLAY_MTU))
    local = df_ping(a.pod_ns, LARGEST_DF_PING + 1)
    assert local.returncode != 0 and "message too long" in (local.stdout + local.stderr).lower()
    assert df_ping(a.pod_ns, LARGEST_DF_PING).returncode == 0


def test_node_removal_mac_change_repair_and_device_restore(cluster3, run_in, ping):
    c = cluster3
    a, b, cc = c.nodes["a"], c.nodes["b"], c.nodes["c"]
    assert ping(a.pod_ns, cc.pod_ip)

    # -- node c removed from a's peers: its neighbour, FDB entry and route go, and so does traffic
    assert c.sync("a", "b") == 3
    state = c.kernel_state("a")
    assert not any("10.244.3." in line or cc.mac in line for lines in state.values() for line in lines)
    assert len(state["neigh"]) == len(state["fdb"]) == len(state["routes"]) == 1
    assert not ping(a.pod_ns, cc.pod_ip)
    # ... and re-added
    assert c.sync("a") == 3
    assert ping(a.pod_ns, cc.pod_ip)

    # -- node b gets a new VTEP MAC (its device recreated): stale until a re-syncs, then clean
    old_mac, new_mac = b.mac, "02:77:00:00:00:0b"
    b.overlay.teardown()
    assert b.overlay.ensure_device(mac=new_mac) == new_mac
    b.mac = new_mac
    c.sync("b")
    assert not ping(a.pod_ns, b.pod_ip)  # a still sends to the old MAC
    assert c.sync("a") == 3  # neighbour + FDB replaced, old MAC's FDB entry removed
    assert c.sync("c") == 3
    assert ping(a.pod_ns, b.pod_ip) and ping(cc.pod_ns, b.pod_ip)
    for n in ("a", "c"):
        fdb = c.kernel_state(n)["fdb"]
        assert not any(old_mac in line for line in fdb), fdb
        assert f"{new_mac} dst {b.node_ip} self permanent" in fdb
    assert c.sync("a") == 0

    # -- periodic reconcile repairs hand-made damage and removes strays
    converged = c.kernel_state("a")
    run_in(a.ns, "ip", "neigh", "del", "10.244.2.0", "dev", "np.vx1")
    run_in(a.ns, "ip", "route", "del", "10.244.2.0/24")
    run_in(a.ns, "bridge", "fdb", "append", "02:de:ad:00:00:01", "dev", "np.vx1", "dst", "172.31.77.99",
           "self", "permanent")
    run_in(a.ns, "ip", "neigh", "add", "10.244.99.0", "lladdr", "02:de:ad:00:00:01", "dev", "np.vx1",
           "nud", "permanent")
    assert not ping(a.pod_ns, b.pod_ip)
    assert c.sync("a") == 4  # neighbour + route back, stray FDB entry and neighbour gone
    assert c.kernel_state("a") == converged
    assert ping(a.pod_ns, b.pod_ip)

    # -- a's device deleted: ensure_device with the published MAC restores it, peers untouched
    peers_before = {n: c.kernel_state(n) for n in ("b", "c")}
    run_in(a.ns, "ip", "link", "del", "np.vx1")
    assert not ping(b.pod_ns, a.pod_ip)
    assert a.overlay.ensure_device(mac=a.mac) == a.mac
    assert c.sync("a") == 6
    assert ping(b.pod_ns, a.pod_ip) and ping(a.pod_ns, cc.pod_ip)
    assert {n: c.kernel_state(n) for n in ("b", "c")} == peers_before


# ------------------------------------------------------------- device handling, one node only


@pytest.fixture
def lone_node(root_guard, netns_factory, run_in):
    ns = netns_factory("node")
    run_in(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
    run_in(ns, "ip", "addr", "add", "172.31.77.2/24", "dev", "eth0")
    run_in(ns, "ip", "link", "set", "eth0", "up")
    return ns


def _link(run_in, ns):
    out = run_in(ns, "ip", "-d", "-o", "link", "show", "np.vx1").stdout
    return int(out.split(":", 1)[0]), out


def test_ensure_device_reuses_repairs_or_recreates(lone_node, run_in):
    ns = lone_node
    ov = VxlanOverlay(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24", netns=ns)
    mac = ov.ensure_device()
    assert ov.mac == mac
    index, _ = _link(run_in, ns)
    assert ov.ensure_device() == mac and ov.last_ensure_changes == 0

    # drift on a compatible device is repaired in place (same ifindex)
    run_in(ns, "ip", "link", "set", "np.vx1", "down", "mtu", "1300", "address", "02:00:00:00:99:99")
    run_in(ns, "ip", "addr", "add", "10.244.7.0/32", "dev", "np.vx1")  # an old podCIDR
    assert ov.ensure_device(mac=mac) == mac
    again, out = _link(run_in, ns)
    assert again == index and "mtu 1450" in out and ",UP" in out
    addrs = run_in(ns, "ip", "-4", "-o", "addr", "show", "np.vx1").stdout
    assert "10.244.1.0/32" in addrs and "10.244.7.0" not in addrs

    # incompatible devices of our name are deleted and recreated
    for bad in (["id", "2", "dstport", "8472", "local", "172.31.77.2", "nolearning"],
                ["id", "1", "dstport", "4789", "local", "172.31.77.2", "nolearning"],
                ["id", "1", "dstport", "8472", "local", "172.31.77.2", "learning"]):
        run_in(ns, "ip", "link", "del", "np.vx1")
        run_in(ns, "ip", "link", "add", "np.vx1", "type", "vxlan", *bad, "dev", "eth0")
        before, _ = _link(run_in, ns)
        assert ov.ensure_device(mac=mac) == mac
        after, out = _link(run_in, ns)
        assert after != before, bad
        assert "vxlan id 1 " in out and "dstport 8472" in out and "nolearning" in out
    run_in(ns, "ip", "link", "del", "np.vx1")
    run_in(ns, "ip", "link", "add", "np.vx1", "type", "veth", "peer", "name", "np.vx1p")
    assert ov.ensure_device() and "vxlan id 1 " in _link(run_in, ns)[1]

    ov.teardown()
    ov.teardown()  # idempotent
    assert run_in(ns, "ip", "link", "show", "np.vx1", check=False).returncode != 0
    with pytest.raises(OverlayError, match="ensure_device"):
        ov.sync([])


def test_missing_underlay_or_namespace_is_an_error(lone_node):
    with pytest.raises(OverlayError, match="no interface holds local_ip 172.31.77.9"):
        VxlanOverlay(mtu=1450, local_ip="172.31.77.9", pod_cidr="10.244.1.0/24",
                     netns=lone_node).ensure_device()
    ghost = lone_node + "-ghost"
    with pytest.raises(OverlayError, match="cannot open netlink"):
        VxlanOverlay(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24",
                     netns=ghost).ensure_device()
    assert not os.path.exists(f"/var/run/netns/{ghost}")  # flags=0: nothing was created


def test_failed_step_rolls_back_that_peer_only(lone_node, run_in, monkeypatch):
    from pyroute2.netlink.exceptions import NetlinkError

    ns = lone_node
    ov = VxlanOverlay(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24", netns=ns)
    ov.ensure_device()
    good = Peer("b", "172.31.77.3", "10.244.2.0/24", "02:00:00:00:00:0b")
    bad = Peer("c", "172.31.77.4", "10.244.3.0/24", "02:00:00:00:00:0c")

    class RouteFails:
        """Passes everything to the real socket, except the route write for peer c."""

        def __init__(self, ipr):
            self._ipr = ipr

        def __getattr__(self, name):
            return getattr(self._ipr, name)

        def route(self, command, **kw):
            if command == "replace" and kw.get("dst") == bad.pod_cidr:
                raise NetlinkError(errno.EPERM, "injected")
            return self._ipr.route(command, **kw)

    real = ov._ipr

    @contextmanager
    def faulty():
        with real() as ipr:
            yield RouteFails(ipr)

    monkeypatch.setattr(ov, "_ipr", faulty)
    with pytest.raises(OverlaySyncError) as e:
        ov.sync([good, bad])
    assert e.value.errors == ("peer c: route failed: (1, 'injected')",)
    assert ov.last_sync_changes == 3 + 2 + 2  # b's three steps, c's two, c's two rolled back
    neigh = run_in(ns, "ip", "-4", "neigh", "show", "dev", "np.vx1").stdout
    fdb = run_in(ns, "bridge", "fdb", "show", "dev", "np.vx1").stdout
    assert "10.244.2.0" in neigh and "10.244.3.0" not in neigh
    assert good.vtep_mac in fdb and bad.vtep_mac not in fdb

    monkeypatch.setattr(ov, "_ipr", real)
    ov.sync([good, bad])  # the retry programs c
    assert ov.last_sync_changes == 3 and ov.last_sync_errors == ()
    routes = run_in(ns, "ip", "-4", "route", "show", "proto", str(ROUTE_PROTO)).stdout
    assert "10.244.3.0/24 via 10.244.3.0 dev np.vx1 onlink" in routes
