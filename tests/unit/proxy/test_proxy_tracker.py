"""Service/EndpointSlice change tracking: conversion, validation, merge/unmerge, changed sets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from netplane.k8s.objects import EndpointSlice, Service
from netplane.proxy.model import EndpointInfo, ServicePortName
from netplane.proxy.tracker import (
    EndpointSliceChangeTracker,
    ProxyStateBuilder,
    ServiceChangeTracker,
    service_port_infos,
)


def svc(name: str = "web", ns: str = "default", *, ports: list[dict[str, Any]] | None = None,
        annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None,
        **spec: Any) -> Service:
    spec.setdefault("clusterIP", "10.96.0.10")
    spec.setdefault("ports", ports if ports is not None else
                    [{"name": "http", "port": 80, "targetPort": "web"}])
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return Service.from_dict({"metadata": meta, "spec": spec, "status": status or {}})


def ep(ip: str, *, ready: bool | None = True, serving: bool | None = None,
       terminating: bool | None = None, node: str = "", zone: str = "",
       hints: list[str] | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    d: dict[str, Any] = {"addresses": [ip], "conditions": cond}
    if node:
        d["nodeName"] = node
    if zone:
        d["zone"] = zone
    if hints is not None:
        d["hints"] = {"forZones": [{"name": z} for z in hints]}
    return d


def eps(name: str, service: str, endpoints: list[dict[str, Any]], *, ns: str = "default",
        ports: list[dict[str, Any]] | None = None, address_type: str = "IPv4") -> EndpointSlice:
    return EndpointSlice.from_dict({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080,
                                                   "protocol": "TCP"}],
    })


def collect(messages: list[tuple[int, str]]):
    return lambda level, message: messages.append((level, message))


HTTP = ServicePortName("default", "web", "http", "TCP")


class World:
    """The trackers and a builder, as a provider holds them."""

    def __init__(self) -> None:
        self.services = ServiceChangeTracker()
        self.slices = EndpointSliceChangeTracker()
        self.builder = ProxyStateBuilder(self.services, self.slices)


# --------------------------------------------------------------------------------- conversion


def test_service_ports_become_service_port_infos() -> None:
    s = svc(ports=[{"name": "http", "port": 80, "targetPort": "web"},
                   {"name": "dns", "port": 53, "protocol": "udp", "targetPort": 5353}],
            type="NodePort", sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    infos = service_port_infos(s, collect([]))
    dns = ServicePortName("default", "web", "dns", "UDP")
    assert set(infos) == {HTTP, dns}
    assert str(dns) == "default/web:dns/UDP"
    assert dns.kube_string() == "default/web:dns"
    assert infos[dns].protocol == "UDP" and infos[dns].target_port == 5353
    assert infos[HTTP].target_port == "web" and infos[HTTP].cluster_ip == "10.96.0.10"
    assert infos[HTTP].affinity_timeout == 60
    assert not infos[HTTP].external_policy_local


def test_unnamed_port_name_string() -> None:
    infos = service_port_infos(svc(ports=[{"port": 80}]), collect([]))
    (name,) = infos
    assert name.port == "" and str(name) == "default/web/TCP" and name.kube_string() == "default/web"
    assert infos[name].target_port == 80  # defaulted to the port


@pytest.mark.parametrize("spec", [
    {"clusterIP": "None"},
    {"type": "ExternalName", "externalName": "example.com", "clusterIP": ""},
    {"clusterIP": ""},
    {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"]},
])
def test_services_without_an_ipv4_cluster_ip_are_skipped(spec: dict[str, Any]) -> None:
    messages: list[tuple[int, str]] = []
    assert service_port_infos(svc(**spec), collect(messages)) == {}
    assert messages and all(level == logging.DEBUG for level, _ in messages)


def test_dual_stack_service_uses_its_ipv4_cluster_ip() -> None:
    infos = service_port_infos(svc(clusterIP="fd00::10", clusterIPs=["fd00::10", "10.96.0.7"]),
                               collect([]))
    assert infos[HTTP].cluster_ip == "10.96.0.7"


def test_nothing_in_an_object_can_reach_rule_text_unvalidated() -> None:
    messages: list[tuple[int, str]] = []
    s = svc(
        type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=99999,
        externalIPs=["1.2.3.4", "1.2.3.4 -j ACCEPT", "fd00::1", "5.6.7.8"],
        loadBalancerSourceRanges=["10.1.2.3/8", " 192.168.0.0/16 ", "0.0.0.0/0\n-A X", "::/0"],
        status={"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}, {"ip": "bad\"ip"}]}},
        ports=[
            {"name": "http", "port": 80, "nodePort": 30080},
            {"name": "bad name\"", "port": 81},
            {"name": "zero", "port": 0},
            {"name": "huge", "port": 70000},
            {"name": "icmp", "port": 82, "protocol": "ICMP"},
            {"name": "np", "port": 83, "nodePort": 123456},
            {"name": "tp", "port": 84, "targetPort": "x\" -j DROP"},
        ],
    )
    infos = service_port_infos(s, collect(messages))
    assert set(n.port for n in infos) == {"http", "np"}
    http = infos[HTTP]
    assert http.external_ips == ("1.2.3.4", "5.6.7.8")
    assert http.load_balancer_ips == ("9.9.9.9",)
    assert http.load_balancer_source_ranges == ("10.0.0.0/8", "192.168.0.0/16")
    assert http.node_port == 30080 and http.health_check_node_port == 0
    assert infos[ServicePortName("default", "web", "np", "TCP")].node_port == 0
    warnings = [m for level, m in messages if level == logging.WARNING]
    assert len(warnings) == 10, warnings  # 2 IPs, 1 range, 6 ports, 1 hcnp
    assert any("IPv6" in m for level, m in messages if level == logging.DEBUG)


def test_invalid_names_skip_the_service() -> None:
    messages: list[tuple[int, str]] = []
    assert service_port_infos(svc(name='we"b'), collect(messages)) == {}
    assert messages[0][0] == logging.WARNING


def test_traffic_policies() -> None:
    def info(**spec: Any):
        return service_port_infos(svc(**spec), collect([]))[HTTP]

    # eTP applies only to externally reachable services.
    assert not info(externalTrafficPolicy="Local").external_policy_local
    assert info(type="NodePort", externalTrafficPolicy="Local").external_policy_local
    assert info(externalIPs=["1.2.3.4"], externalTrafficPolicy="Local").external_policy_local
    lb = info(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=31000)
    assert lb.external_policy_local and lb.health_check_node_port == 31000
    # The health check port belongs to LoadBalancer services only.
    assert info(type="NodePort", externalTrafficPolicy="Local",
                healthCheckNodePort=31000).health_check_node_port == 0
    assert info(internalTrafficPolicy="Local").internal_policy_local


@pytest.mark.parametrize("annotations,distribution,expected", [
    ({}, "", False),
    ({"service.kubernetes.io/topology-mode": "Auto"}, "", True),
    ({"service.kubernetes.io/topology-mode": "auto"}, "", True),
    ({"service.kubernetes.io/topology-mode": "Disabled"}, "", False),
    ({"service.kubernetes.io/topology-aware-hints": "auto"}, "", True),
    # topology-mode wins over the deprecated annotation
    ({"service.kubernetes.io/topology-mode": "disabled",
      "service.kubernetes.io/topology-aware-hints": "auto"}, "", False),
    ({}, "PreferClose", True),
    ({"other.io/topology-mode": "Auto"}, "", False),
])
def test_topology_aware(annotations: dict[str, str], distribution: str, expected: bool) -> None:
    s = svc(annotations=annotations, trafficDistribution=distribution)
    assert service_port_infos(s, collect([]))[HTTP].topology_aware is expected


def test_service_keeps_only_service_annotations() -> None:
    s = svc(annotations={"service.kubernetes.io/topology-mode": "Auto",
                         "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            trafficDistribution="PreferClose")
    assert s.annotations == (("service.kubernetes.io/topology-mode", "Auto"),)
    assert s.traffic_distribution == "PreferClose"


# ------------------------------------------------------------------------------------ trackers


def test_skipped_service_is_logged_once_per_object(caplog: pytest.LogCaptureFixture) -> None:
    tracker = ServiceChangeTracker()
    headless = svc(clusterIP="None")
    with caplog.at_level(logging.DEBUG, logger="netplane.proxy.tracker"):
        assert not tracker.update(None, headless)
        assert not tracker.update(headless, headless)
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 1 and "default/web" in msgs[0]
        tracker.update(headless, None)  # deleted: a new object of that name is reported again
        tracker.update(None, headless)
        assert len(caplog.records) == 2


def test_tracker_drops_changes_that_cancel_out() -> None:
    w = World()
    w.builder.apply()
    s = svc()
    assert w.services.update(None, s)
    assert not w.services.update(s, None)  # added and deleted before any sync
    assert w.services.pending() == 0
    s2 = svc(ports=[{"name": "http", "port": 81}])
    assert w.services.update(None, s)
    assert w.services.update(s, s2)
    assert w.services.pending() == 1
    assert w.builder.apply().changed == {HTTP}
    # a change that does not alter any ServicePortInfo is not pending
    relabelled = Service.from_dict({**_raw(s2), "metadata": {"name": "web", "namespace":
                                    "default", "labels": {"x": "y"}}})
    assert not w.services.update(s2, relabelled)


def _raw(s: Service) -> dict[str, Any]:
    return {"spec": {"clusterIP": s.cluster_ips[0],
                     "ports": [{"name": p.name, "port": p.port} for p in s.ports]}}


def test_first_apply_reports_everything_then_only_changes() -> None:
    w = World()
    a, b = svc("a"), svc("b")
    w.services.update(None, a)
    w.services.update(None, b)
    w.slices.update(None, eps("a-1", "a", [ep("10.0.0.1")]))
    w.slices.update(None, eps("orphan-1", "orphan", [ep("10.0.0.9")]))
    first = w.builder.apply()
    name_a = ServicePortName("default", "a", "http", "TCP")
    name_b = ServicePortName("default", "b", "http", "TCP")
    orphan = ServicePortName("default", "orphan", "http", "TCP")
    assert first.changed == {name_a, name_b, orphan}
    assert set(first.services) == {name_a, name_b}
    assert first.endpoints[name_a] == (EndpointInfo("10.0.0.1", 8080),)

    assert w.builder.apply().changed == frozenset()

    b2 = svc("b", ports=[{"name": "http", "port": 8000}])
    w.services.update(b, b2)
    second = w.builder.apply()
    assert second.changed == {name_b}
    assert second.services[name_b].port == 8000
    assert first.services[name_b].port == 80  # snapshots are independent

    w.services.update(a, None)
    third = w.builder.apply()
    assert third.changed == {name_a} and name_a not in third.services
    assert third.endpoints[name_a]  # endpoints live on until their slices go
    with pytest.raises(TypeError):
        third.services[name_a] = third.services[name_b]  # type: ignore[index]


def test_port_removed_from_service_is_changed() -> None:
    w = World()
    two = svc(ports=[{"name": "http", "port": 80}, {"name": "https", "port": 443}])
    w.services.update(None, two)
    w.builder.apply()
    w.services.update(two, svc(ports=[{"name": "http", "port": 80}]))
    state = w.builder.apply()
    https = ServicePortName("default", "web", "https", "TCP")
    assert state.changed == {https} and https not in state.services


# ----------------------------------------------------------------------------------- endpoints


def test_named_target_port_resolves_through_the_slice_port_name_and_protocol() -> None:
    w = World()
    w.services.update(None, svc(ports=[
        {"name": "http", "port": 80, "targetPort": "web"},
        {"name": "metrics", "port": 9090, "targetPort": "prom"},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
    ]))
    w.slices.update(None, eps("web-1", "web", [ep("10.0.0.1"), ep("10.0.0.2")], ports=[
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
        {"name": "dns", "port": 5353, "protocol": "TCP"},  # wrong protocol: not the UDP port
    ]))
    state = w.builder.apply()
    assert [e.port for e in state.endpoints[HTTP]] == [8080, 8080]
    assert [e.port for e in state.endpoints[ServicePortName("default", "web", "metrics",
                                                            "TCP")]] == [9100, 9100]
    assert ServicePortName("default", "web", "dns", "UDP") not in state.endpoints


def test_slices_merge_dedup_prefers_ready_and_sort_numerically() -> None:
    for first_ready in (True, False):  # the outcome must not depend on which slice has it
        w = World()
        w.services.update(None, svc())
        w.slices.update(None, eps("web-a", "web", [
            ep("10.0.0.10"), ep("10.0.0.3", ready=first_ready, node="n1")]))
        w.slices.update(None, eps("web-b", "web", [
            ep("10.0.0.3", ready=not first_ready, node="n1"), ep("10.0.0.9")]))
        got = w.builder.apply().endpoints[HTTP]
        assert [e.ip for e in got] == ["10.0.0.3", "10.0.0.9", "10.0.0.10"]
        assert got[0].ready


def test_slice_update_delete_and_move_report_the_service_ports() -> None:
    w = World()
    w.services.update(None, svc())
    one = eps("web-1", "web", [ep("10.0.0.1")])
    w.slices.update(None, one)
    w.builder.apply()
    two = eps("web-1", "web", [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True,
                                                      terminating=True)])
    assert w.slices.update(one, two)
    state = w.builder.apply()
    assert state.changed == {HTTP}
    assert state.endpoints[HTTP][1] == EndpointInfo("10.0.0.2", 8080, ready=False, serving=True,
                                                    terminating=True)
    # same content again: nothing pending
    assert not w.slices.update(two, eps("web-1", "web", two_raw := [ep("10.0.0.1"), ep(
        "10.0.0.2", ready=False, serving=True, terminating=True)]))
    assert two_raw
    # the slice is relabelled to another service: both are affected
    moved = eps("web-1", "other", [ep("10.0.0.1")])
    w.slices.update(two, moved)
    state = w.builder.apply()
    other = ServicePortName("default", "other", "http", "TCP")
    assert state.changed == {HTTP, other}
    assert HTTP not in state.endpoints and state.endpoints[other]
    w.slices.update(moved, None)
    state = w.builder.apply()
    assert state.changed == {other} and other not in state.endpoints


def test_endpoint_fields_are_carried_over() -> None:
    w = World()
    w.slices.update(None, eps("web-1", "web", [
        ep("10.0.0.1", node="n1", zone="z1", hints=["z1", "z2"]),
        ep("10.0.0.2", ready=None, node="n2", zone="z2"),  # nil ready means ready
        ep("10.0.0.3", ready=False),  # serving defaults to ready
    ]))
    got = w.builder.apply().endpoints[HTTP]
    assert got[0] == EndpointInfo("10.0.0.1", 8080, node_name="n1", zone="z1",
                                  zone_hints=("z1", "z2"))
    assert got[1].ready and got[1].zone_hints is None and got[1].node_name == "n2"
    assert not got[2].ready and not got[2].serving and not got[2].terminating


def test_unusable_slices_and_entries_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    with caplog.at_level(logging.DEBUG, logger="netplane.proxy.tracker"):
        assert not w.slices.update(None, eps("v6", "web", [ep("fd00::1")], address_type="IPv6"))
        assert not w.slices.update(None, EndpointSlice.from_dict(
            {"metadata": {"name": "nolabel", "namespace": "default"},
             "endpoints": [ep("10.0.0.1")]}))
        w.slices.update(None, eps("web-1", "web", [
            ep("10.0.0.1"), ep("10.0.0.2; -j ACCEPT"), ep("fd00::2"), {"addresses": []}],
            ports=[{"name": "http", "port": 8080}, {"name": "all"},  # no port number
                   {"name": "Bad_Name", "port": 1}, {"name": "x", "port": 1,
                                                     "protocol": "ICMP"}]))
        state = w.builder.apply()
    assert dict(state.endpoints) == {HTTP: (EndpointInfo("10.0.0.1", 8080),)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all("default/web-1" in m for m in warnings) and len(warnings) == 5, warnings


def test_label_only_slice_update_is_not_a_change():
    from netplane.k8s.objects import EndpointSlice
    from netplane.proxy.tracker import EndpointSliceChangeTracker

    raw = {"metadata": {"namespace": "default", "name": "s",
                        "labels": {"kubernetes.io/service-name": "w"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": True}}],
           "ports": [{"name": "a", "port": 8080, "protocol": "TCP"}]}
    relabelled = {**raw, "metadata": {**raw["metadata"],
                                      "labels": {"kubernetes.io/service-name": "w", "x": "y"}}}
    tracker = EndpointSliceChangeTracker()
    assert not tracker.update(EndpointSlice.from_dict(raw), EndpointSlice.from_dict(relabelled))
    moved = {**raw, "endpoints": [{"addresses": ["10.244.0.3"], "conditions": {"ready": True}}]}
    assert tracker.update(EndpointSlice.from_dict(raw), EndpointSlice.from_dict(moved))
