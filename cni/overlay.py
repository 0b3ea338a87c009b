"""The flannel-style VXLAN overlay: who the peers are (pure) and a reconciler that programs them.

Datapath (see README.md): one vxlan device ``np.vx<VNI>`` per node (UDP 8472, learning off)
holding ``<own podCIDR network address>/32``. For every remote node, in this order:

1. a permanent neighbour ``<remote podCIDR network address> lladdr <remote VTEP MAC>``,
2. an FDB entry ``<remote VTEP MAC> dst <remote node IP> self permanent``,
3. last, the route ``<remote podCIDR> via <remote network address> dev np.vx1 onlink proto 79``.

The route comes last so that traffic is never sent towards a peer whose neighbour or FDB entry
is missing; if a step fails, the steps already written for that peer are rolled back.

Split, as the style guide asks, into pure and effectful halves:

- pure: ``node_annotations`` (what a node publishes), ``compute_peers`` (Nodes → ``Peer``s),
  ``validate_peers`` and ``plan`` (desired peers + ``Observed`` kernel state → ``Plan``);
- effects: ``VxlanOverlay`` (pyroute2), which reads the kernel back on every ``sync`` and applies
  the plan. Unlike flannel (event driven, replace only) every sync is a full reconcile: it also
  removes neighbours, FDB entries and routes nobody wants any more, including the FDB entry of a
  peer's previous VTEP MAC, which flannel leaves behind (flannel#1330, #533, #1788).

Ownership: everything on the vxlan device belongs to netplane; routes are additionally marked
with protocol ``ROUTE_PROTO`` (79) and only routes with that protocol on the device are pruned.

Namespaces: ``VxlanOverlay(netns=None)`` works in the caller's namespace (the agent runs inside
its node's namespace); tests pass a namespace name or path and the class only ever opens
``IPRoute(netns=..., flags=0)`` sockets, so a mistyped name fails instead of creating a namespace
and the calling process never changes namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from netplane.errors import NetplaneError
from netplane.k8s.objects import Node, pairs_get

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_VNI",
    "NODE_IP_ANNOTATION",
    "ROUTE_PROTO",
    "VTEP_MAC_ANNOTATION",
    "VXLAN_OVERHEAD",
    "Observed",
    "OverlayError",
    "OverlaySyncError",
    "Peer",
    "PeerSteps",
    "Plan",
    "VxlanOverlay",
    "compute_peers",
    "device_name",
    "node_annotations",
    "normalize_mac",
    "own_vtep_mac",
    "plan",
    "validate_peers",
]

log = logging.getLogger(__name__)

VTEP_MAC_ANNOTATION = "netplane.io/vtep-mac"
NODE_IP_ANNOTATION = "netplane.io/node-ip"
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # Linux's VXLAN port (flannel's default), not IANA's 4789
# 14 inner Ethernet + 8 VXLAN + 8 UDP + 20 outer IPv4: the overlay MTU is underlay MTU - 50.
VXLAN_OVERHEAD = 50
# rtnetlink protocol number on every route netplane installs, so pruning touches only ours.
ROUTE_PROTO = 79

_MAIN_TABLE = 254
_RTNH_F_ONLINK = 4
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80
_NTF_SELF = 0x02
_IFNAMSIZ = 15
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Errnos meaning "already gone" when deleting.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


class OverlayError(NetplaneError):
    """The overlay cannot be set up: bad configuration, no underlay interface, netlink failure."""


class OverlaySyncError(OverlayError):
    """``sync`` applied what it could, but some kernel writes failed (listed in ``errors``).

    The failed peers were rolled back; the next sync retries them."""

    def __init__(self, errors: Iterable[str]):
        self.errors = tuple(errors)
        super().__init__(f"overlay sync: {len(self.errors)} error(s): " + "; ".join(self.errors))


# ------------------------------------------------------------------------------------ pure part


def normalize_mac(mac: str) -> str:
    """``mac`` as lower-case colon-separated octets; ValueError unless a usable VTEP MAC
    (six octets, unicast, not all zeros). Accepts ``-`` separators and upper case."""
    if not isinstance(mac, str):
        raise ValueError(f"MAC must be a string, got {type(mac).__name__}")
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise ValueError(f"{mac!r} is not a MAC address (want six hex octets, e.g. 02:42:ac:11:00:02)")
    if int(m[:2], 16) & 0x01:
        raise ValueError(f"{mac!r} is a multicast MAC, not a VTEP address")
    if m == "00:00:00:00:00:00":
        raise ValueError(f"{mac!r} is the all-zeros MAC")
    return m


def _ipv4(value: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP address") from None
    if ip.version != 4:
        raise ValueError(f"{what} {value!r} is not IPv4 (the overlay runs over an IPv4 underlay)")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip == _BROADCAST:
        raise ValueError(f"{what} {value!r} is not a unicast host address")
    return str(ip)


def _ipv4_net(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value.strip() if isinstance(value, str) else value, strict=False)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a CIDR") from None
    if net.version != 4:
        raise ValueError(f"{what} {value!r} is not IPv4")
    return net


def device_name(vni: int) -> str:
    """The default vxlan device name for a VNI: ``np.vx<VNI>`` (at most 13 characters)."""
    return f"np.vx{vni}"


def node_annotations(mac: str, node_ip: str) -> dict[str, str]:
    """The annotations a node publishes for its VTEP (ValueError on a bad MAC or IP)."""
    return {VTEP_MAC_ANNOTATION: normalize_mac(mac), NODE_IP_ANNOTATION: _ipv4(node_ip, "node IP")}


def own_vtep_mac(node: Node) -> str | None:
    """The VTEP MAC this node published earlier (to reuse after an agent restart), or None
    when the annotation is missing or invalid."""
    raw = pairs_get(node.annotations, VTEP_MAC_ANNOTATION)
    if raw is None:
        return None
    try:
        return normalize_mac(raw)
    except ValueError as e:
        log.warning("node %s: ignoring own %s: %s", node.name, VTEP_MAC_ANNOTATION, e)
        return None


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote node's VTEP: where its pod CIDR lives on the overlay and on the underlay."""

    node: str
    node_ip: str  # underlay IPv4 address, the FDB destination
    pod_cidr: str  # canonical IPv4 network, e.g. "10.244.2.0/24"
    vtep_mac: str  # normalized, e.g. "0a:58:0a:f4:02:00"

    @property
    def gateway(self) -> str:
        """The remote podCIDR's network address: neighbour key and route next hop (10.244.2.0)."""
        return str(ipaddress.ip_network(self.pod_cidr, strict=False).network_address)


