"""The overlay fast path (ebpf/overlay_fastpath.bpf.c) as the CNI agent drives it.

The agent owns one `OverlayFastPath` per node: `attach_overlay` once the vxlan device exists,
`propose_pod` after each ADD's wiring (admitted a second later by `admit_due`, once chained
plugins are done: a pod whose host veth has traffic-shaping qdiscs stays on the normal path),
`remove_veth` before a DEL's teardown, `set_remote_cidrs` around each overlay sync, `recheck`
on each resync. The maps mirror the agent's own state (its pods, the overlay's peers);
anything missing from them simply takes the node's normal forwarding path, so an empty or stale
map can slow traffic down but never misroute it beyond what the overlay's own routes would.

The programs are attached through tcx links held open by this process: when the agent exits,
for whatever reason, the kernel detaches them and the node forwards normally until the next
agent attaches them again.

Map entries are built by the pure `encode_*` functions (tested without root); the class is the
side-effect layer (libbpf, netlink).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from netplane.cni.rtnl import Rtnl
from netplane.ebpf import object_path
from netplane.ebpf.libbpf import BpfError, BpfObject, possible_cpus, tcx_attach_ingress

log = logging.getLogger(__name__)

OBJECT = "overlay_fastpath"
STATS = ("to_overlay", "from_overlay", "conntracked", "lookup_failed", "not_from_pod")  # enum stat (C)
# Chained plugins (tuning, bandwidth, portmap) run right after netplane's ADD returns; the pod's
# containers start after the whole chain. A pod is admitted this long after its ADD.
ADMIT_AFTER_SECONDS = 1.0
RECHECK_RECENT_SECONDS = 10.0  # admitted pods are looked at again on each admission tick this long
NORMAL_QDISCS = {"noqueue", ""}  # a veth's default; tcx needs no qdisc


def _shaping(kinds: list[str]) -> list[str]:
    return sorted(set(kinds) - NORMAL_QDISCS)


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def encode_local_pod(ip: str, host_ifindex: int, pod_mac: str, host_mac: str) -> tuple[bytes, bytes]:
    """(key, value) of np_local_pods: pod IPv4 → its host veth, the pod's MAC, the veth's MAC."""
    return socket.inet_aton(ip), struct.pack("=I6s6s", host_ifindex, _mac(pod_mac), _mac(host_mac))


def encode_remote_cidr(cidr: str) -> bytes:
    """Key of np_remote_cidrs (an LPM trie): prefix length, then the network in network order."""
    net = ipaddress.IPv4Network(cidr)
    return struct.pack("=I", net.prefixlen) + net.network_address.packed


def encode_remote_node(vtep_mac: str) -> bytes:
    return struct.pack("=6s2x", _mac(vtep_mac))


def encode_overlay_dev(ifindex: int, mac: str) -> bytes:
    return struct.pack("=I6s2x", ifindex, _mac(mac))


class OverlayFastPath:
    def __init__(self, path: str | Path | None = None) -> None:
        self._obj = BpfObject(path or object_path(OBJECT))
        try:
            self._from_pod = self._obj.program_fd("np_from_pod")
            self._from_overlay = self._obj.program_fd("np_from_overlay")
            self._pods_map = self._obj.map("np_local_pods")
            self._cidrs_map = self._obj.map("np_remote_cidrs")
            self._dev_map = self._obj.map("np_overlay_dev")
            self._stats_map = self._obj.map("np_stats")
            self._cpus = possible_cpus()
        except BaseException:
            self._obj.close()
            raise
        # ADDs (HTTP threads), teardown workers, the admission thread and the reconcile loop all
        # come here; netlink reads happen outside the lock, decisions are committed under it.
        self._lock = threading.Lock()
        self._closed = False
        self._links: dict[str, int] = {}  # interface → tcx link fd
        self._overlay: tuple[int, str] | None = None  # the vxlan device's (ifindex, MAC)
        self._pods: dict[str, str] = {}  # admitted: pod IP → host veth
        self._admitted_at: dict[str, float] = {}
        self._pending: dict[str, tuple[str, float]] = {}  # proposed: pod IP → (host veth, when)
        self._cidrs: dict[str, str] = {}  # remote podCIDR → VTEP MAC

    def attach_overlay(self, vxlan_ifname: str) -> None:
        """Attach to the vxlan device, or again when it was re-created (new ifindex or MAC: the
        agent's resync re-creates a device that is missing or differs from what it wants)."""
        with Rtnl.open() as nl:
            link = nl.get_link(vxlan_ifname)
        if link is None:
            raise BpfError(f"overlay fast path: no interface {vxlan_ifname}")
        with self._lock:
            if self._closed or self._overlay == (link.index, link.mac):
                return
            self._dev_map.update(struct.pack("=I", 0), encode_overlay_dev(link.index, link.mac))
            self._attach(vxlan_ifname, link.index, self._from_overlay)
            self._overlay = (link.index, link.mac)

    def propose_pod(self, ip: str, host_ifname: str) -> None:
        """A pod was wired (ADD, or found at start-up): admit it once the chained plugins are done
        with its interfaces (ADMIT_AFTER_SECONDS), see `admit_due`. Until then it is on the
        normal path, which is always right."""
        with self._lock:
            self._pending[ip] = (host_ifname, time.monotonic())

    def admit_due(self) -> None:
        """Admit the pods proposed at least ADMIT_AFTER_SECONDS ago, and look again at those
        admitted in the last RECHECK_RECENT_SECONDS (a chained plugin slower than the admission
        delay, on a loaded node). The agent calls this a few times a second."""
        now = time.monotonic()
        with self._lock:
            due = [(ip, host) for ip, (host, t) in self._pending.items() if now - t >= ADMIT_AFTER_SECONDS]
            recent = [ip for ip, t in self._admitted_at.items() if now - t <= RECHECK_RECENT_SECONDS]
        for ip, host in due:
            try:
                self._admit(ip, host)
            except (BpfError, OSError) as e:  # this pod keeps the normal path; the others go on
                log.warning("overlay fast path: admitting pod %s on %s: %s; it keeps the normal path", ip, host, e)
                self._forget_proposal(ip, host)
        if recent:
            self.recheck(recent)

    def recheck(self, ips: list[str] | None = None) -> None:
        """Drop admitted pods (all, or `ips`) whose host veth has a qdisc now (traffic shaping
        added later); they stay on the normal path for good (until the agent restarts)."""
        with self._lock:
            pods = {ip: host for ip, host in self._pods.items() if ips is None or ip in ips}
        shaped = {}
        with Rtnl.open() as nl:
            for ip, host in pods.items():
                link = nl.get_link(host)
                shaping = _shaping(nl.qdisc_kinds(link.index)) if link else []
                if shaping:
                    shaped[ip] = (host, shaping)
        for ip, (host, shaping) in shaped.items():
            log.info("overlay fast path: pod %s on %s now has qdiscs %s: back to the normal path",
                     ip, host, ", ".join(shaping))
            with self._lock:
                if self._pods.get(ip) == host:
                    self._remove(ip)

    def _admit(self, ip: str, host_ifname: str) -> bool:
        with Rtnl.open() as nl:
            link = nl.get_link(host_ifname)
            # Read now, not from the ADD result: a chained `tuning` may have changed it.
            pod_mac = nl.peer_mac(host_ifname) if link else None
            shaping = _shaping(nl.qdisc_kinds(link.index)) if link else []
        with self._lock:
            if self._closed or self._pending.get(ip, ("",))[0] != host_ifname:
                return False  # the pod went (DEL) or its address went to another pod meanwhile
            del self._pending[ip]
            if link is None:
                return False
            if shaping:
                # The bandwidth plugin shapes with qdiscs on the host veth (ingress + ifb for what
                # the pod sends, tbf for what it receives); the fast path would pass around both.
                log.info("overlay fast path: pod %s on %s has qdiscs %s (traffic shaping): it keeps the "
                         "normal path", ip, host_ifname, ", ".join(shaping))
                return False
            if not pod_mac:
                log.warning("overlay fast path: pod %s on %s: its MAC cannot be read; it keeps the normal path",
                            ip, host_ifname)
                return False
            key, value = encode_local_pod(ip, link.index, pod_mac, link.mac)
            self._attach(host_ifname, link.index, self._from_pod)
            self._pods_map.update(key, value)
            self._pods[ip] = host_ifname
            self._admitted_at[ip] = time.monotonic()
        return True

    def _forget_proposal(self, ip: str, host_ifname: str) -> None:
        with self._lock:
            if self._pending.get(ip, ("",))[0] == host_ifname:
                del self._pending[ip]

    def remove_pod(self, ip: str) -> None:
        """Before the pod's veth goes: its address may go to a new pod next."""
        with self._lock:
            self._remove(ip)

    def remove_veth(self, host_ifname: str) -> None:
        with self._lock:
            ips = {ip for ip, host in self._pods.items() if host == host_ifname}
            ips |= {ip for ip, (host, _) in self._pending.items() if host == host_ifname}
            for ip in ips:
                self._remove(ip)

    def _remove(self, ip: str) -> None:
        self._pending.pop(ip, None)
        self._admitted_at.pop(ip, None)
        host = self._pods.pop(ip, None)
        if self._closed:
            return
        self._pods_map.delete(socket.inet_aton(ip))
        if host is not None:
            fd = self._links.pop(host, None)
            if fd is not None:
                os.close(fd)

    def set_remote_cidrs(self, wanted: Mapping[str, str], *, add: bool = True) -> None:
        """Make np_remote_cidrs hold exactly `wanted` (remote podCIDR → that node's VTEP MAC);
        with add=False only drop what `wanted` no longer has (or has with another MAC)."""
        with self._lock:
            if self._closed:
                return
            for cidr in [c for c, mac in self._cidrs.items() if wanted.get(c) != mac]:
                self._cidrs_map.delete(encode_remote_cidr(cidr))
                del self._cidrs[cidr]
            if not add:
                return
            for cidr, mac in wanted.items():
                if cidr not in self._cidrs:
                    self._cidrs_map.update(encode_remote_cidr(cidr), encode_remote_node(mac))
                    self._cidrs[cidr] = mac

    def pods(self) -> dict[str, str]:
        with self._lock:
            return dict(self._pods)

    def stats(self) -> dict[str, int]:
        """Packets per STATS counter, summed over CPUs."""
        out = {}
        for i, name in enumerate(STATS):
            raw = self._stats_map.lookup(struct.pack("=I", i), 8 * self._cpus) or b""
            out[name] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
        return out

    def close(self) -> None:
        """Detach everything (the node forwards normally again) and free the programs and maps."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in self._links.values():
                os.close(fd)
            self._links.clear()
            self._pods.clear()
            self._pending.clear()
            self._obj.close()

    def _attach(self, ifname: str, ifindex: int, prog_fd: int) -> None:
        old = self._links.pop(ifname, None)  # a veth name reused by a new pod: a new ifindex
        if old is not None:
            os.close(old)
        self._links[ifname] = tcx_attach_ingress(ifindex, prog_fd, f"overlay fast path on {ifname}")
