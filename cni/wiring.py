"""Pod wiring: the veth pair, addresses and routes of one pod, in the pod and node namespaces.

Datapath (ptp-style, see README.md)::

    pod netns                          node netns
    ifname (eth0) podIP/32   <-veth->  np<hash11>  gw/32 (noprefixroute), proxy_arp=0, forwarding=1
      gw/32 dev eth0 scope link          podIP/32 dev np<hash11> scope link proto 78 (netplane)
      default via gw dev eth0

The node namespace is explicit: every function takes ``node_netns`` (a name under /run/netns or a
path). ``None`` means the namespace this process runs in, which is what the agent uses (it runs
inside the node namespace). Namespaces are only ever opened as existing files, so a wrong name
is an error and never a new namespace.

Two netlink layers: ADD and DEL (the hot path, once per pod) use the lean client in rtnl.py,
whose sockets in other namespaces come from a short-lived thread (``rtnl.in_netns``: the
namespace is per thread in Linux; no long-lived thread ever changes namespace); CHECK and the
start-up listing use pyroute2 (``IPRoute(netns=..., flags=0)``, a forked child per namespace).

Errors are ``CniError``s: WIRING_FAILURE (102) naming the step and the interface/route that
failed, INVALID_NETNS (8) naming CNI_NETNS when the pod namespace is missing or is the node's
own, CHECK_FAILURE (103) listing everything ``check_pod`` found wrong. ``wire_pod`` undoes
everything it created before raising; ``unwire_pod`` is idempotent.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netplane.cni import errors as codes
from netplane.cni.errors import CniError
from netplane.cni.rtnl import RT_SCOPE_LINK, Rtnl, RtnlError, in_netns

__all__ = [
    "HOST_VETH_PREFIX",
    "RTPROT_NETPLANE",
    "WiredPod",
    "check_pod",
    "host_veth_name",
    "is_host_veth_name",
    "list_wired",
    "unwire_pod",
    "wire_pod",
]

log = logging.getLogger(__name__)

HOST_VETH_PREFIX = "np"
# Route protocol of the node's per-pod routes (`ip route show proto 78`): how list_wired and
# reconciles find netplane's routes. Unassigned in iproute2's rt_protos.
RTPROT_NETPLANE = 78
NETNS_RUN_DIR = "/run/netns"
READY_TIMEOUT = 5.0  # oper-up + the pod resolving its gateway; an ADD fails after this

_HOST_VETH_RE = re.compile(r"^np[0-9a-f]{11}$")
_IFNAME_BAD = re.compile(r"[/:\s]")

# Kernel constants (linux/if_addr.h, rtnetlink.h, neighbour.h, sched.h).
IFA_F_NOPREFIXROUTE = 0x200
RT_TABLE_MAIN = 254
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable stale delay probe noarp permanent


@dataclass(frozen=True)
class WiredPod:
    host_ifname: str
    host_mac: str
    pod_mac: str
    mtu: int


def host_veth_name(container_id: str, ifname: str) -> str:
    """``np`` + the first 11 hex chars of sha256("<containerID>/<ifname>"): 13 chars (IFNAMSIZ 15)."""
    return HOST_VETH_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def is_host_veth_name(name: str) -> bool:
    """True for names ``host_veth_name`` makes (and not for e.g. the overlay's ``np.vx1``)."""
    return bool(_HOST_VETH_RE.match(name))


# -- namespaces --------------------------------------------------------------------------------


def _netns_path(netns: str) -> str:
    """A name (``ip netns`` style) → /run/netns/<name>; a path stays as it is."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _open_pod_netns(netns_path: str) -> int:
    """O_RDONLY fd of the pod namespace; CniError(8) naming CNI_NETNS when it is not one."""
    if not netns_path:
        raise CniError(codes.INVALID_NETNS, "CNI_NETNS is empty", "a pod network namespace path is required")
    try:
        fd = os.open(_netns_path(netns_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(codes.INVALID_NETNS, f"CNI_NETNS {netns_path} does not exist",
                       "the pod network namespace is gone or was never created") from None
    except OSError as e:
        raise CniError(codes.INVALID_NETNS, f"CNI_NETNS {netns_path} cannot be opened: {e.strerror}",
                       str(e)) from None
    if os.fstat(fd).st_dev != _nsfs_dev():
        os.close(fd)
        raise CniError(codes.INVALID_NETNS, f"CNI_NETNS {netns_path} is not a network namespace",
                       "expected /proc/<pid>/ns/net or a bind mount of one (e.g. /run/netns/<name>)")
    return fd


def _same_netns(fd: int, node_netns: str | None) -> bool:
    st = os.fstat(fd)
    try:
        node = os.stat(_netns_path(node_netns) if node_netns else "/proc/self/ns/net")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (node.st_dev, node.st_ino)


@contextmanager
def _iproute(netns: str | None, what: str) -> Iterator[IPRoute]:
    """IPRoute in ``netns`` (None: this process's own), never creating a namespace."""
    try:
        ipr = IPRoute(netns=_netns_path(netns), flags=0) if netns else IPRoute()
    except FileNotFoundError:
        raise _NetnsGone(netns or "", what) from None
    except OSError as e:
        raise CniError(codes.WIRING_FAILURE, f"opening netlink in the {what} namespace {netns}: {e}",
                       "") from None
    try:
        yield ipr
    finally:
        ipr.close()


class _NetnsGone(Exception):
    def __init__(self, netns: str, what: str):
        super().__init__(f"the {what} network namespace {netns} does not exist")
        self.netns = netns
        self.what = what


def _set_proc_sys(values: dict[str, str]) -> None:
    """Write each /proc/sys file whose value differs (a read-only /proc/sys, as in an unprivileged
    container, is then only a problem when something actually has to change)."""
    for key, value in values.items():
        fd = os.open("/proc/sys/" + key, os.O_RDONLY)
        try:
            current = os.read(fd, 64).strip()
        finally:
            os.close(fd)
        if current != value.encode():
            fd = os.open("/proc/sys/" + key, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)


def _write_sysctls(netns: str | None, values: dict[str, str]) -> None:
    """Write /proc/sys files (keys relative to /proc/sys) as seen from ``netns``.

    /proc/sys/net is resolved against the network namespace of the thread that opens it, so a
    namespace other than our own is entered by a short-lived thread (rtnl.in_netns); this
    thread and every other one stay where they are.
    """
    if netns is None:
        _set_proc_sys(values)
        return
    fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        in_netns(fd, lambda: _set_proc_sys(values))
    finally:
        os.close(fd)


# -- small netlink helpers -----------------------------------------------------------------------


def _link(ipr: IPRoute, ifname: str) -> Any | None:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return None
    try:
        return ipr.link("get", index=idx[0])[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _addrs4(ipr: IPRoute, index: int) -> set[str]:
    return {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.addr("dump", family=2, index=index)}


def _routes4(ipr: IPRoute) -> list[dict[str, Any]]:
    """Main-table IPv4 unicast routes as plain dicts: dst (CIDR), gateway, oif, scope, proto."""
    out = []
    for r in ipr.route("dump", family=2, table=RT_TABLE_MAIN):
        if r["type"] != 1:  # RTN_UNICAST
            continue
        dst = r.get_attr("RTA_DST") or "0.0.0.0"
        out.append({"dst": f"{dst}/{r['dst_len']}", "gateway": r.get_attr("RTA_GATEWAY"),
                    "oif": r.get_attr("RTA_OIF"), "scope": r["scope"], "proto": r["proto"]})
    return out


def _nl_reason(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return f"{os.strerror(e.code)} (errno {e.code})" if e.code else str(e)
    if isinstance(e, CniError):
        return e.msg + (f": {e.details}" if e.details else "")
    if isinstance(e, OSError) and e.errno:
        return f"{os.strerror(e.errno)} (errno {e.errno})"
    return f"{type(e).__name__}: {e}"


@contextmanager
def _step(name: str, where: str) -> Iterator[None]:
    """Turn any failure inside into CniError(102) naming the step and the object."""
    try:
        yield
    except CniError:
        raise
    except _NetnsGone as e:
        raise CniError(codes.WIRING_FAILURE, f"{where}: {name} failed: {e}", "") from e
    except Exception as e:
        raise CniError(codes.WIRING_FAILURE, f"{where}: {name} failed: {_nl_reason(e)}", "") from e


def _validate(ifname: str, ip: str, gateway: str, mtu: int) -> None:
    problems = []
    if not ifname or len(ifname) > 15 or ifname in (".", "..") or _IFNAME_BAD.search(ifname):
        problems.append(f"invalid interface name {ifname!r}")
    for field, value in (("ip", ip), ("gateway", gateway)):
        try:
            if not isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address):
                problems.append(f"{field} {value!r} is not an IPv4 address")
        except ValueError:
            problems.append(f"{field} {value!r} is not an IP address")
    if ip == gateway:
        problems.append(f"ip and gateway are both {ip}")
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        problems.append(f"mtu {mtu!r} is outside 68..65535")
    if problems:
        raise CniError(codes.WIRING_FAILURE, "invalid wiring request: " + "; ".join(problems), "")


def _wait(what: str, probe: Callable[[], bool], deadline: float) -> None:
    # The kernel usually finishes within the first probe or two (a veth's carrier and the ARP
    # exchange run in softirq right behind our requests), so the first sleeps are short.
    delay = 0.0002
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {READY_TIMEOUT:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _oper_up(rtnl: Rtnl, name: str) -> bool:
    link = rtnl.get_link(name)
    return link is not None and link.oper_up


def _resolve_gateway(pod: Rtnl, index: int, gateway: str, host_mac: str, deadline: float) -> None:
    """Make the pod ARP for its gateway (real packets over the veth) and wait for the answer.

    NTF_USE on RTM_NEWNEIGH is the kernel's "use this entry now": it starts resolution exactly
    as a first packet would. Success means the node answered for gw with the host veth's MAC,
    so packets cross the pair both ways and the node's side is configured.
    """
    pod.neigh_use(index, gateway)

    def probe() -> bool:
        for n in pod.neighbours(index):
            if n.dst != gateway:
                continue
            if n.state & NUD_VALID and n.lladdr == host_mac:
                return True
            if n.state & NUD_INCOMPLETE:
                return False
            break  # FAILED/NONE (or a stale wrong MAC): ask again
        pod.neigh_use(index, gateway)
        return False

    _wait(f"the pod resolving its gateway {gateway} to {host_mac}", probe, deadline)


@contextmanager
def _rtnl(netns: str | None, what: str) -> Iterator[Rtnl]:
    """A lean rtnetlink socket in ``netns`` (None: this thread's own); never creates one."""
    if netns is None:
        sock = Rtnl.open()
    else:
        try:
            fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _NetnsGone(netns, what) from None
        try:
            sock = Rtnl.open(fd)
        finally:
            os.close(fd)
    try:
        yield sock
    finally:
        sock.close()


# -- the API -----------------------------------------------------------------------------------


def wire_pod(netns_path: str, ifname: str, container_id: str, ip: str, gateway: str, mtu: int,
             *, node_netns: str | None = None) -> WiredPod:
    """Create and configure the pod's veth pair; returns once the pod can reach its gateway.

    Raises CniError(8) if ``netns_path`` is missing or is the node namespace, CniError(102) for
    everything else (ifname already in the pod, host veth already present, any netlink step).
    On failure everything created here is removed again before the error propagates.
    """
    start = time.monotonic()
    _validate(ifname, ip, gateway, mtu)
    host = host_veth_name(container_id, ifname)
    where = f"wiring {container_id}/{ifname} ({host})"
    pod_fd = _open_pod_netns(netns_path)
    try:
        if _same_netns(pod_fd, node_netns):
            raise CniError(codes.INVALID_NETNS, f"CNI_NETNS {netns_path} is the node's own network namespace",
                           "refusing to wire a pod into the node namespace")
        with ExitStack() as stack:
            with _step("opening the node namespace", where):
                node = stack.enter_context(_rtnl(node_netns, "node"))
            with _step(f"opening the pod namespace {netns_path}", where):
                pod = stack.enter_context(closing(Rtnl.open(pod_fd)))
            created = False
            try:
                with _step(f"creating veth pair {host} <-> {ifname}", where):
                    try:
                        # The host end is created up, the peer directly in the pod namespace.
                        node.add_veth(host, ifname, mtu, pod_fd)
                    except RtnlError as e:
                        if e.errno == errno.EEXIST:
                            _explain_exists(node, pod, host, ifname, netns_path, where)
                        raise
                    created = True
                wired = _configure(node, pod, node_netns, netns_path, host, ifname, ip, gateway, mtu,
                                   where, start + READY_TIMEOUT)
            except BaseException:
                if created:
                    _rollback(node, host, where)
                raise
    finally:
        os.close(pod_fd)
    log.debug("%s: wired %s in %.1f ms", where, ip, (time.monotonic() - start) * 1000)
    return wired


def _explain_exists(node: Rtnl, pod: Rtnl, host: str, ifname: str, netns_path: str, where: str) -> None:
    """The veth create said EEXIST: say which of the two names is taken (nothing was created)."""
    if pod.get_link(ifname) is not None:
        raise CniError(codes.WIRING_FAILURE, f"{where}: interface {ifname} already exists in {netns_path}", "")
    if node.get_link(host) is not None:
        raise CniError(codes.WIRING_FAILURE,
                       f"{where}: host veth {host} already exists in the node namespace "
                       "(the same container and ifname are already wired)", "")


def _configure(node: Rtnl, pod: Rtnl, node_netns: str | None, netns_path: str, host: str,
               ifname: str, ip: str, gateway: str, mtu: int, where: str, deadline: float) -> WiredPod:
    with _step(f"looking up {host} in the node namespace", where):
        host_link = node.get_link(host)
        if host_link is None:
            raise RtnlError(errno.ENODEV, f"{host} vanished")
    with _step(f"looking up {ifname} in {netns_path}", where):
        pod_link = pod.get_link(ifname)
        if pod_link is None:
            raise RtnlError(errno.ENODEV, f"{ifname} vanished")
    host_idx, pod_idx = host_link.index, pod_link.index

    # node side
    with _step(f"setting proxy_arp=0 forwarding=1 on {host}", where):
        _write_sysctls(node_netns, {f"net/ipv4/conf/{host}/proxy_arp": "0",
                                    f"net/ipv4/conf/{host}/forwarding": "1"})
    with _step(f"adding {gateway}/32 to {host}", where):
        node.add_addr(host_idx, gateway, 32, IFA_F_NOPREFIXROUTE)

    # pod side
    with _step(f"adding {ip}/32 to {ifname}", where):
        pod.add_addr(pod_idx, ip, 32)
    with _step(f"setting {ifname} up", where):
        pod.set_up(ifname)
    with _step("setting lo up in the pod", where):
        try:
            pod.set_up("lo")
        except RtnlError as e:
            if e.errno != errno.ENODEV:
                raise
    with _step(f"adding route {gateway}/32 dev {ifname} scope link", where):
        pod.add_route(gateway, 32, pod_idx, scope=RT_SCOPE_LINK)
    with _step(f"adding route default via {gateway} dev {ifname}", where):
        pod.add_route("0.0.0.0", 0, pod_idx, gateway=gateway)

    # node route last: traffic for the pod only comes once the pod side is ready
    with _step(f"adding route {ip}/32 dev {host} scope link proto {RTPROT_NETPLANE}", where):
        # replace: a route left for this IP by a pod that is gone must not block the new one
        node.add_route(ip, 32, host_idx, replace=True, scope=RT_SCOPE_LINK, proto=RTPROT_NETPLANE)

    with _step("waiting for the veth pair to be up", where):
        _wait(f"{host} oper-up", lambda: _oper_up(node, host), deadline)
        _wait(f"{ifname} oper-up", lambda: _oper_up(pod, ifname), deadline)
    with _step(f"waiting for the pod to reach its gateway {gateway}", where):
        _resolve_gateway(pod, pod_idx, gateway, host_link.mac, deadline)
    return WiredPod(host_ifname=host, host_mac=host_link.mac, pod_mac=pod_link.mac, mtu=mtu)


def _rollback(node: Rtnl, host: str, where: str) -> None:
    """Delete the host veth: its peer, the addresses and both sides' routes go with it."""
    try:
        node.del_link(host)
    except OSError as e:
        log.error("%s: rollback: deleting %s: %s", where, host, _nl_reason(e))
        return
    log.info("%s: rolled back (deleted %s)", where, host)


def unwire_pod(netns_path: str | None, ifname: str, container_id: str, *,
               node_netns: str | None = None) -> None:
    """Remove the pod's veth pair. Idempotent: nothing there, or the pod netns gone, is success.

    Deleting the host veth deletes its peer in the pod namespace and every address and route on
    either end (including the node's podIP/32 route). ``netns_path`` is not needed for that and
    may be empty or gone (CNI DEL).
    """
    host = host_veth_name(container_id, ifname)
    try:
        with _rtnl(node_netns, "node") as node:
            try:
                node.del_link(host)
            except OSError as e:
                raise CniError(codes.WIRING_FAILURE,
                               f"unwiring {container_id}/{ifname}: deleting {host}: {_nl_reason(e)}", "") from e
    except _NetnsGone as e:
        log.warning("unwiring %s/%s: %s; nothing to remove", container_id, ifname, e)


def check_pod(netns_path: str, ifname: str, container_id: str, ip: str, gateway: str, *,
              node_netns: str | None = None, mtu: int | None = None) -> None:
    """Verify the pod's wiring on both ends; CniError(103) listing every problem found.

    Tolerates additions by chained plugins (extra addresses/routes); checks: the veth pair
    (host np<hash> <-> ifname, peers of each other), both oper-up and with equal MTU (= ``mtu``
    when given), gw/32 on the host veth and podIP/32 dev host veth; in the pod: podIP/32 on
    ifname, gw/32 dev ifname scope link, default via gw dev ifname.
    """
    host = host_veth_name(container_id, ifname)
    where = f"{container_id}/{ifname}"
    problems: list[str] = []

    def fail() -> CniError:
        return CniError(codes.CHECK_FAILURE, f"pod wiring of {where}: " + "; ".join(problems),
                        f"host veth {host}, pod netns {netns_path}")

    try:
        pod_fd = _open_pod_netns(netns_path)
    except CniError as e:
        problems.append(e.msg)
        raise fail() from None
    os.close(pod_fd)
    try:
        with _iproute(node_netns, "node") as node, _iproute(netns_path, "pod") as pod:
            host_link = _link(node, host)
            pod_link = _link(pod, ifname)
            if host_link is None:
                problems.append(f"host veth {host} is missing")
            elif _kind(host_link) != "veth":
                problems.append(f"{host} is a {_kind(host_link)}, not a veth")
            if pod_link is None:
                problems.append(f"interface {ifname} is missing in the pod")
            elif _kind(pod_link) != "veth":
                problems.append(f"pod interface {ifname} is a {_kind(pod_link)}, not a veth")
            if host_link is not None and pod_link is not None:
                if (host_link.get_attr("IFLA_LINK") != pod_link["index"]
                        or pod_link.get_attr("IFLA_LINK") != host_link["index"]):
                    problems.append(f"{host} and pod {ifname} are not peers of one veth pair")
                host_mtu, pod_mtu = host_link.get_attr("IFLA_MTU"), pod_link.get_attr("IFLA_MTU")
                if host_mtu != pod_mtu:
                    problems.append(f"MTU differs: {host} {host_mtu}, pod {ifname} {pod_mtu}")
                elif mtu is not None and host_mtu != mtu:
                    problems.append(f"MTU is {host_mtu}, expected {mtu}")
            if host_link is not None:
                hidx = host_link["index"]
                if host_link.get_attr("IFLA_OPERSTATE") != "UP":
                    problems.append(f"{host} is {host_link.get_attr('IFLA_OPERSTATE')}, not UP")
                if f"{gateway}/32" not in _addrs4(node, hidx):
                    problems.append(f"{host} lacks address {gateway}/32")
                if not any(r["dst"] == f"{ip}/32" and r["oif"] == hidx and r["gateway"] is None
                           for r in _routes4(node)):
                    problems.append(f"node route {ip}/32 dev {host} is missing")
            if pod_link is not None:
                pidx = pod_link["index"]
                if pod_link.get_attr("IFLA_OPERSTATE") != "UP":
                    problems.append(f"pod {ifname} is {pod_link.get_attr('IFLA_OPERSTATE')}, not UP")
                if f"{ip}/32" not in _addrs4(pod, pidx):
                    problems.append(f"pod {ifname} lacks address {ip}/32")
                routes = _routes4(pod)
                if not any(r["dst"] == f"{gateway}/32" and r["oif"] == pidx and r["scope"] == RT_SCOPE_LINK
                           for r in routes):
                    problems.append(f"pod route {gateway}/32 dev {ifname} scope link is missing")
                if not any(r["dst"] == "0.0.0.0/0" and r["gateway"] == gateway and r["oif"] == pidx
                           for r in routes):
                    problems.append(f"pod default route via {gateway} dev {ifname} is missing")
    except _NetnsGone as e:
        problems.append(str(e))
    except NetlinkError as e:
        problems.append(f"reading netlink state: {_nl_reason(e)}")
    if problems:
        raise fail()


def list_wired(node_netns: str | None = None) -> dict[str, str | None]:
    """Host veths this module made (``np`` + 11 hex, kind veth) → their pod IP.

    The pod IP comes from the veth's proto-78 /32 route; None when that route is missing.
    """
    with _iproute(node_netns, "node") as node:
        veths = {}
        for link in node.link("dump"):
            name = link.get_attr("IFLA_IFNAME")
            if name and is_host_veth_name(name) and _kind(link) == "veth":
                veths[link["index"]] = name
        out: dict[str, str | None] = dict.fromkeys(veths.values())
        for r in _routes4(node):
            if r["proto"] == RTPROT_NETPLANE and r["oif"] in veths and r["dst"].endswith("/32"):
                out[veths[r["oif"]]] = r["dst"][:-3]
        return out