class _NotYet(ValueError):
    """The node lacks something it will normally get soon (podCIDR, annotations)."""


def _peer_from_node(node: Node) -> Peer:
    """A Peer for a node, or ValueError saying why the node cannot be one (``_NotYet`` when
    something is merely missing rather than wrong)."""
    cidr = None
    for raw in node.pod_cidrs:
        try:
            cidr = _ipv4_net(raw, "podCIDR")
            break
        except ValueError:
            continue
    if cidr is None:
        raise _NotYet(f"no IPv4 podCIDR (podCIDRs={list(node.pod_cidrs)})")
    raw_mac = pairs_get(node.annotations, VTEP_MAC_ANNOTATION)
    if raw_mac is None:
        raise _NotYet(f"no {VTEP_MAC_ANNOTATION} annotation yet")
    try:
        mac = normalize_mac(raw_mac)
    except ValueError as e:
        raise ValueError(f"bad {VTEP_MAC_ANNOTATION}: {e}") from None
    raw_ip = pairs_get(node.annotations, NODE_IP_ANNOTATION)
    if raw_ip is not None:
        try:
            node_ip = _ipv4(raw_ip, NODE_IP_ANNOTATION)
        except ValueError as e:
            raise ValueError(f"bad {NODE_IP_ANNOTATION}: {e}") from None
    else:
        node_ip = None
        for t, address in node.addresses:
            if t != "InternalIP":
                continue
            try:
                node_ip = _ipv4(address, "InternalIP")
                break
            except ValueError:
                continue
        if node_ip is None:
            raise _NotYet(f"no {NODE_IP_ANNOTATION} annotation and no IPv4 InternalIP")
    return Peer(node=node.name, node_ip=node_ip, pod_cidr=str(cidr), vtep_mac=mac)


