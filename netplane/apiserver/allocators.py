"""Service ClusterIP and NodePort allocation, as the real server's service REST storage does it.

Allocation is two-phase so a rejected request changes nothing: `plan()` fills in the Service's
addresses and ports and reports conflicts; the API layer commits the object and only then calls
`apply()`. The allocated sets are derived state: they are rebuilt from the stored Services at
start-up, never persisted on their own.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NODEPORT_TYPES = ("NodePort", "LoadBalancer")


@dataclass
class AllocationPlan:
    ips_take: set[str] = field(default_factory=set)
    ips_free: set[str] = field(default_factory=set)
    ports_take: set[int] = field(default_factory=set)
    ports_free: set[int] = field(default_factory=set)


class AllocationError(Exception):
    """A requested address/port is invalid or taken, or a range is full. `field` names the path."""

    def __init__(self, field_path: str, value: Any, message: str, reason: str = "FieldValueInvalid"):
        super().__init__(f"{field_path}: Invalid value: {value!r}: {message}")
        self.field = field_path
        self.value = value
        self.detail = message
        self.reason = reason


class ServiceAllocator:
    def __init__(self, service_cidr: str, node_port_range: tuple[int, int] = (30000, 32767),
                 rng: random.Random | None = None):
        self.network = ipaddress.ip_network(service_cidr, strict=True)
        self.low, self.high = node_port_range
        if not (0 < self.low <= self.high <= 65535):
            raise ValueError(f"invalid node port range {self.low}-{self.high}")
        self._rng = rng or random.Random()
        self.ips: set[str] = set()
        self.ports: set[int] = set()
        # Network and broadcast addresses are never handed out (as the real allocator).
        first, last = int(self.network.network_address), int(self.network.broadcast_address)
        self._ip_range = (first + 1, last - 1) if self.network.num_addresses > 2 else (first, last)

    # -- what a Service holds ------------------------------------------------------------------

    @staticmethod
    def held_ips(svc: dict[str, Any] | None) -> set[str]:
        if not svc:
            return set()
        spec = svc.get("spec") or {}
        return {ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"}

    @staticmethod
    def held_ports(svc: dict[str, Any] | None) -> set[int]:
        if not svc:
            return set()
        spec = svc.get("spec") or {}
        held = {p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)}
        held.add(spec.get("healthCheckNodePort"))
        return {p for p in held if isinstance(p, int) and p > 0}

    def rebuild(self, services: Iterable[dict[str, Any]]) -> None:
        self.ips.clear()
        self.ports.clear()
        for svc in services:
            self.ips |= self.held_ips(svc)
            self.ports |= self.held_ports(svc)

    # -- planning --------------------------------------------------------------------------------

    def plan(self, old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[dict[str, Any], AllocationPlan]:
        """Return a copy of `new` with ClusterIP(s)/NodePorts filled in, and what to take/free."""
        svc = copy.deepcopy(new)
        spec = svc.setdefault("spec", {})
        svc_type = spec.get("type") or "ClusterIP"
        old_ips, old_ports = self.held_ips(old), self.held_ports(old)

        if svc_type == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        else:
            self._plan_cluster_ip(spec, old_ips)

        if svc_type in NODEPORT_TYPES:
            self._plan_node_ports(spec, old_ports)
        else:
            # The real server drops node ports when a Service stops being NodePort/LoadBalancer.
            for p in spec.get("ports") or []:
                if isinstance(p, dict):
                    p.pop("nodePort", None)
        local = spec.get("externalTrafficPolicy") == "Local"
        if svc_type == "LoadBalancer" and local:
            hc = spec.get("healthCheckNodePort")
            if not hc:
                taken = self.held_ports(svc) | (self.ports - old_ports)
                spec["healthCheckNodePort"] = self._free_port(taken, "spec.healthCheckNodePort")
            else:
                # Not one of this Service's own node ports either (upstream allocates it after them).
                node_ports = {p.get("nodePort") for p in spec.get("ports") or []
                              if isinstance(p, dict) and isinstance(p.get("nodePort"), int)}
                self._check_port(hc, "spec.healthCheckNodePort", old_ports, node_ports)
        else:
            spec.pop("healthCheckNodePort", None)

        new_ips, new_ports = self.held_ips(svc), self.held_ports(svc)
        plan = AllocationPlan(new_ips - old_ips, old_ips - new_ips, new_ports - old_ports, old_ports - new_ports)
        return svc, plan

    def plan_release(self, old: dict[str, Any]) -> AllocationPlan:
        return AllocationPlan(ips_free=self.held_ips(old), ports_free=self.held_ports(old))

    def apply(self, plan: AllocationPlan) -> None:
        self.ips -= plan.ips_free
        self.ips |= plan.ips_take
        self.ports -= plan.ports_free
        self.ports |= plan.ports_take

    # -- internals --------------------------------------------------------------------------------

    def _plan_cluster_ip(self, spec: dict[str, Any], old_ips: set[str]) -> None:
        ip = spec.get("clusterIP") or ""
        ips = spec.get("clusterIPs") or []
        if not ip and ips:
            ip = ips[0]
        if ip == "None":
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return
        if not ip:
            ip = self._free_ip()
        elif ip not in old_ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise AllocationError("spec.clusterIPs", ip, "must be a valid IP address") from None
            lo, hi = self._ip_range  # the network and broadcast addresses are not in it either
            if addr not in self.network or not lo <= int(addr) <= hi:
                raise AllocationError(
                    "spec.clusterIPs", ip,
                    f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                    f"The range of valid IPs is {self.network}",
                )
            if ip in self.ips:
                raise AllocationError(
                    "spec.clusterIPs", ip, f"failed to allocate IP {ip}: provided IP is already allocated"
                )
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]

    def _plan_node_ports(self, spec: dict[str, Any], old_ports: set[int]) -> None:
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        # A LoadBalancer may opt out of node ports; explicitly requested ones are still honoured.
        allocate_missing = not (
            spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False
        )
        # Explicit ports first, so dynamic ones never steal a port the request names.
        mine: set[int] = set()
        for i, p in enumerate(ports):
            np = p.get("nodePort")
            if np:
                # One Service may reuse a node port across protocols (TCP and UDP on the same port).
                if np not in mine:
                    self._check_port(np, f"spec.ports[{i}].nodePort", old_ports, set())
                mine.add(np)
        for p in ports if allocate_missing else ():
            if not p.get("nodePort"):
                taken = mine | (self.ports - old_ports)
                p["nodePort"] = self._free_port(taken, "spec.ports.nodePort")
                mine.add(p["nodePort"])

    def _check_port(self, port: Any, field_path: str, old_ports: set[int], also_taken: set[int]) -> None:
        if not isinstance(port, int) or isinstance(port, bool):
            raise AllocationError(field_path, port, "must be an integer", "FieldValueTypeInvalid")
        if port in old_ports:
            return
        if not self.low <= port <= self.high:
            raise AllocationError(field_path, port, f"provided port is not in the valid range. "
                                  f"The range of valid ports is {self.low}-{self.high}")
        if port in self.ports or port in also_taken:
            raise AllocationError(field_path, port, "provided port is already allocated")

    def _free_ip(self) -> str:
        lo, hi = self._ip_range
        size = hi - lo + 1
        for _ in range(32):
            candidate = str(ipaddress.ip_address(lo + self._rng.randrange(size)))
            if candidate not in self.ips:
                return candidate
        start = self._rng.randrange(size)
        for off in range(size):  # nearly full: walk the range once
            candidate = str(ipaddress.ip_address(lo + (start + off) % size))
            if candidate not in self.ips:
                return candidate
        raise AllocationError("spec.clusterIPs", "", f"failed to allocate a serviceIP: range {self.network} is full")

    def _free_port(self, taken: set[int], field_path: str) -> int:
        size = self.high - self.low + 1
        for _ in range(32):
            candidate = self.low + self._rng.randrange(size)
            if candidate not in taken and candidate not in self.ports:
                return candidate
        for candidate in range(self.low, self.high + 1):
            if candidate not in taken and candidate not in self.ports:
                return candidate
        raise AllocationError(field_path, 0, f"range {self.low}-{self.high} is full")
