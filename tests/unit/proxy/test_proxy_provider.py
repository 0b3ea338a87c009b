"""BaseProvider with a tiny in-memory backend: gating, full/partial syncs, failures, node
updates, health and metrics. Time is a FakeClock; syncs run through runner.tick()."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest

from netplane.errors import NetplaneError
from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.proxy.healthcheck import ProxyHealth, ServiceHealthServer
from netplane.proxy.model import EndpointInfo, NodeContext, ProxyState, ServicePortName
from netplane.proxy.provider import BaseProvider, SyncResult
from netplane.proxy.runner import FakeClock

WEB = ServicePortName("default", "web", "http", "TCP")


def service(name: str = "web", port: int = 80, **spec: Any) -> Service:
    return Service.from_dict({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port}], **spec}})


def endpoint_slice(name: str, svc: str, *endpoints: tuple[str, str]) -> EndpointSlice:
    return EndpointSlice.from_dict({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "nodeName": node} for ip, node in endpoints],
        "ports": [{"name": "http", "port": 8080}]})


class MemoryBackend(BaseProvider):
    """Applies each state to an in-memory 'dataplane': service port → endpoint addresses."""

    def __init__(self, **kwargs: Any) -> None:
        self.clock_: FakeClock = kwargs.setdefault("clock", FakeClock(start=0.0))
        super().__init__(NodeContext("node-1"), min_sync_interval=1.0, sync_period=30.0,
                         retry_interval=5.0, **kwargs)
        self.dataplane: dict[ServicePortName, tuple[str, ...]] = {}
        self.syncs: list[tuple[bool, frozenset[ServicePortName]]] = []
        self.fail: Exception | SyncResult | None = None
        self.nodes_seen: list[NodeContext] = []

    def sync_state(self, state: ProxyState, full: bool) -> SyncResult | None:
        self.nodes_seen.append(self.node)
        if isinstance(self.fail, Exception):
            raise self.fail
        if isinstance(self.fail, SyncResult):
            return self.fail
        names = set(state.services) if full else set(state.changed)
        for name in names:
            if name in state.services:
                self.dataplane[name] = tuple(str(e) for e in state.endpoints.get(name, ()))
            else:
                self.dataplane.pop(name, None)
        if full:
            for name in set(self.dataplane) - set(state.services):
                del self.dataplane[name]
        self.syncs.append((full, state.changed))
        return None

    def settle(self, seconds: float = 1.0) -> None:
        """Let the fake time pass and run whatever the runner has due."""
        self.clock_.advance(seconds)
        self.runner.tick()


def test_nothing_syncs_before_both_informers_synced() -> None:
    p = MemoryBackend()
    p.on_service_add(service())
    p.on_endpoint_slice_add(endpoint_slice("web-1", "web", ("10.0.0.1", "node-2")))
    p.settle(100.0)  # periodic runs happen, but do nothing
    assert p.syncs == [] and not p.initialized
    p.on_services_synced()
    p.settle()
    assert p.syncs == []
    p.on_endpoint_slices_synced()
    p.settle()
    assert p.syncs == [(True, frozenset({WEB}))]
    assert p.dataplane == {WEB: ("10.0.0.1:8080",)}


def synced(**kwargs: Any) -> MemoryBackend:
    p = MemoryBackend(**kwargs)
    p.on_services_synced()
    p.on_endpoint_slices_synced()
    p.settle()
    return p


def test_changes_make_partial_syncs_and_periodic_syncs_are_full() -> None:
    p = synced()
    web = service()
    p.on_service_add(web)
    p.settle()
    assert p.syncs[-1] == (False, frozenset({WEB}))
    slice1 = endpoint_slice("web-1", "web", ("10.0.0.1", "node-1"))
    p.on_endpoint_slice_add(slice1)
    p.on_endpoint_slice_update(slice1, endpoint_slice("web-1", "web", ("10.0.0.2", "node-1")))
    p.settle()
    assert p.syncs[-1] == (False, frozenset({WEB}))
    assert p.dataplane == {WEB: ("10.0.0.2:8080",)}
    p.on_service_delete(web)
    p.settle()
    assert p.dataplane == {}
    count = len(p.syncs)
    p.settle(29.0)
    assert len(p.syncs) == count  # nothing due before the sync period
    p.settle(1.0)
    assert len(p.syncs) == count + 1 and p.syncs[-1][0] is True
    assert p.metrics.syncs_total.value("full") == 2
    assert p.metrics.syncs_total.value("partial") == 3


def test_failed_sync_is_retried_as_a_full_sync() -> None:
    p = synced()
    a = ServicePortName("default", "a", "http", "TCP")
    for failure in (NetplaneError("restore failed"), SyncResult(ok=False, reason="canary gone"),
                    RuntimeError("bug")):
        p.fail = failure
        p.on_service_add(service("a", port=81))
        syncs = len(p.syncs)
        p.settle()
        assert len(p.syncs) == syncs and a not in p.dataplane  # the sync failed
        p.fail = None
        p.settle(4.0)
        assert a not in p.dataplane  # no retry before retry_interval
        p.settle(1.0)
        # the changes were consumed by the failed attempt: only a full sync recovers them
        assert p.syncs[-1][0] is True and a in p.dataplane
        p.on_service_delete(service("a", port=81))
        p.settle()
        assert a not in p.dataplane


def test_request_full_sync_makes_the_next_sync_full(caplog: pytest.LogCaptureFixture) -> None:
    p = synced()
    p.settle(5.0)
    with caplog.at_level("INFO", logger="netplane.proxy.provider"):
        p.request_full_sync("canary chain vanished")
    p.settle()
    assert p.syncs[-1][0] is True
    assert any("canary chain vanished" in r.getMessage() for r in caplog.records)
    p.on_service_add(service())
    p.settle()
    assert p.syncs[-1][0] is False


def test_own_node_update_changes_the_context_and_forces_a_full_sync() -> None:
    p = synced()
    p.settle(5.0)
    n = len(p.syncs)
    other = Node.from_dict({"metadata": {"name": "node-2",
                                         "labels": {"topology.kubernetes.io/zone": "z9"}}})
    p.on_node_update(other)
    p.settle()
    assert len(p.syncs) == n and p.node.zone == ""
    me = Node.from_dict({
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.5"},
                                 {"type": "InternalIP", "address": "fd00::5"},
                                 {"type": "Hostname", "address": "node-1"}]}})
    p.on_node_update(me)
    p.settle()
    assert p.syncs[-1][0] is True
    assert p.nodes_seen[-1] == NodeContext("node-1", zone="z1", node_ips=("192.168.1.5",))
    p.on_node_update(me)  # unchanged: no extra sync
    p.settle()
    assert len(p.syncs) == n + 1


def test_health_follows_syncs() -> None:
    clock = FakeClock(start=0.0)
    health = ProxyHealth(60.0, clock=clock)
    p = MemoryBackend(clock=clock, proxy_health=health)
    p.on_services_synced()
    p.on_endpoint_slices_synced()
    p.fail = NetplaneError("iptables-restore failed")
    p.settle()
    assert health.is_healthy()
    for _ in range(12):
        p.settle(5.0)
    assert not health.is_healthy()  # the first sync has been owed for 60 s
    assert p.oldest_queued_time == 1_700_000_000.0  # when both informers had synced
    p.fail = None
    p.settle(5.0)
    assert health.is_healthy() and p.oldest_queued_time is None
    assert p.last_sync_time == clock.time()
    rendered = p.metrics.render().decode()
    assert f"kubeproxy_sync_proxy_rules_last_timestamp_seconds {int(clock.time())}" in rendered


def _get(port: int) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_service_health_ports_follow_state() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hcnp = s.getsockname()[1]
    server = ServiceHealthServer(bind_address="127.0.0.1")
    p = synced(service_health=server)
    try:
        lb = service(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=hcnp,
                     ports=[{"name": "http", "port": 80}, {"name": "https", "port": 443}])
        p.on_service_add(lb)
        p.on_endpoint_slice_add(EndpointSlice.from_dict({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-1"},
                          {"addresses": ["10.0.0.2"], "nodeName": "node-1",
                           "conditions": {"ready": False, "serving": True,
                                          "terminating": True}},
                          {"addresses": ["10.0.0.3"], "nodeName": "node-2"}],
            "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]}))
        p.settle()
        assert server.ports() == {("default", "web"): hcnp}
        code, body = _get(hcnp)
        assert code == 200 and body["localEndpoints"] == 1  # one ready local pod, two ports
        p.on_service_delete(lb)
        p.settle()
        assert server.ports() == {}
    finally:
        server.close()


def test_endpoints_for_unknown_names_are_kept_for_later() -> None:
    p = synced()
    p.on_endpoint_slice_add(endpoint_slice("web-1", "web", ("10.0.0.1", "")))
    p.settle()
    assert p.dataplane == {}
    p.on_service_add(service())
    p.settle()
    assert p.dataplane == {WEB: ("10.0.0.1:8080",)}
    assert p.last_state is not None
    assert p.last_state.endpoints[WEB] == (EndpointInfo("10.0.0.1", 8080),)


def test_change_arriving_during_a_sync_stays_owed() -> None:
    clock = FakeClock(start=0.0)
    health = ProxyHealth(60.0, clock=clock)

    class Racy(MemoryBackend):
        def sync_state(self, state: ProxyState, full: bool) -> SyncResult | None:
            if not full:
                clock.advance(0.5)
                self.on_service_add(service("late"))  # arrives after the state was taken
            return super().sync_state(state, full)

    p = Racy(clock=clock, proxy_health=health)
    p.on_services_synced()
    p.on_endpoint_slices_synced()
    p.settle()
    p.on_service_add(service())
    p.settle()
    assert p.oldest_queued_time == clock.time()  # "late", queued mid-sync; "web" is done
    clock.advance(60.0)
    assert not health.is_healthy()
    p.runner.tick()  # the queued run picks "late" up
    assert ServicePortName("default", "late", "http", "TCP") in p.dataplane
    assert health.is_healthy() and p.oldest_queued_time is None
