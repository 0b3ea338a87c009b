"""`netplane agent`: the per-node process behind the CNI shim.

Data flow: apiserver → Node informer → (own podCIDR → IPAM; all Nodes → overlay peers) and
shim → unix socket → CniHandler (IPAM + wiring). It runs inside the node's network namespace
(hostNetwork on kind), so every netlink call without an explicit namespace acts on the node.
Exiting leaves the datapath in place: pods keep their connectivity across agent restarts.
With `--proxy iptables` it also hosts the service proxy (netplane.proxy.main.hosted): Services
and EndpointSlices → iptables, on the agent's apiserver client, as `netplane proxy` would.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import logging
import os
import socketserver
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from netplane.cni.errors import CniError
from netplane.cni.fastpath import OverlayFastPath
from netplane.cni.handler import CniHandler, NodeNetwork
from netplane.cni.ipam import Allocation, IpamStore
from netplane.cni.overlay import VxlanOverlay, compute_peers, node_annotations, own_vtep_mac
from netplane.cni.protocol import CniRequest, parse_spooled_del, shim_reply
from netplane.cni.teardown import SpoolJournal
from netplane.cni import wiring
from netplane import signals
from netplane.ebpf.libbpf import BpfError
from netplane.errors import ConfigError, NetplaneError
from netplane.httpserve import LocalHTTPServer, send
from netplane.k8s import Client, Informer, Node, load_config
from netplane.metrics import CONTENT_TYPE, CounterFunc, Gauge, Registry

log = logging.getLogger(__name__)

RESYNC_SECONDS = 30.0
TEARDOWN_DRAIN_SECONDS = 10.0  # on stop, for the answered DELs' veth deletions
FASTPATH_ADMIT_INTERVAL = 0.25  # how often proposed pods are checked for admission to the fast path
MASQ_CHAIN = "NETPLANE-CNI-MASQ"
NOTRACK_CHAIN = "NETPLANE-CNI-NOTRACK"


class KernelDatapath:
    """The real `Datapath`: wiring.py in the agent's own (node) namespace, plus the overlay fast
    path's entry for each pod once the agent has loaded it (`fastpath`)."""

    def __init__(self) -> None:
        self.fastpath: OverlayFastPath | None = None

    def wire(self, req: CniRequest, alloc: Allocation, mtu: int) -> wiring.WiredPod:
        wired = wiring.wire_pod(req.netns, req.ifname, req.container_id, alloc.ip, alloc.gateway, mtu)
        if self.fastpath is not None:
            self.fastpath.propose_pod(alloc.ip, wired.host_ifname)
        return wired

    def unwire(self, req: CniRequest) -> None:
        if self.fastpath is not None:
            try:
                self.fastpath.remove_veth(wiring.host_veth_name(req.container_id, req.ifname))
            except (BpfError, OSError) as e:
                log.warning("overlay fast path: removing %s/%s: %s", req.container_id, req.ifname, e)
        wiring.unwire_pod(req.netns or None, req.ifname, req.container_id)

    def check(self, req: CniRequest, alloc: Allocation) -> None:
        wiring.check_pod(req.netns, req.ifname, req.container_id, alloc.ip, alloc.gateway)


