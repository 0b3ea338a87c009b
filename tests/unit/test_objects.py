"""objects.from_dict: API defaulting rules, hashability, and never raising on odd input."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from netplane.k8s.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Namespace,
    Node,
    Pod,
    Service,
    ServicePort,
    TargetRef,
    pairs_get,
)

ALL = (Service, EndpointSlice, Pod, Node, Namespace, ServicePort, Endpoint, EndpointPort)


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
            "labels": {"app": "web", "tier": "front"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http-port",
                 "nodePort": 30080},
                {"name": "dns", "protocol": "UDP", "port": 53},
                {"port": 8443, "targetPort": 443, "appProtocol": "https"},
            ],
            "selector": {"tier": "front", "app": "web"},
            "externalIPs": ["192.0.2.7"],
            "loadBalancerSourceRanges": ["198.51.100.0/24"],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "publishNotReadyAddresses": True,
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"hostname": "lb.x"}]}},
    }


def test_service_full() -> None:
    svc = Service.from_dict(_service())
    assert svc.key == "shop/web"
    assert svc.resource_version == "42"
    assert svc.uid == "u-1"
    assert svc.type == "LoadBalancer"
    assert svc.cluster_ips == ("10.96.0.10", "fd00::10")
    assert svc.ip_families == ("IPv4", "IPv6")
    assert svc.ports == (
        ServicePort("http", "TCP", 80, "http-port", 30080),
        ServicePort("dns", "UDP", 53, 53, 0),  # targetPort defaults to port
        ServicePort("", "TCP", 8443, 443, 0, "https"),
    )
    assert svc.selector == (("app", "web"), ("tier", "front"))  # sorted pairs
    assert svc.external_ips == ("192.0.2.7",)
    assert svc.load_balancer_ips == ("203.0.113.5",)
    assert svc.load_balancer_source_ranges == ("198.51.100.0/24",)
    assert svc.session_affinity == "ClientIP"
    assert svc.session_affinity_timeout == 600
    assert svc.external_traffic_policy == "Local"
    assert svc.internal_traffic_policy == "Local"
    assert svc.health_check_node_port == 32000
    assert svc.publish_not_ready_addresses is True
    assert pairs_get(svc.labels, "tier") == "front"
    assert not svc.headless


def test_service_defaults() -> None:
    svc = Service.from_dict({"metadata": {"name": "a", "namespace": "n"},
                             "spec": {"clusterIP": "None", "sessionAffinity": "ClientIP"}})
    assert svc.type == "ClusterIP"
    assert svc.cluster_ips == ("None",)  # clusterIPs absent: falls back to clusterIP
    assert svc.headless
    assert svc.session_affinity_timeout == 10800  # the API default for ClientIP
    assert svc.external_traffic_policy == "Cluster"
    assert svc.internal_traffic_policy == "Cluster"
    assert svc.ports == () and svc.selector == ()
    plain = Service.from_dict({"metadata": {"name": "b"}})
    assert plain.session_affinity == "None" and plain.session_affinity_timeout == 0
    assert plain.key == "b"


def test_external_name_service() -> None:
    svc = Service.from_dict({"metadata": {"name": "ext", "namespace": "n"},
                             "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert svc.type == "ExternalName" and svc.external_name == "example.com"


def test_equality_ignores_resource_version_and_unused_fields() -> None:
    a = _service()
    b = _service()
    b["metadata"]["resourceVersion"] = "43"
    b["metadata"]["annotations"] = {"touched": "yes"}
    b["metadata"]["managedFields"] = []
    b["spec"]["selector"] = {"app": "web", "tier": "front"}  # same map, other order
    sa, sb = Service.from_dict(a), Service.from_dict(b)
    assert sa == sb and hash(sa) == hash(sb)
    assert sa.resource_version != sb.resource_version
    b["spec"]["ports"][0]["port"] = 81
    assert Service.from_dict(b) != sa


def test_objects_are_frozen_and_hashable() -> None:
    svc = Service.from_dict(_service())
    with pytest.raises(dataclasses.FrozenInstanceError):
        svc.name = "other"  # type: ignore[misc]
    assert not hasattr(svc, "__dict__")  # slotted
    assert len({svc, Service.from_dict(_service())}) == 1
    sl = EndpointSlice.from_dict(_slice())
    assert hash(sl) == hash(EndpointSlice.from_dict(_slice()))


def _slice() -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": "x"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {},
             "nodeName": "n1", "zone": "z1", "hostname": "web-0",
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "p"},
             "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}]}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"],
             "conditions": {"ready": False, "serving": True, "terminating": True}},
            {"addresses": ["10.0.0.4"]},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                  {"name": "", "port": None}],
    }


def test_endpointslice_and_condition_defaults() -> None:
    sl = EndpointSlice.from_dict(_slice())
    assert sl.key == "shop/web-abc" and sl.service_name == "web"
    assert sl.service_key == "shop/web"
    assert sl.address_type == "IPv4" and sl.resource_version == "7"
    e0, e1, e2, e3 = sl.endpoints
    # ready nil -> true, serving nil -> ready, terminating nil -> false
    assert (e0.ready, e0.serving, e0.terminating) == (True, True, False)
    assert (e1.ready, e1.serving, e1.terminating) == (False, False, False)
    assert (e2.ready, e2.serving, e2.terminating) == (False, True, True)
    assert (e3.ready, e3.serving, e3.terminating) == (True, True, False)
    assert e0.node_name == "n1" and e0.zone == "z1" and e0.hostname == "web-0"
    assert e0.target_ref == TargetRef("Pod", "shop", "web-0")
    assert e0.hints_zones == ("z1", "z2")
    assert e1.target_ref is None
    assert sl.ports == (EndpointPort("http", 8080, "TCP", "http"), EndpointPort("", None, "TCP"))


def test_endpointslice_without_service_label() -> None:
    sl = EndpointSlice.from_dict({"metadata": {"name": "x", "namespace": "n"}})
    assert sl.service_name == "" and sl.service_key == ""
    assert sl.address_type == "IPv4" and sl.endpoints == () and sl.ports == ()


def test_pod() -> None:
    pod = Pod.from_dict({
        "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"a": "b"},
                     "deletionTimestamp": "2024-01-01T00:00:00Z", "resourceVersion": "9"},
        "spec": {"nodeName": "node-1", "hostNetwork": True, "hostname": "h",
                 "subdomain": "s"},
        "status": {"phase": "Running", "hostIP": "192.168.1.2", "podIP": "10.0.0.9",
                   "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}],
                   "conditions": [{"type": "Initialized", "status": "True"},
                                  {"type": "Ready", "status": "True"}]},
    })
    assert pod.key == "n/p" and pod.uid == "u" and pod.node_name == "node-1"
    assert pod.pod_ips == ("10.0.0.9", "fd00::9")
    assert pod.host_ip == "192.168.1.2" and pod.phase == "Running"
    assert pod.host_network and pod.hostname == "h" and pod.subdomain == "s"
    assert pod.deletion_timestamp == "2024-01-01T00:00:00Z"
    assert pod.ready and pod.labels == (("a", "b"),)
    bare = Pod.from_dict({"metadata": {"name": "q", "namespace": "n"},
                          "status": {"podIP": "10.0.0.1",
                                     "conditions": [{"type": "Ready", "status": "False"}]}})
    assert bare.pod_ips == ("10.0.0.1",) and bare.phase == "Pending" and not bare.ready
    assert bare.deletion_timestamp is None


def test_node() -> None:
    node = Node.from_dict({
        "metadata": {"name": "node-1", "uid": "u",
                     "labels": {"topology.kubernetes.io/zone": "z1"},
                     "annotations": {"netplane.io/tunnel": "vxlan"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"],
                 "unschedulable": True},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.2"},
                                 {"type": "Hostname", "address": "node-1"}]},
    })
    assert node.key == "node-1" and node.zone == "z1" and node.unschedulable
    assert node.pod_cidrs == ("10.244.1.0/24", "fd00:1::/64")
    assert node.addresses == (("InternalIP", "192.168.1.2"), ("Hostname", "node-1"))
    assert node.address("InternalIP") == "192.168.1.2" and node.address("ExternalIP") is None
    assert pairs_get(node.annotations, "netplane.io/tunnel") == "vxlan"
    legacy = Node.from_dict({"metadata": {"name": "n2", "labels": {
        "failure-domain.beta.kubernetes.io/zone": "old"}}, "spec": {"podCIDR": "10.0.0.0/24"}})
    assert legacy.zone == "old" and legacy.pod_cidrs == ("10.0.0.0/24",)


def test_namespace() -> None:
    ns = Namespace.from_dict({"metadata": {"name": "shop", "labels": {"team": "a"},
                                           "resourceVersion": "3"}})
    assert ns.key == "shop" and ns.labels == (("team", "a"),) and ns.resource_version == "3"


ODD_VALUES: list[Any] = [None, 0, 1, -5, 3.5, True, "", "x", "None", [], [None], [1, "a"], {},
                         {"a": None}, {1: 2}, {"type": None}, b"bytes", float("nan")]
FIELDS = ["metadata", "spec", "status", "ports", "endpoints", "addresses", "conditions",
          "targetPort", "port", "labels", "podIPs", "clusterIPs", "selector", "targetRef",
          "hints", "addressType", "ingress", "loadBalancer", "sessionAffinityConfig",
          "name", "namespace", "nodeName", "podCIDRs", "type", "protocol"]


def _odd_docs() -> list[Any]:
    docs: list[Any] = list(ODD_VALUES)
    for fieldname, value in itertools.product(FIELDS, ODD_VALUES):
        docs.append({fieldname: value})
        docs.append({"metadata": {fieldname: value}, "spec": {fieldname: value},
                     "status": {fieldname: value}})
        docs.append({"spec": {"ports": [{fieldname: value}, value]},
                     "endpoints": [{fieldname: value, "conditions": {"ready": value}}, value],
                     "ports": [{fieldname: value}],
                     "status": {"conditions": [value, {"type": value}],
                                "podIPs": [value, {"ip": value}],
                                "addresses": [value, {"address": value, "type": value}],
                                "loadBalancer": {"ingress": [value, {"ip": value}]}}})
    return docs


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_from_dict_never_raises(cls: Any) -> None:
    for doc in _odd_docs():
        obj = cls.from_dict(doc)
        hash(obj)  # still hashable: no lists or dicts slipped through
        assert obj == cls.from_dict(doc)


def test_odd_input_falls_back_to_defaults() -> None:
    assert Service.from_dict(None) == Service()
    assert Service.from_dict({"spec": {"ports": [{"port": "80", "targetPort": None}]}}).ports == (
        ServicePort(port=80, target_port=80),)
    assert Endpoint.from_dict({"conditions": {"ready": "yes"}}).ready is True
    assert Pod.from_dict({"metadata": {"labels": {"a": 1}}}).labels == (("a", "1"),)
    assert EndpointPort.from_dict({"port": "x"}).port is None
