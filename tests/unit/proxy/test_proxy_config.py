"""connect_informers: real Informers over an in-memory list source feed a real provider."""

from __future__ import annotations

import threading
from typing import Any

from netplane.k8s.informer import Informer
from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.proxy.config import connect_informers
from netplane.proxy.model import NodeContext, ProxyState, ServicePortName
from netplane.proxy.provider import BaseProvider
from netplane.proxy.runner import FakeClock

WEB = ServicePortName("default", "web", "http", "TCP")


class ListOnly:
    """The part of the client an informer needs; lists only (tests never let it watch)."""

    def __init__(self, items: dict[str, list[dict[str, Any]]]) -> None:
        self.items = items

    def list(self, path: str, **_: Any) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "1"}, "items": self.items[path]}

    def watch(self, path: str, **_: Any):  # pragma: no cover - not reached
        raise AssertionError("no watch in this test")


class Recorder(BaseProvider):
    def __init__(self) -> None:
        self.fake_clock = FakeClock()
        super().__init__(NodeContext("node-1"), clock=self.fake_clock)
        self.states: list[tuple[ProxyState, bool]] = []

    def sync_state(self, state: ProxyState, full: bool) -> None:
        self.states.append((state, full))


def test_events_reach_the_provider_and_synced_is_signalled_once_both_listed() -> None:
    client = ListOnly({
        "/api/v1/services": [{
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}],
        "/apis/discovery.k8s.io/v1/endpointslices": [{
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}],
            "ports": [{"name": "http", "port": 8080}]}],
        "/api/v1/nodes": [
            {"metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}}},
            {"metadata": {"name": "node-2", "labels": {"topology.kubernetes.io/zone": "z2"}}}],
    })
    services = Informer(client, "/api/v1/services", Service.from_dict)
    slices = Informer(client, "/apis/discovery.k8s.io/v1/endpointslices",
                      EndpointSlice.from_dict)
    nodes = Informer(client, "/api/v1/nodes", Node.from_dict)
    provider = Recorder()
    stop = threading.Event()
    waiters = connect_informers(provider, services, slices, nodes, "node-1", stop=stop)
    try:
        assert services.run_once() == "listed"
        nodes.run_once()
        assert provider.node.zone == "z1"  # only our own node counts
        waiters[0].join(5)
        assert not provider.initialized  # slices not synced yet
        assert slices.run_once() == "listed"
        for t in waiters:
            t.join(5)
            assert not t.is_alive()
        assert provider.initialized
        provider.runner.tick()
        ((state, full),) = provider.states
        assert full and state.changed == {WEB}
        assert [str(e) for e in state.endpoints[WEB]] == ["10.0.0.1:8080"]
    finally:
        stop.set()


def test_stop_abandons_waiting() -> None:
    client = ListOnly({"/s": [], "/e": []})
    services = Informer(client, "/s", Service.from_dict)
    slices = Informer(client, "/e", EndpointSlice.from_dict)
    provider = Recorder()
    stop = threading.Event()
    waiters = connect_informers(provider, services, slices, None, "node-1", stop=stop)
    stop.set()
    for t in waiters:
        t.join(3)
        assert not t.is_alive()
    assert not provider.initialized