def compute_peers(nodes: Iterable[Node], self_name: str) -> list[Peer]:
    """The overlay peers of node ``self_name``, sorted by node name.

    Skipped, with a log line saying why: the node itself; nodes without an IPv4 podCIDR; nodes
    without a (valid) ``netplane.io/vtep-mac``; nodes whose ``netplane.io/node-ip`` is invalid
    (the node IP is that annotation, else the node's first IPv4 InternalIP); and nodes that
    conflict with this node or an earlier peer (see ``validate_peers``)."""
    own_cidr: str | None = None
    candidates: list[Peer] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == self_name:
            own_cidr = next((c for c in node.pod_cidrs if _is_ipv4_net(c)), None)
            continue
        try:
            candidates.append(_peer_from_node(node))
        except ValueError as e:
            # Missing data is normal while a node joins (and resyncs repeat this): debug only.
            level = logging.DEBUG if isinstance(e, _NotYet) else logging.WARNING
            log.log(level, "overlay: node %s is not a peer: %s", node.name, e)
    valid, skipped = validate_peers(candidates, own_cidr)
    for reason in skipped:
        log.warning("overlay: %s", reason)
    return valid


def _is_ipv4_net(value: str) -> bool:
    try:
        _ipv4_net(value, "podCIDR")
    except ValueError:
        return False
    return True


def validate_peers(peers: Iterable[Peer], own_pod_cidr: str | None = None,
                   own_mac: str | None = None) -> tuple[list[Peer], list[str]]:
    """Split peers into (usable, reasons for the others), keeping the first by node name.

    A peer is unusable when a field is malformed, when its podCIDR overlaps ours or an earlier
    peer's (two routes for one range), or when its VTEP MAC equals ours or an earlier peer's (one
    FDB entry cannot point at two nodes)."""
    valid: list[Peer] = []
    skipped: list[str] = []
    own = _ipv4_net(own_pod_cidr, "own podCIDR") if own_pod_cidr else None
    nets: list[tuple[ipaddress.IPv4Network, str]] = []
    macs: dict[str, str] = {}
    names: set[str] = set()
    for p in sorted(peers, key=lambda p: (p.node, p.pod_cidr)):
        try:
            net = _ipv4_net(p.pod_cidr, "podCIDR")
            mac = normalize_mac(p.vtep_mac)
            node_ip = _ipv4(p.node_ip, "node IP")
        except ValueError as e:
            skipped.append(f"peer {p.node}: {e}")
            continue
        if p.node in names:
            skipped.append(f"peer {p.node}: listed twice")
            continue
        if own is not None and net.overlaps(own):
            skipped.append(f"peer {p.node}: podCIDR {net} overlaps this node's {own}")
            continue
        clash = next((name for other, name in nets if net.overlaps(other)), None)
        if clash is not None:
            skipped.append(f"peer {p.node}: podCIDR {net} overlaps peer {clash}'s")
            continue
        if own_mac is not None and mac == own_mac:
            skipped.append(f"peer {p.node}: VTEP MAC {mac} is this node's own")
            continue
        if mac in macs:
            skipped.append(f"peer {p.node}: VTEP MAC {mac} already used by peer {macs[mac]}")
            continue
        names.add(p.node)
        nets.append((net, p.node))
        macs[mac] = p.node
        valid.append(Peer(node=p.node, node_ip=node_ip, pod_cidr=str(net), vtep_mac=mac))
    return valid, skipped


@dataclass(frozen=True)
class Observed:
    """What the kernel holds on the vxlan device, as read back by ``VxlanOverlay.observe``.

    - ``neighbours``: IPv4 neighbour → its MAC when the entry is permanent, None for any other
      entry (incomplete, failed, learned, or permanent without an address);
    - ``fdb``: unicast FDB remotes as (MAC, destination IP);
    - ``routes``: netplane-owned routes (protocol ``ROUTE_PROTO``) through the device,
      destination CIDR → gateway when it is an onlink route via a gateway, else None.
    """

    neighbours: Mapping[str, str | None] = field(default_factory=dict)
    fdb: frozenset[tuple[str, str]] = frozenset()
    routes: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerSteps:
    """The writes one peer needs, done in this order with replace semantics."""

    peer: Peer
    neighbour: bool
    fdb: bool
    route: bool


