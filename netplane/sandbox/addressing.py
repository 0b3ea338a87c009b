"""The underlay address plan (pure): which address each node and external host gets. One place,
used by the topology loader (to show and check it) and by the network builder (to program it)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UnderlayPlan:
    subnet: str
    gateway: str  # the bridge's address: the control-plane address nodes reach the apiserver on
    nodes: Mapping[str, str]  # node name -> underlay IP
    hosts: Mapping[str, str]  # external host name -> underlay IP
    mtu: int

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def plan_underlay(subnet: str, mtu: int, node_names: Sequence[str],
                  hosts: Sequence[tuple[str, str | None]]) -> UnderlayPlan:
    """Addresses as kind hands them out: the gateway first, then nodes in order, then hosts
    (hosts may ask for a fixed address; the topology loader has already checked it is free)."""
    net = ipaddress.ip_network(subnet)
    fixed = {a for _, a in hosts if a}
    free = (str(ip) for ip in net.hosts() if str(ip) not in fixed)
    gateway = next(free)
    nodes = {name: next(free) for name in node_names}
    host_ips = {name: (addr or next(free)) for name, addr in hosts}
    return UnderlayPlan(str(net), gateway, nodes, host_ips, mtu)