# -- servers ---------------------------------------------------------------------------------------


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: with more concurrent CNI calls (a node starting many
    # pods at once), curl's non-blocking connect() on the unix socket fails with EAGAIN and the
    # shim reports the agent unreachable (code 11).
    request_queue_size = 256


def _make_cni_handler_class(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class CniRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:  # unix sockets have no peer address
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("cni socket: " + format, *args)

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/cni":
                self._reply(404, {"error": f"unknown path {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length)) if length else {}
                env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
                stdin = base64.b64decode(request.get("stdin") or "")
            except (ValueError, TypeError) as e:
                self._reply(400, {"error": f"malformed shim request: {e}"})
                return
            code, out = agent.handler.handle(env, stdin)
            self._reply(200, shim_reply(code, out))

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            send(self, status, json.dumps(body).encode(), "application/json")

    return CniRequestHandler


def _make_health_handler_class(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("metrics: " + format, *args)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                reason = agent.network.ready_reason
                self._send(200 if reason is None else 503, (b"ok\n" if reason is None else reason.encode() + b"\n"),
                           "text/plain")
            elif self.path == "/metrics":
                self._send(200, agent.registry.render(), CONTENT_TYPE)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            send(self, code, body, ctype)

    return HealthHandler


# -- the agent ---------------------------------------------------------------------------------------


class Agent:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.node_name: str = args.node_name
        self.registry = Registry()
        self.network = NodeNetwork(mtu=args.mtu or 1450)
        self.datapath = KernelDatapath()
        self.handler = CniHandler(self.datapath, self.network, self.registry,
                                  teardown_journal=SpoolJournal(self.spool_dir()),
                                  teardown_workers=args.teardown_workers)
        self.stopping = threading.Event()
        self._resync = threading.Event()
        self.overlay: VxlanOverlay | None = None
        self.pod_cidr: str | None = None
        self._peers = 0
        # `--proxy iptables`: the service proxy hosted here (netplane.proxy.main); built now so
        # that bad proxy flags fail before the agent touches anything.
        self.proxy = None
        if args.proxy != "none":
            from netplane.proxy.main import hosted

            self.proxy = hosted(args)
        Gauge(self.registry, "netplane_ipam_allocated", "Pod IPs in use on this node", fn=self._ipam_used)
        Gauge(self.registry, "netplane_ipam_capacity", "Pod IPs this node can hand out", fn=self._ipam_capacity)
        Gauge(self.registry, "netplane_overlay_peers", "Remote nodes programmed in the VXLAN overlay",
              fn=lambda: [((), self._peers)])
        Gauge(self.registry, "netplane_overlay_fastpath_pods", "Pods of this node on the overlay fast path",
              fn=lambda: [((), len(self.datapath.fastpath.pods()))] if self.datapath.fastpath else [])
        CounterFunc(self.registry, "netplane_overlay_fastpath_packets_total",
              "Packets the overlay fast path looked at since the agent started, by what happened: "
              "to_overlay / from_overlay (forwarded); left to the normal path: conntracked (a known "
              "connection), lookup_failed (conntrack could not be asked), not_from_pod (a foreign source)",
              ("what",), fn=self._fastpath_stats)

    def _fastpath_stats(self):
        fastpath = self.datapath.fastpath
        return [((k,), v) for k, v in fastpath.stats().items()] if fastpath else []

    def _ipam_used(self):
        return [((), self.network.ipam.usage()[0])] if self.network.ipam else []

    def _ipam_capacity(self):
        return [((), self.network.ipam.usage()[1])] if self.network.ipam else []

    # -- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        # SIGTERM also wakes the reconcile loop now, not at the next 30 s resync.
        signals.stop_on_signals(self.stopping, self._resync)
        self._start_servers()
        self.client = Client(load_config(self.args.kubeconfig))
        self.nodes = Informer(self.client, "/api/v1/nodes", Node.from_dict, name="agent-nodes")
        self.nodes.add_handler(on_add=lambda n: self._resync.set(), on_update=lambda a, b: self._resync.set(),
                               on_delete=lambda n: self._resync.set())
        self.nodes.start()
        try:
            self._bring_up()
            log.info("agent ready on node %s: podCIDR %s, MTU %d, VTEP %s", self.node_name, self.pod_cidr,
                     self.network.mtu, self.overlay.mac if self.overlay else "-")
            if self.proxy is not None:
                self.proxy.start(self.client)
            while not self.stopping.is_set():
                self._reconcile()
                signals.wait(self._resync, RESYNC_SECONDS)
                self._resync.clear()
        finally:
            if self.proxy is not None:
                self.proxy.stop()  # also undoes a start() that failed half-way; a no-op if never started
            self.nodes.stop()
            for srv in self._servers:
                srv.shutdown()
                srv.server_close()
            if not self.handler.drain_teardowns(TEARDOWN_DRAIN_SECONDS):
                log.warning("stopping with DEL teardowns still running; they are replayed at the next start")
            fastpath, self.datapath.fastpath = self.datapath.fastpath, None
            if fastpath is not None:
                fastpath.close()  # the node forwards normally until the next agent
            try:
                os.unlink(self.args.socket)
            except OSError:
                pass
        return 0

    def _start_servers(self) -> None:
        sock = self.args.socket
        os.makedirs(os.path.dirname(sock) or ".", mode=0o700, exist_ok=True)
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)  # the socket is root-only from the moment it exists
        try:
            cni_server = _UnixHTTPServer(sock, _make_cni_handler_class(self))
        finally:
            os.umask(old_umask)
        host, _, port = self.args.metrics_addr.rpartition(":")
        health = LocalHTTPServer((host or "0.0.0.0", int(port)), _make_health_handler_class(self))
        self._servers = [cni_server, health]
        for srv in self._servers:
            threading.Thread(target=srv.serve_forever, daemon=True, name=f"agent-{type(srv).__name__}").start()
        log.info("CNI socket %s, health and metrics on %s", sock, self.args.metrics_addr)

    def _wait(self, what: str, check, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stopping.is_set():
            value = check()
            if value:
                return value
            self.network.ready_reason = what
            if deadline is not None and time.monotonic() > deadline:
                raise NetplaneError(f"timed out: {what}")
            time.sleep(0.2)
        raise NetplaneError("stopped")

    def _bring_up(self) -> None:
        self._wait("waiting for the Node informer to sync", self.nodes.has_synced)
        node = self._wait(f"waiting for node {self.node_name} to have a podCIDR",
                          lambda: (n := self.nodes.get(self.node_name)) is not None and n.pod_cidrs and n)
        ipv4 = [c for c in node.pod_cidrs if ":" not in c]
        if not ipv4:
            raise ConfigError(f"node {self.node_name} has no IPv4 podCIDR ({node.pod_cidrs}); the overlay is IPv4-only")
        self.pod_cidr = ipv4[0]
        node_ip = self.args.node_ip or node.address("InternalIP")
        if not node_ip:
            raise ConfigError(f"node {self.node_name} has no InternalIP address; pass --node-ip")
        underlay_mtu = _interface_mtu(node_ip)
        self.network.mtu = self.args.mtu or underlay_mtu - 50
        cidr_dir = self.pod_cidr.replace("/", "_")
        self.network.ipam = IpamStore(os.path.join(self.args.state_dir, "ipam", cidr_dir), self.pod_cidr)
        self.overlay = VxlanOverlay(vni=self.args.vni, port=self.args.vxlan_port, mtu=underlay_mtu - 50,
                                    local_ip=node_ip, pod_cidr=self.pod_cidr)
        # Reuse the MAC we published before a restart, so peers' neighbour/FDB entries stay valid
        # (a missing or corrupt annotation gives a fresh MAC).
        mac = self.overlay.ensure_device(own_vtep_mac(node))
        self.node_ip = node_ip
        self._publish_annotations(mac, node_ip)
        self._program_masquerade()
        wired = wiring.list_wired()  # host veth → pod IP: the pods that survived our restart
        self._reconcile_ipam_with_pods(wired)
        self._start_fastpath(wired)
        # The overlay is programmed before the first ADD is served: a pod is only handed out once
        # it can reach the other nodes' pods.
        self._reconcile()
        self.network.ready_reason = None

    def _publish_annotations(self, mac: str, node_ip: str) -> None:
        patch = {"metadata": {"annotations": node_annotations(mac, node_ip)}}
        for attempt in range(10):
            try:
                self.client.patch(f"/api/v1/nodes/{self.node_name}/status", patch, patch_type="merge")
                return
            except NetplaneError as e:
                log.warning("publishing VTEP annotations on node %s (attempt %d): %s", self.node_name, attempt + 1, e)
                time.sleep(1)
        raise NetplaneError(f"could not annotate node {self.node_name} with its VTEP")

    def _program_masquerade(self) -> None:
        """Node rules, in chains netplane owns (refilled atomically on every start):
        - nat: pod traffic leaving the cluster CIDR is masqueraded to the node; pod↔pod never is;
        - raw: the overlay's outer UDP packets skip conntrack. Tracking them buys nothing (they are
          never NATed or filtered by state) and costs CPU on every encapsulated packet."""
        port = self.args.vxlan_port
        rules = (f"*nat\n:{MASQ_CHAIN} - [0:0]\n"
                 f"-A {MASQ_CHAIN} -s {self.pod_cidr} -d {self.args.cluster_cidr} -j RETURN\n"
                 f"-A {MASQ_CHAIN} -s {self.pod_cidr} ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n"
                 f"*raw\n:{NOTRACK_CHAIN} - [0:0]\n"
                 f"-A {NOTRACK_CHAIN} -p udp --dport {port} -j NOTRACK\nCOMMIT\n")
        _iptables_restore(rules)
        for table, hook, chain in (("nat", "POSTROUTING", MASQ_CHAIN), ("raw", "PREROUTING", NOTRACK_CHAIN),
                                   ("raw", "OUTPUT", NOTRACK_CHAIN)):
            present = subprocess.run(["iptables", "-w", "5", "-t", table, "-C", hook, "-j", chain],
                                     capture_output=True).returncode == 0
            if not present:
                _iptables_restore(f"*{table}\n-A {hook} -j {chain}\nCOMMIT\n")

    def _start_fastpath(self, wired: dict[str, str | None]) -> None:
        """Load the overlay fast path (--overlay-fastpath), attach it to the vxlan device and to
        the pods already wired. `auto`: without it (no BPF object, an older kernel), log why and
        forward normally; `on`: refuse to start."""
        if self.args.overlay_fastpath == "off":
            return
        assert self.overlay is not None
        try:
            fastpath = OverlayFastPath()
            try:
                fastpath.attach_overlay(self.overlay.device)
                for host, ip in wired.items():
                    if ip:
                        fastpath.propose_pod(ip, host)
            except BaseException:
                fastpath.close()
                raise
        except (BpfError, OSError) as e:
            if self.args.overlay_fastpath == "on":
                raise ConfigError(f"--overlay-fastpath on: {e}") from e
            log.warning("overlay fast path unavailable, forwarding through the node: %s", e)
            return
        self.datapath.fastpath = fastpath
        threading.Thread(target=self._admit_fastpath_pods, args=(fastpath,), daemon=True,
                         name="fastpath-admit").start()
        log.info("overlay fast path attached to %s", self.overlay.device)

    def _admit_fastpath_pods(self, fastpath: OverlayFastPath) -> None:
        while not self.stopping.wait(FASTPATH_ADMIT_INTERVAL):
            if self.datapath.fastpath is not fastpath:
                return
            try:
                fastpath.admit_due()
            except (BpfError, OSError) as e:  # those pods stay on the normal path
                log.warning("overlay fast path: admitting pods: %s", e)

    def _reconcile_ipam_with_pods(self, wired: dict[str, str | None]) -> None:
        """Start-up: an IP whose pod wiring is gone (pod deleted while we were down) is released,
        and so is every file that is not a readable reservation (a crashed writer's temp file, or
        what a power loss left if the state is on a disk)."""
        assert self.network.ipam is not None
        valid = {(a.container_id, a.ifname) for a in self.network.ipam.allocations()
                 if wiring.host_veth_name(a.container_id, a.ifname) in wired}
        for alloc in self.network.ipam.gc(valid):
            log.info("released %s of %s/%s: its pod is gone", alloc.ip, alloc.container_id, alloc.ifname)

    def spool_dir(self) -> str:
        """Pending DELs: the shim's while we are unreachable, ours until their teardown is done."""
        return os.environ.get("NETPLANE_CNI_SPOOL") or os.path.join(os.path.dirname(self.args.socket),
                                                                    "cni-pending-del")

    def _replay_pending_deletes(self) -> None:
        """DELs the shim recorded while we were unreachable, and deferred ones a crash (or a
        failed teardown) left behind (same directory rule as the shim)."""
        spool = self.spool_dir()
        if not os.path.isdir(spool):
            return
        for entry in sorted(os.listdir(spool)):
            if entry.startswith(".tmp."):  # the shim's write in progress (or a crashed one)
                continue
            path = os.path.join(spool, entry)
            try:
                with open(path, "rb") as f:
                    req = parse_spooled_del(f.read())
                recorded_at = os.stat(path).st_mtime
                if self.handler.teardown_pending(req.container_id, req.ifname):
                    continue  # ours, its worker is on it
                outcome = self.handler.replay_delete(req, recorded_at, lambda: os.path.exists(path))
                if outcome == "gone":
                    continue
                if outcome == "stale":
                    log.info("dropping a stale pending DEL for %s/%s (re-added since)", req.container_id, req.ifname)
                else:
                    log.info("replayed a DEL recorded while the agent was unreachable: %s/%s",
                             req.container_id, req.ifname)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            except FileNotFoundError:
                continue  # finished by its own teardown while we looked
            except (OSError, ValueError, CniError) as e:
                log.warning("pending DEL %s: %s", path, e)

    @staticmethod
    def _fastpath_call(fn, *args, **kwargs) -> None:
        """The fast path is optional: its errors are logged, never the end of a reconcile."""
        try:
            fn(*args, **kwargs)
        except (BpfError, OSError) as e:
            log.warning("overlay fast path: %s (the normal path carries what it misses)", e)

    def _reconcile(self) -> None:
        assert self.overlay is not None
        try:
            mac = self.overlay.ensure_device(self.overlay.mac)
            fastpath = self.datapath.fastpath
            if fastpath is not None:  # again if the device was re-created (a no-op otherwise)
                self._fastpath_call(fastpath.attach_overlay, self.overlay.device)
            me = self.nodes.get(self.node_name)
            wanted = node_annotations(mac, self.node_ip)
            if me is not None and any(dict(me.annotations).get(k) != v for k, v in wanted.items()):
                # Our Node was re-created or edited: peers find us only through these annotations.
                self._publish_annotations(mac, self.node_ip)
            peers = compute_peers(self.nodes.list(), self.node_name)
            remote_cidrs = {p.pod_cidr: p.vtep_mac for p in peers}
            # The fast path only shortcuts the overlay's routes: it loses a peer before its
            # routes go, and gets one after they are there.
            if fastpath is not None:
                self._fastpath_call(fastpath.set_remote_cidrs, remote_cidrs, add=False)
            self.overlay.sync(peers)
            self._peers = len(peers)
            if fastpath is not None:
                self._fastpath_call(fastpath.set_remote_cidrs, remote_cidrs)
                self._fastpath_call(fastpath.recheck)
        except NetplaneError as e:
            log.warning("overlay reconcile: %s", e)
        self._replay_pending_deletes()


def _iptables_restore(rules: str) -> None:
    proc = subprocess.run(["iptables-restore", "-w", "5", "--noflush"], input=rules, text=True, capture_output=True)
    if proc.returncode != 0:
        raise NetplaneError(f"iptables-restore: {proc.stderr.strip()} (rules: {rules.splitlines()[:3]}...)")


def _interface_mtu(ip: str) -> int:
    """MTU of the interface that holds `ip` (the underlay), read with pyroute2."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for addr in ipr.get_addr(address=ip):
            links = ipr.get_links(addr["index"])
            if links:
                return int(links[0].get("IFLA_MTU") or links[0].get_attr("IFLA_MTU"))
    raise ConfigError(f"no interface in this namespace holds the node IP {ip}")


def run(args: argparse.Namespace) -> int:
    try:
        ipaddress.ip_network(args.cluster_cidr)
    except ValueError as e:
        raise ConfigError(f"--cluster-cidr {args.cluster_cidr!r}: {e}") from None
    return Agent(args).run()