@dataclass(frozen=True)
class Plan:
    """``replace``: peers to (re)program; then removals, in route → FDB → neighbour order."""

    replace: tuple[PeerSteps, ...] = ()
    remove_routes: tuple[str, ...] = ()
    remove_fdb: tuple[tuple[str, str], ...] = ()
    remove_neighbours: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.replace or self.remove_routes or self.remove_fdb or self.remove_neighbours)

    @property
    def writes(self) -> int:
        """How many netlink writes applying this plan takes when nothing fails."""
        steps = sum(s.neighbour + s.fdb + s.route for s in self.replace)
        return steps + len(self.remove_routes) + len(self.remove_fdb) + len(self.remove_neighbours)


def plan(desired_peers: Iterable[Peer], observed: Observed) -> Plan:
    """The writes that turn ``observed`` into exactly ``desired_peers`` (already validated).

    A peer is reprogrammed only in the steps that differ, so a converged state plans nothing.
    Anything on the device that no desired peer accounts for is removed: neighbours of removed
    peers and stale or non-permanent ones, the FDB entry of a MAC a peer no longer has or a
    destination it moved away from, and our routes for ranges no peer owns."""
    peers = sorted(desired_peers, key=lambda p: p.node)
    replace = []
    for p in peers:
        steps = PeerSteps(
            peer=p,
            neighbour=observed.neighbours.get(p.gateway, "") != p.vtep_mac,
            fdb=(p.vtep_mac, p.node_ip) not in observed.fdb,
            route=observed.routes.get(p.pod_cidr, "") != p.gateway,
        )
        if steps.neighbour or steps.fdb or steps.route:
            replace.append(steps)
    want_neigh = {p.gateway for p in peers}
    want_fdb = {(p.vtep_mac, p.node_ip) for p in peers}
    want_routes = {p.pod_cidr for p in peers}
    return Plan(
        replace=tuple(replace),
        remove_routes=tuple(sorted(set(observed.routes) - want_routes, key=_net_key)),
        remove_fdb=tuple(sorted(observed.fdb - want_fdb)),
        remove_neighbours=tuple(sorted(set(observed.neighbours) - want_neigh, key=_ip_key)),
    )


def _ip_key(ip: str) -> Any:
    try:
        return (0, ipaddress.ip_address(ip))
    except ValueError:
        return (1, ip)


