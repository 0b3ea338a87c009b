"""The sandbox's wires: an underlay bridge in its own namespace (like kind's docker network), one
namespace per node and per external host, a veth from each to the bridge, and a cgroup per node.
Everything is named by `ClusterNames`, so `teardown` needs nothing but the cluster name.

All commands run inside namespaces netplane creates (`ip -n NS ...`, `ip netns exec NS ...`);
nothing here touches the root network namespace.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from netplane.errors import NetplaneError
from netplane.sandbox.addressing import UnderlayPlan, plan_underlay  # noqa: F401 - re-exported
from netplane.sandbox.names import ETC_NETNS, ROUTE_PROTO, ClusterNames

log = logging.getLogger(__name__)

UNDERLAY_BRIDGE = "ul0"
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # Pods and `netplane exec` ping without CAP_NET_RAW, as on a kind node.
    "net.ipv4.ping_group_range": "0 2147483647",
}


class NetworkError(NetplaneError):
    """A command building or removing the sandbox network failed; the message has its stderr."""


def run(cmd: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()} (exit {proc.returncode})")
    return proc


def ip_batch(netns: str, lines: Sequence[str]) -> None:
    """Several `ip` commands in one process inside `netns` (one fork instead of dozens)."""
    run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n")


def sysctls(netns: str, values: Mapping[str, str]) -> None:
    args = [f"{k}={v}" for k, v in values.items()]
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args])


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# -- build ----------------------------------------------------------------------------------------


def build(names: ClusterNames, plan: UnderlayPlan, *, node_names: Sequence[str],
          host_names: Sequence[str]) -> None:
    """Create the underlay, the node and host namespaces, and the node cgroups."""
    ul = names.underlay
    run(["ip", "netns", "add", ul])
    ip_batch(ul, [
        "link set lo up",
        f"link add {UNDERLAY_BRIDGE} type bridge",
        f"link set {UNDERLAY_BRIDGE} mtu {plan.mtu}",
        f"addr add {plan.gateway}/{plan.prefixlen} dev {UNDERLAY_BRIDGE}",
        f"link set {UNDERLAY_BRIDGE} up",
    ])
    for name in node_names:
        _attach(names, names.node(name), name, plan.nodes[name], plan)
        sysctls(names.node(name), NODE_SYSCTLS)
        os.makedirs(names.node_cgroup(name), exist_ok=True)
    for name in host_names:
        _attach(names, names.host(name), name, plan.hosts[name], plan)
        sysctls(names.host(name), {"net.ipv4.ping_group_range": "0 2147483647"})


def _attach(names: ClusterNames, netns: str, name: str, address: str, plan: UnderlayPlan) -> None:
    run(["ip", "netns", "add", netns])
    port = names.underlay_port(name)
    ip_batch(names.underlay, [
        f"link add {port} mtu {plan.mtu} type veth peer name eth0 mtu {plan.mtu} netns {netns}",
        f"link set {port} master {UNDERLAY_BRIDGE}",
        f"link set {port} up",
    ])
    ip_batch(netns, [
        "link set lo up",
        f"addr add {address}/{plan.prefixlen} dev eth0",
        "link set eth0 up",
        f"route add default via {plan.gateway} dev eth0",
    ])


def set_node_routes(netns: str, routes: Mapping[str, str]) -> None:
    """Make the node's routes to other nodes' pod CIDRs exactly `routes` (cidr -> via): replace
    what is wanted, delete our (ROUTE_PROTO) routes that are not (kindnet's job on kind)."""
    current = run(["ip", "-n", netns, "-o", "route", "show", "proto", str(ROUTE_PROTO)], check=False).stdout
    existing = {line.split()[0] for line in current.splitlines() if line.strip()}
    lines = [f"route replace {cidr} via {via} proto {ROUTE_PROTO}" for cidr, via in sorted(routes.items())]
    lines += [f"route del {cidr} proto {ROUTE_PROTO}" for cidr in sorted(existing - set(routes))]
    if lines:
        ip_batch(netns, lines)


# -- teardown -------------------------------------------------------------------------------------


def kill_cgroup(path: str, timeout: float = 15.0) -> None:
    """Kill every process in a cgroup (v2 `cgroup.kill`) and remove the directory tree."""
    if not os.path.isdir(path):
        return
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        try:
            with open(os.path.join(dirpath, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError as e:
            log.warning("cgroup.kill in %s: %s", dirpath, e)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    if not f.read().strip():
                        break
            except OSError:
                break
            time.sleep(0.05)
        # The kernel may report the cgroup busy a moment after its last process is gone.
        for attempt in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 49:
                    log.warning("cannot remove cgroup %s: %s", dirpath, e)
                time.sleep(0.1)


def kill_netns_processes(netns: str) -> None:
    """Processes still inside one of our namespaces (e.g. an interrupted `netplane exec`)."""
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def teardown(names: ClusterNames) -> list[str]:
    """Remove everything of cluster `names` by name; safe to repeat; returns what it removed."""
    removed: list[str] = []
    kill_cgroup(names.cgroup_dir)
    ours = [ns for ns in netns_list() if ns.startswith(names.prefix)]
    # Pods first, then nodes and hosts, the underlay last (veth peers vanish with their netns).
    ours.sort(key=lambda ns: (ns == names.underlay, "-p-" not in ns))
    for ns in ours:
        kill_netns_processes(ns)
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode == 0:
            removed.append(f"netns {ns}")
        else:
            log.warning("ip netns del %s: %s", ns, proc.stderr.strip())
    for parent in (os.path.dirname(names.cgroup_dir), os.path.dirname(names.state_dir)):
        try:
            os.rmdir(parent)  # only when no other cluster uses it
        except OSError:
            pass
    if os.path.isdir(ETC_NETNS):
        for entry in os.listdir(ETC_NETNS):
            if entry.startswith(names.prefix):
                shutil.rmtree(os.path.join(ETC_NETNS, entry), ignore_errors=True)
                removed.append(f"{ETC_NETNS}/{entry}")
    return removed


def leftovers(names: ClusterNames) -> list[str]:
    """What of cluster `names` still exists (empty after a complete teardown)."""
    left = [f"netns {ns}" for ns in netns_list() if ns.startswith(names.prefix)]
    left += [path for path in (names.state_dir, names.cgroup_dir) if os.path.exists(path)]
    if os.path.isdir(ETC_NETNS):
        left += [f"{ETC_NETNS}/{e}" for e in os.listdir(ETC_NETNS) if e.startswith(names.prefix)]
    return left