def _net_key(cidr: str) -> Any:
    try:
        return (0, ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        return (1, cidr)


# ------------------------------------------------------------------------------------- effects


def _is_gone(e: BaseException) -> bool:
    return getattr(e, "code", None) in _GONE or getattr(e, "errno", None) in _GONE


class VxlanOverlay:
    """Owns the node's vxlan device and everything on it.

    ``ensure_device`` creates or repairs the device; ``sync(peers)`` reads neighbours, FDB and
    routes back from the kernel and applies ``plan`` (a full reconcile: call it periodically as
    well as on Node events); ``teardown`` deletes the device. After a sync, ``last_sync_changes``
    is the number of successful netlink writes (0 once converged), ``last_sync_errors`` the
    failed steps and ``last_sync_skipped`` the peers rejected by ``validate_peers``.
    """

    def __init__(self, *, vni: int = DEFAULT_VNI, port: int = DEFAULT_PORT, mtu: int,
                 local_ip: str, pod_cidr: str, device: str | None = None,
                 netns: str | None = None):
        if not isinstance(vni, int) or not 1 <= vni <= 0xFFFFFF:
            raise ValueError(f"vni {vni!r} must be 1..16777215")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port {port!r} must be 1..65535")
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu!r} must be 68..65535")
        self.vni = vni
        self.port = port
        self.mtu = mtu
        self.local_ip = _ipv4(local_ip, "local_ip")
        self.pod_cidr = str(_ipv4_net(pod_cidr, "pod_cidr"))
        self.device = device or device_name(vni)
        if len(self.device) > _IFNAMSIZ or not self.device or "/" in self.device:
            raise ValueError(f"device name {self.device!r} is not a valid interface name")
        self.netns = netns
        self.address = str(ipaddress.ip_network(self.pod_cidr).network_address)
        self.last_sync_changes = 0
        self.last_sync_errors: tuple[str, ...] = ()
        self.last_sync_skipped: tuple[str, ...] = ()
        self.last_ensure_changes = 0
        self.mac: str | None = None  # the VTEP MAC in use, once ensure_device has run
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"VxlanOverlay(device={self.device!r}, vni={self.vni}, port={self.port}, "
                f"local_ip={self.local_ip!r}, pod_cidr={self.pod_cidr!r}, netns={self.netns!r})")

    # -- netlink plumbing

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        from pyroute2 import IPRoute

        try:
            # flags=0: never create a namespace because of a typo (pyroute2 defaults to O_CREAT).
            ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        except OSError as e:
            where = f"network namespace {self.netns!r}" if self.netns else "this namespace"
            raise OverlayError(f"cannot open netlink in {where}: {e}") from e
        try:
            yield ipr
        finally:
            ipr.close()

    def _index(self, ipr: Any) -> int | None:
        found = ipr.link_lookup(ifname=self.device)
        return found[0] if found else None

    def _underlay_index(self, ipr: Any) -> int:
        for msg in ipr.addr("dump", family=socket.AF_INET):
            if msg.get("IFA_ADDRESS") == self.local_ip or msg.get("IFA_LOCAL") == self.local_ip:
                return msg["index"]
        raise OverlayError(f"no interface holds local_ip {self.local_ip} (the underlay address)"
                           + (f" in network namespace {self.netns!r}" if self.netns else ""))

    def _incompatible(self, link: Any, underlay: int) -> str | None:
        """Why an existing device of our name cannot be reused (flannel's vxlanLinksIncompat)."""
        info = link.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info else None
        if kind != "vxlan":
            return f"it is a {kind or 'non-vxlan'} device"
        data = info.get("IFLA_INFO_DATA")
        attrs = dict(data["attrs"]) if data is not None else {}
        checks = [
            ("VNI", attrs.get("IFLA_VXLAN_ID"), self.vni),
            ("port", attrs.get("IFLA_VXLAN_PORT"), self.port),
            ("local", attrs.get("IFLA_VXLAN_LOCAL"), self.local_ip),
            ("learning", bool(attrs.get("IFLA_VXLAN_LEARNING")), False),
            ("l2miss", bool(attrs.get("IFLA_VXLAN_L2MISS")), False),
            ("l3miss", bool(attrs.get("IFLA_VXLAN_L3MISS")), False),
            ("external", bool(attrs.get("IFLA_VXLAN_COLLECT_METADATA")), False),
        ]
        link_index = attrs.get("IFLA_VXLAN_LINK")
        if link_index:  # like flannel: only compared when the device has one
            checks.append(("dev", link_index, underlay))
        for name, have, want in checks:
            if have != want:
                return f"{name} is {have!r}, want {want!r}"
        return None

    # -- device

    def ensure_device(self, mac: str | None = None) -> str:
        """Create or repair the vxlan device; returns the VTEP MAC in use.

        An existing device of the same name is reused when its VNI, port, local address,
        learning and underlay device match, and is deleted and recreated otherwise. ``mac``
        (this node's published ``netplane.io/vtep-mac``, after an agent restart or a deleted
        device) is set on the device so that the peers' neighbour and FDB entries stay valid.
        MTU, the single ``<podCIDR network address>/32`` address and the up state are enforced;
        other IPv4 addresses on the device (an old podCIDR) are removed. The result is also kept
        in ``self.mac``. Raises ``OverlayError`` (also for an invalid ``mac``)."""
        try:
            want_mac = normalize_mac(mac) if mac is not None else None
        except ValueError as e:
            raise OverlayError(f"ensure_device({mac!r}): {e}") from None
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock, self._ipr() as ipr:
            changes = 0
            try:
                underlay = self._underlay_index(ipr)
                idx = self._index(ipr)
                if idx is not None:
                    reason = self._incompatible(ipr.link("get", index=idx)[0], underlay)
                    if reason:
                        log.warning("overlay: recreating %s: %s", self.device, reason)
                        ipr.link("del", index=idx)
                        changes += 1
                        idx = None
                if idx is None:
                    spec: dict[str, Any] = dict(
                        ifname=self.device, kind="vxlan", vxlan_id=self.vni, vxlan_port=self.port,
                        vxlan_local=self.local_ip, vxlan_learning=0, vxlan_link=underlay,
                        mtu=self.mtu)
                    if want_mac:
                        spec["address"] = want_mac
                    ipr.link("add", **spec)
                    changes += 1
                    idx = self._index(ipr)
                    if idx is None:
                        raise OverlayError(f"{self.device} vanished right after it was created")
                    log.info("overlay: created %s (vni %d, port %d, local %s, mtu %d)",
                             self.device, self.vni, self.port, self.local_ip, self.mtu)
                link = ipr.link("get", index=idx)[0]
                if link.get("IFLA_MTU") != self.mtu:
                    ipr.link("set", index=idx, mtu=self.mtu)
                    changes += 1
                if want_mac and link.get("IFLA_ADDRESS") != want_mac:
                    log.warning("overlay: %s has MAC %s, restoring the published %s",
                                self.device, link.get("IFLA_ADDRESS"), want_mac)
                    ipr.link("set", index=idx, address=want_mac)
                    changes += 1
                changes += self._ensure_address(ipr, idx)
                if not link["flags"] & 1:  # IFF_UP
                    ipr.link("set", index=idx, state="up")
                    changes += 1
                in_use = ipr.link("get", index=idx)[0].get("IFLA_ADDRESS")
                self.mac = in_use
            except NetlinkError as e:
                raise OverlayError(f"ensuring {self.device}: {e}") from e
            finally:
                self.last_ensure_changes = changes
            return in_use

    def _ensure_address(self, ipr: Any, idx: int) -> int:
        changes = 0
        have = False
        for msg in ipr.addr("dump", index=idx, family=socket.AF_INET):
            if msg["index"] != idx:
                continue
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if address == self.address and msg["prefixlen"] == 32:
                have = True
                continue
            log.info("overlay: removing stale address %s/%s from %s", address,
                     msg["prefixlen"], self.device)
            ipr.addr("del", index=idx, address=address, prefixlen=msg["prefixlen"])
            changes += 1
        if not have:
            ipr.addr("add", index=idx, address=self.address, prefixlen=32)
            changes += 1
        return changes

    def teardown(self) -> None:
        """Delete the device (its neighbours, FDB entries and routes go with it). Idempotent."""
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock, self._ipr() as ipr:
            idx = self._index(ipr)
            if idx is None:
                return
            try:
                ipr.link("del", index=idx)
            except NetlinkError as e:
                if not _is_gone(e):
                    raise OverlayError(f"deleting {self.device}: {e}") from e
            log.info("overlay: deleted %s", self.device)

    # -- peers

    def observe(self) -> Observed:
        """Neighbours, FDB remotes and netplane routes on the device, read from the kernel."""
        with self._ipr() as ipr:
            idx = self._index(ipr)
            if idx is None:
                raise OverlayError(f"{self.device} does not exist: call ensure_device() first")
            return self._observe(ipr, idx)

    def _observe(self, ipr: Any, idx: int) -> Observed:
        neighbours: dict[str, str | None] = {}
        for msg in ipr.neigh("dump", ifindex=idx, family=socket.AF_INET):
            if msg["ifindex"] != idx or msg["family"] != socket.AF_INET:
                continue
            dst = msg.get("NDA_DST")
            if not dst:
                continue
            lladdr = msg.get("NDA_LLADDR")
            permanent = bool(msg["state"] & _NUD_PERMANENT)
            neighbours[dst] = lladdr.lower() if (permanent and lladdr) else None
        fdb: set[tuple[str, str]] = set()
        for msg in ipr.fdb("dump", ifindex=idx):
            if msg["ifindex"] != idx:
                continue
            dst, lladdr = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
            if dst and lladdr:
                fdb.add((lladdr.lower(), dst))
        routes: dict[str, str | None] = {}
        for msg in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE):
            if msg["proto"] != ROUTE_PROTO or msg.get("RTA_OIF") != idx:
                continue
            table = msg.get("RTA_TABLE") or msg["table"]
            if table != _MAIN_TABLE:
                continue
            cidr = f"{msg.get('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"
            gateway = msg.get("RTA_GATEWAY")
            routes[cidr] = gateway if (gateway and msg["flags"] & _RTNH_F_ONLINK) else None
        return Observed(neighbours=neighbours, fdb=frozenset(fdb), routes=routes)

    def sync(self, peers: Iterable[Peer]) -> None:
        """Make the device's neighbours, FDB and routes exactly those of ``peers``.

        Per peer, neighbour → FDB → route with replace semantics, writing only what differs from
        the kernel; a failing step rolls back the steps written before it for that peer, and the
        other peers carry on. Then routes, FDB entries and neighbours nobody wants are removed.
        Raises ``OverlaySyncError`` at the end if any write failed (the runner retries)."""
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock, self._ipr() as ipr:
            idx = self._index(ipr)
            if idx is None:
                raise OverlayError(f"{self.device} does not exist: call ensure_device() first")
            own_mac = (ipr.link("get", index=idx)[0].get("IFLA_ADDRESS") or "").lower() or None
            desired, skipped = validate_peers(peers, self.pod_cidr, own_mac)
            for reason in skipped:
                log.warning("overlay: skipping %s", reason)
            todo = plan(desired, self._observe(ipr, idx))
            changes = 0
            errors: list[str] = []

            for steps in todo.replace:
                p = steps.peer
                done: list[str] = []
                step = ""
                try:
                    if steps.neighbour:
                        step = "neighbour"
                        ipr.neigh("replace", ifindex=idx, dst=p.gateway, lladdr=p.vtep_mac,
                                  state=_NUD_PERMANENT)
                        done.append(step)
                        changes += 1
                    if steps.fdb:
                        step = "fdb"
                        ipr.fdb("replace", ifindex=idx, lladdr=p.vtep_mac, dst=p.node_ip,
                                state=_NUD_PERMANENT | _NUD_NOARP, flags=_NTF_SELF)
                        done.append(step)
                        changes += 1
                    if steps.route:
                        step = "route"
                        ipr.route("replace", dst=p.pod_cidr, gateway=p.gateway, oif=idx,
                                  flags=_RTNH_F_ONLINK, proto=ROUTE_PROTO, table=_MAIN_TABLE)
                        done.append(step)
                        changes += 1
                    log.info("overlay: programmed peer %s (%s via %s, mac %s): %s", p.node,
                             p.pod_cidr, p.node_ip, p.vtep_mac, "+".join(done))
                except (NetlinkError, OSError) as e:
                    errors.append(f"peer {p.node}: {step} failed: {e}")
                    log.warning("overlay: peer %s: %s failed: %s; rolling back %s", p.node, step,
                                e, done or "nothing")
                    changes += self._rollback(ipr, idx, p, done, errors)

            for cidr in todo.remove_routes:
                changes += self._delete(errors, f"route {cidr}", lambda c=cidr: ipr.route(
                    "del", dst=c, oif=idx, proto=ROUTE_PROTO, table=_MAIN_TABLE))
            for mac, dst in todo.remove_fdb:
                changes += self._delete(errors, f"fdb {mac} dst {dst}", lambda m=mac, d=dst: ipr.fdb(
                    "del", ifindex=idx, lladdr=m, dst=d))
            for ip in todo.remove_neighbours:
                changes += self._delete(errors, f"neighbour {ip}", lambda i=ip: ipr.neigh(
                    "del", ifindex=idx, dst=i))

            self.last_sync_changes = changes
            self.last_sync_errors = tuple(errors)
            self.last_sync_skipped = tuple(skipped)
            if errors:
                raise OverlaySyncError(errors)

    def _rollback(self, ipr: Any, idx: int, p: Peer, done: list[str], errors: list[str]) -> int:
        undo = {
            "route": lambda: ipr.route("del", dst=p.pod_cidr, oif=idx, proto=ROUTE_PROTO,
                                       table=_MAIN_TABLE),
            "fdb": lambda: ipr.fdb("del", ifindex=idx, lladdr=p.vtep_mac, dst=p.node_ip),
            "neighbour": lambda: ipr.neigh("del", ifindex=idx, dst=p.gateway),
        }
        return sum(self._delete(errors, f"rollback of peer {p.node}'s {step}", undo[step])
                   for step in reversed(done))

    @staticmethod
    def _delete(errors: list[str], what: str, call: Any) -> int:
        """Run one delete; 1 if it removed something, 0 if already gone; errors recorded."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            call()
        except (NetlinkError, OSError) as e:
            if _is_gone(e):
                return 0
            errors.append(f"removing {what}: {e}")
            log.warning("overlay: removing %s failed: %s", what, e)
            return 0
        log.info("overlay: removed %s", what)
        return 1
