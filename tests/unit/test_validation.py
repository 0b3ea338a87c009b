"""Validation of stored objects: valid objects pass, each rule fails with the server's field and
reason, helpers handle the edge cases, and garbage of any type never raises."""

from __future__ import annotations

import copy
import math
import random
import re
from typing import Any

import pytest

from netplane.apiserver import validation as v
from netplane.apiserver import validation_names as n
from netplane.apiserver.resources import RESOURCES

RT = {rt.kind: rt for rt in RESOURCES}
DELETE = object()


def valid(kind: str) -> dict:
    meta = {"name": "web", "namespace": "default", "labels": {"app": "web"},
            "annotations": {"example.com/owner": "team-a"}}
    containers = [{"name": "web", "image": "nginx:1.25",
                   "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": copy.deepcopy(containers)}}
    objects: dict[str, dict] = {
        "Namespace": {"metadata": {"name": "team-a", "labels": {"team": "a"}},
                      "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}},
        "Node": {"metadata": {"name": "node-1.example"},
                 "spec": {"podCIDR": "10.244.1.0/24",
                          "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
                          "taints": [{"key": "node-role.kubernetes.io/control-plane",
                                      "effect": "NoSchedule"}]},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                                          {"type": "Hostname", "address": "node-1"}]}},
        "Pod": {"metadata": meta,
                "spec": {"containers": containers, "restartPolicy": "Always",
                         "nodeName": "node-1", "terminationGracePeriodSeconds": 30,
                         "tolerations": [{"key": "a", "operator": "Exists"}]},
                "status": {"podIP": "10.244.1.5",
                           "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}],
                           "hostIP": "192.168.1.10", "hostIPs": [{"ip": "192.168.1.10"}]}},
        "Service": {"metadata": meta,
                    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                             "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                             "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                             "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                        "protocol": "TCP"},
                                       {"name": "dns", "port": 53, "targetPort": 53,
                                        "protocol": "UDP"},
                                       {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
                             "sessionAffinity": "ClientIP",
                             "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                             "internalTrafficPolicy": "Cluster"}},
        "Endpoints": {"metadata": meta,
                      "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "node-1",
                                                  "targetRef": {"kind": "Pod", "name": "web"}}],
                                   "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                             {"name": "dns", "port": 53, "protocol": "UDP"}]}]},
        "ConfigMap": {"metadata": meta, "data": {"app.conf": "x=1"},
                      "binaryData": {"blob": "AAEC"}},
        "Event": {"metadata": {"name": "web.17a3c5b2e6f", "namespace": "default"},
                  "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web"},
                  "reason": "Started", "message": "Started container", "type": "Normal",
                  "count": 1, "source": {"component": "kubelet"}},
        "EndpointSlice": {"metadata": {**meta, "labels": {"kubernetes.io/service-name": "web"}},
                          "addressType": "IPv4",
                          "endpoints": [{"addresses": ["10.244.1.5"],
                                         "conditions": {"ready": True}, "nodeName": "node-1",
                                         "hostname": "web-0"}],
                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        "NetworkPolicy": {"metadata": meta, "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "fe"}}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                         "ports": [{"protocol": "TCP", "port": 80, "endPort": 90},
                                   {"port": "http"}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                {"key": "team", "operator": "In", "values": ["a"]}]}}]}]}},
        "DaemonSet": {"metadata": meta, "spec": {
            "selector": {"matchLabels": {"app": "web"}}, "template": copy.deepcopy(template),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}},
            "status": {"numberReady": 1}},
        "Deployment": {"metadata": meta, "spec": {
            "replicas": 3, "selector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["web"]}]},
            "template": copy.deepcopy(template),
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}},
            "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 2}},
        "Lease": {"metadata": meta, "spec": {"holderIdentity": "node-1",
                                             "leaseDurationSeconds": 40, "leaseTransitions": 0,
                                             "renewTime": "2024-01-01T00:00:00.000000Z"}},
        "ServiceAccount": {"metadata": meta, "automountServiceAccountToken": False},
        "ClusterRole": {"metadata": {"name": "system:web-reader", "labels": {"app": "web"}},
                        "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"],
                                   "verbs": ["get", "list", "watch"]},
                                  {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]},
        "Role": {"metadata": meta, "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                                              "resourceNames": ["web"], "verbs": ["get", "patch"]}]},
        "ClusterRoleBinding": {
            "metadata": {"name": "system:web-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:web-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "default"},
                         {"kind": "Group", "name": "system:authenticated",
                          "apiGroup": "rbac.authorization.k8s.io"}]},
        "RoleBinding": {"metadata": meta, "roleRef": {"kind": "Role", "name": "web"},
                        "subjects": [{"kind": "ServiceAccount", "name": "web"},
                                     {"kind": "User", "name": "jane@example.com"}]},
    }
    return copy.deepcopy(objects[kind])


def patch(obj: Any, path: str, value: Any) -> Any:
    """Set (or, with DELETE, remove) `a.b[0].c` in obj; returns obj."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node = obj
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    elif isinstance(node, list) and parts[-1] == len(node):
        node.append(value)
    else:
        node[parts[-1]] = value
    return obj


def variant(kind: str, *edits: tuple[str, Any]) -> dict:
    obj = valid(kind)
    for path, value in edits:
        patch(obj, path, value)
    return obj


def fields(causes: list[n.Cause]) -> set[tuple[str, str]]:
    return {(c.field, c.reason) for c in causes}


# --- valid objects pass --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(RT))
def test_valid_examples_pass(kind: str) -> None:
    obj = valid(kind)
    assert v.validate_create(RT[kind], obj) == []
    assert v.validate_update(RT[kind], valid(kind), obj) == []
    assert v.validate_status_update(RT[kind], valid(kind), obj) == []
    assert obj == valid(kind), "validation must not modify its input"


def test_generate_name_stands_in_for_name() -> None:
    obj = variant("Pod", ("metadata.name", DELETE), ("metadata.generateName", "web-"))
    assert v.validate_create(RT["Pod"], obj) == []


# --- each rule fails with the server's field and reason ----------------------------------------

REQ, INV, NS, DUP, FORB, LONG, MANY, TYPE = (
    n.REQUIRED, n.INVALID, n.NOT_SUPPORTED, n.DUPLICATE, n.FORBIDDEN, n.TOO_LONG, n.TOO_MANY,
    n.TYPE_INVALID)
BIG = "x" * (n.TOTAL_ANNOTATION_SIZE_LIMIT + 1)
CREATE_CASES = [
    # metadata
    ("Pod", [("metadata.name", "Foo_Bar")], "metadata.name", INV),
    ("Pod", [("metadata.name", DELETE)], "metadata.name", REQ),
    ("Pod", [("metadata.name", DELETE), ("metadata.generateName", "Web-")],
     "metadata.generateName", INV),
    ("Namespace", [("metadata.name", "team.a")], "metadata.name", INV),
    ("Service", [("metadata.name", "1web")], "metadata.name", INV),
    ("Pod", [("metadata.namespace", DELETE)], "metadata.namespace", REQ),
    ("Pod", [("metadata.namespace", "Bad_NS")], "metadata.namespace", INV),
    ("Node", [("metadata.namespace", "default")], "metadata.namespace", FORB),
    ("Pod", [("metadata.labels", {"-bad": "x"})], "metadata.labels", INV),
    ("Pod", [("metadata.labels", {"ok": "v" * 64})], "metadata.labels", INV),
    ("Pod", [("metadata.labels", ["app"])], "metadata.labels", TYPE),
    ("Pod", [("metadata.annotations", {"a": BIG})], "metadata.annotations", LONG),
    ("Pod", [("metadata.annotations", {"bad key": "x"})], "metadata.annotations", INV),
    ("Pod", [("metadata.generation", -1)], "metadata.generation", INV),
    ("Pod", [("metadata.ownerReferences", [{"apiVersion": "v1", "kind": "Node", "name": "n"}])],
     "metadata.ownerReferences.uid", INV),
    ("Pod", [("metadata.finalizers", ["foo"])], "metadata.finalizers[0]", INV),
    ("Pod", [("metadata", [])], "metadata", TYPE),
    # Pod
    ("Pod", [("spec.containers", DELETE)], "spec.containers", REQ),
    ("Pod", [("spec.containers", [])], "spec.containers", REQ),
    ("Pod", [("spec", [])], "spec", TYPE),
    ("Pod", [("spec.containers[0].name", "Web")], "spec.containers[0].name", INV),
    ("Pod", [("spec.containers[1]", {"name": "web", "image": "x"})],
     "spec.containers[1].name", DUP),
    ("Pod", [("spec.containers[0].image", DELETE)], "spec.containers[0].image", REQ),
    ("Pod", [("spec.containers[0].ports[0].containerPort", 0)],
     "spec.containers[0].ports[0].containerPort", REQ),
    ("Pod", [("spec.containers[0].ports[0].containerPort", 70000)],
     "spec.containers[0].ports[0].containerPort", INV),
    ("Pod", [("spec.containers[0].ports[0].containerPort", "80")],
     "spec.containers[0].ports[0].containerPort", TYPE),
    ("Pod", [("spec.containers[0].ports[0].containerPort", 80.0)],
     "spec.containers[0].ports[0].containerPort", TYPE),
    ("Pod", [("spec.containers[0].ports[0].protocol", "HTTP")],
     "spec.containers[0].ports[0].protocol", NS),
    ("Pod", [("spec.containers[0].ports[0].name", "web--http")],
     "spec.containers[0].ports[0].name", INV),
    ("Pod", [("spec.containers[0].ports[0].name", "8080")],
     "spec.containers[0].ports[0].name", INV),
    ("Pod", [("spec.containers[0].ports[0].name", "a" * 16)],
     "spec.containers[0].ports[0].name", INV),
    ("Pod", [("spec.containers[0].ports[1]", {"name": "http", "containerPort": 81})],
     "spec.containers[0].ports[1].name", DUP),
    ("Pod", [("spec.containers[0].ports[0].hostPort", 70000)],
     "spec.containers[0].ports[0].hostPort", INV),
    ("Pod", [("spec.hostNetwork", True), ("spec.containers[0].ports[0].hostPort", 8080)],
     "spec.containers[0].ports[0].containerPort", INV),
    ("Pod", [("spec.restartPolicy", "Sometimes")], "spec.restartPolicy", NS),
    ("Pod", [("spec.dnsPolicy", "Google")], "spec.dnsPolicy", NS),
    ("Pod", [("spec.activeDeadlineSeconds", 0)], "spec.activeDeadlineSeconds", INV),
    ("Pod", [("spec.nodeName", "Node_1")], "spec.nodeName", INV),
    ("Pod", [("spec.hostname", "a.b")], "spec.hostname", INV),
    ("Pod", [("spec.schedulingGates", [{"name": "example.com/gate"}])], "spec.nodeName", FORB),
    ("Pod", [("spec.ephemeralContainers", [{"name": "debug", "image": "busybox"}])],
     "spec.ephemeralContainers", FORB),
    # Service
    ("Service", [("spec.ports", [])], "spec.ports", REQ),
    ("Service", [("spec.ports[0].port", 0)], "spec.ports[0].port", INV),
    ("Service", [("spec.ports[0].port", 65536)], "spec.ports[0].port", INV),
    ("Service", [("spec.ports[0].port", "80")], "spec.ports[0].port", TYPE),
    ("Service", [("spec.ports[2].protocol", "UDP")], "spec.ports[2]", DUP),
    ("Service", [("spec.ports[1].name", DELETE)], "spec.ports[1].name", REQ),
    ("Service", [("spec.ports[1].name", "http")], "spec.ports[1].name", DUP),
    ("Service", [("spec.ports[0].name", "HTTP")], "spec.ports[0].name", INV),
    ("Service", [("spec.ports[0].protocol", "ICMP")], "spec.ports[0].protocol", NS),
    ("Service", [("spec.ports[0].targetPort", 70000)], "spec.ports[0].targetPort", INV),
    ("Service", [("spec.ports[0].targetPort", "HTTP")], "spec.ports[0].targetPort", INV),
    ("Service", [("spec.ports[0].targetPort", [80])], "spec.ports[0].targetPort", TYPE),
    ("Service", [("spec.ports[0].nodePort", 30080)], "spec.ports[0].nodePort", FORB),
    ("Service", [("spec.type", "Foo")], "spec.type", NS),
    ("Service", [("spec.clusterIP", "10.96.0.300"), ("spec.clusterIPs", DELETE)],
     "spec.clusterIPs[0]", INV),
    ("Service", [("spec.clusterIP", "010.96.0.10"), ("spec.clusterIPs", DELETE)],
     "spec.clusterIPs[0]", INV),
    ("Service", [("spec.clusterIPs", ["10.96.0.11"])], "spec.clusterIPs", INV),
    ("Service", [("spec.clusterIP", DELETE)], "spec.clusterIPs", INV),
    ("Service", [("spec.clusterIPs", ["10.96.0.10", "10.96.0.11"]),
                 ("spec.ipFamilies", DELETE)], "spec.clusterIPs", INV),
    ("Service", [("spec.ipFamilies", ["IPv6"])], "spec.clusterIPs[0]", INV),
    ("Service", [("spec.ipFamilies", ["IPv5"])], "spec.ipFamilies[0]", NS),
    ("Service", [("spec.ipFamilyPolicy", "DualStack")], "spec.ipFamilyPolicy", NS),
    ("Service", [("spec.type", "LoadBalancer"), ("spec.clusterIP", "None"),
                 ("spec.clusterIPs", ["None"]), ("spec.ipFamilies", DELETE)],
     "spec.clusterIPs[0]", INV),
    ("Service", [("spec.externalIPs", ["127.0.0.1"])], "spec.externalIPs[0]", INV),
    ("Service", [("spec.externalIPs", ["1.2.3"])], "spec.externalIPs[0]", INV),
    ("Service", [("spec.externalIPs", ["169.254.169.254"])], "spec.externalIPs[0]", INV),
    ("Service", [("spec.type", "ExternalName"), ("spec.clusterIP", DELETE),
                 ("spec.clusterIPs", DELETE), ("spec.ipFamilies", DELETE),
                 ("spec.ipFamilyPolicy", DELETE)], "spec.externalName", REQ),
    ("Service", [("spec.type", "ExternalName"), ("spec.externalName", "bad_name"),
                 ("spec.clusterIP", DELETE), ("spec.clusterIPs", DELETE),
                 ("spec.ipFamilies", DELETE), ("spec.ipFamilyPolicy", DELETE)],
     "spec.externalName", INV),
    ("Service", [("spec.type", "ExternalName"), ("spec.externalName", "db.example.com.")],
     "spec.clusterIPs", FORB),
    ("Service", [("spec.sessionAffinity", "Sticky")], "spec.sessionAffinity", NS),
    ("Service", [("spec.sessionAffinityConfig.clientIP.timeoutSeconds", 0)],
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", INV),
    ("Service", [("spec.sessionAffinityConfig.clientIP.timeoutSeconds", 86401)],
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", INV),
    ("Service", [("spec.sessionAffinity", "None")], "spec.sessionAffinityConfig", FORB),
    ("Service", [("spec.externalTrafficPolicy", "Local")], "spec.externalTrafficPolicy", INV),
    ("Service", [("spec.type", "NodePort"), ("spec.externalTrafficPolicy", "Global")],
     "spec.externalTrafficPolicy", NS),
    ("Service", [("spec.internalTrafficPolicy", "Node")], "spec.internalTrafficPolicy", NS),
    ("Service", [("spec.healthCheckNodePort", 30000)], "spec.healthCheckNodePort", INV),
    ("Service", [("spec.loadBalancerSourceRanges", ["10.0.0.0/8"])],
     "spec.LoadBalancerSourceRanges", FORB),
    ("Service", [("spec.type", "LoadBalancer"), ("spec.loadBalancerSourceRanges", ["10.0.0.1/8"])],
     "spec.LoadBalancerSourceRanges[0]", INV),
    ("Service", [("spec.loadBalancerClass", "example.com/lb")], "spec.loadBalancerClass", FORB),
    ("Service", [("spec.selector", {"app": "we b"})], "spec.selector", INV),
    # EndpointSlice
    ("EndpointSlice", [("addressType", DELETE)], "addressType", REQ),
    ("EndpointSlice", [("addressType", "IP")], "addressType", NS),
    ("EndpointSlice", [("endpoints[0].addresses", ["fd00::1"])], "endpoints[0].addresses[0]", INV),
    ("EndpointSlice", [("endpoints[0].addresses", ["127.0.0.1"])],
     "endpoints[0].addresses[0]", INV),
    ("EndpointSlice", [("endpoints[0].addresses", [])], "endpoints[0].addresses", REQ),
    ("EndpointSlice", [("endpoints[0].addresses", [f"10.0.0.{i}" for i in range(1, 102)])],
     "endpoints[0].addresses", MANY),
    ("EndpointSlice", [("endpoints", [{"addresses": ["10.0.0.1"]}] * 1001)], "endpoints", MANY),
    ("EndpointSlice", [("addressType", "FQDN"), ("endpoints[0].addresses", ["localhost"])],
     "endpoints[0].addresses[0]", INV),
    ("EndpointSlice", [("endpoints[0].conditions.ready", "yes")],
     "endpoints[0].conditions.ready", TYPE),
    ("EndpointSlice", [("endpoints[0].nodeName", "Node_1")], "endpoints[0].nodeName", INV),
    ("EndpointSlice", [("endpoints[0].hostname", "web.0")], "endpoints[0].hostname", INV),
    ("EndpointSlice", [("ports[0].protocol", "ICMP")], "ports[0].protocol", NS),
    ("EndpointSlice", [("ports[0].name", "HTTP")], "ports[0].name", INV),
    ("EndpointSlice", [("ports", [{"port": 80}, {"port": 81}])], "ports[1].name", DUP),
    ("EndpointSlice", [("ports[0].port", "80")], "ports[0].port", TYPE),
    # Endpoints
    ("Endpoints", [("subsets[0].addresses[0].ip", "10.0.0.256")], "subsets[0].addresses[0].ip",
     INV),
    ("Endpoints", [("subsets[0].addresses[0].ip", "127.0.0.1")], "subsets[0].addresses[0].ip",
     INV),
    ("Endpoints", [("subsets[0].addresses", [])], "subsets[0]", REQ),
    ("Endpoints", [("subsets[0].ports[1].name", DELETE)], "subsets[0].ports[1].name", REQ),
    ("Endpoints", [("subsets[0].ports[0].port", 0)], "subsets[0].ports[0].port", INV),
    ("Endpoints", [("subsets[0].addresses[0].nodeName", "Node_1")],
     "subsets[0].addresses[0].nodeName", INV),
    # Node
    ("Node", [("spec.podCIDR", "10.244.2.0/24")], "spec.podCIDRs", INV),
    ("Node", [("spec.podCIDRs", DELETE), ("spec.podCIDR", "10.244.1.1/24")], "spec.podCIDR", INV),
    ("Node", [("spec.podCIDRs[1]", "10.245.1.0/24")], "spec.podCIDRs", INV),
    ("Node", [("spec.podCIDRs[1]", "010.244.2.0/24")], "spec.podCIDRs[1]", INV),
    ("Node", [("spec.podCIDRs", ["10.244.1.0/24", "fd00::/64", "10.9.0.0/16"])],
     "spec.podCIDRs", INV),
    ("Node", [("spec.taints[0].effect", "Evict")], "metadata.taints[0].effect", NS),
    ("Node", [("spec.taints[0].effect", DELETE)], "metadata.taints[0].effect", REQ),
    ("Node", [("metadata.name", "Node_1")], "metadata.name", INV),
    # Namespace, ConfigMap, Event
    ("Namespace", [("spec.finalizers", ["foo"])], "spec.finalizers", INV),
    ("ConfigMap", [("data", {"a/b": "x"})], "data[a/b]", INV),
    ("ConfigMap", [("data", {"..a": "x"})], "data[..a]", INV),
    ("ConfigMap", [("data", {"blob": "x"})], "data[blob]", INV),
    ("ConfigMap", [("data", {"big": "x" * (1024 * 1024 + 1)})], "", LONG),
    ("ConfigMap", [("data", {"n": 5})], "data[n]", TYPE),
    ("Event", [("involvedObject.namespace", "other")], "involvedObject.namespace", INV),
    ("Event", [("eventTime", "2024-01-01T00:00:00.000000Z"), ("reportingInstance", "node-1"),
               ("action", "Start")], "reportingController", REQ),
    ("Event", [("metadata.name", "a/b")], "metadata.name", INV),
    ("Event", [("metadata.name", DELETE)], "metadata.name", REQ),
    ("Event", [("involvedObject", "web")], "involvedObject", TYPE),
    # NetworkPolicy
    ("NetworkPolicy", [("spec.policyTypes", ["Both"])], "spec.policyTypes[0]", NS),
    ("NetworkPolicy", [("spec.policyTypes", ["Ingress", "Egress", "Ingress"])],
     "spec.policyTypes", INV),
    ("NetworkPolicy", [("spec.ingress[0].from[1].ipBlock.cidr", "10.0.0.0/33")],
     "spec.ingress[0].from[1].ipBlock.cidr", INV),
    ("NetworkPolicy", [("spec.ingress[0].from[1].ipBlock.cidr", DELETE)],
     "spec.ingress[0].from[1].ipBlock.cidr", REQ),
    ("NetworkPolicy", [("spec.ingress[0].from[1].ipBlock.except", ["192.168.0.0/16"])],
     "spec.ingress[0].from[1].ipBlock.except[0]", INV),
    ("NetworkPolicy", [("spec.ingress[0].from[1].ipBlock.except", ["10.0.0.0/8"])],
     "spec.ingress[0].from[1].ipBlock.except[0]", INV),
    ("NetworkPolicy", [("spec.ingress[0].from[0]", {})], "spec.ingress[0].from[0]", REQ),
    ("NetworkPolicy", [("spec.ingress[0].from[1].podSelector", {})], "spec.ingress[0].from[1]",
     FORB),
    ("NetworkPolicy", [("spec.ingress[0].ports[0].protocol", "ICMP")],
     "spec.ingress[0].ports[0].protocol", NS),
    ("NetworkPolicy", [("spec.ingress[0].ports[0].endPort", 79)],
     "spec.ingress[0].ports[0].endPort", INV),
    ("NetworkPolicy", [("spec.ingress[0].ports[1].endPort", 90)],
     "spec.ingress[0].ports[1].endPort", INV),
    ("NetworkPolicy", [("spec.ingress[0].ports[1].port", "HTTP")],
     "spec.ingress[0].ports[1].port", INV),
    ("NetworkPolicy", [("spec.egress[0].to[0].namespaceSelector.matchExpressions[0].operator",
                        "Has")], "spec.egress[0].to[0].namespaceSelector.matchExpressions[0]"
     ".operator", INV),
    ("NetworkPolicy", [("spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values", [])],
     "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values", REQ),
    ("NetworkPolicy", [("spec.podSelector", "app=web")], "spec.podSelector", TYPE),
    # Deployment, DaemonSet
    ("Deployment", [("spec.selector", DELETE)], "spec.selector", REQ),
    ("Deployment", [("spec.selector", {})], "spec.selector", INV),
    ("Deployment", [("spec.template.metadata.labels", {"app": "api"})],
     "spec.template.metadata.labels", INV),
    ("Deployment", [("spec.replicas", -1)], "spec.replicas", INV),
    ("Deployment", [("spec.template.spec.restartPolicy", "Never")],
     "spec.template.spec.restartPolicy", NS),
    ("Deployment", [("spec.template.spec.containers[0].image", "")],
     "spec.template.spec.containers[0].image", REQ),
    ("Deployment", [("spec.template.spec.activeDeadlineSeconds", 10)],
     "spec.template.spec.activeDeadlineSeconds", FORB),
    ("Deployment", [("spec.strategy.type", "BlueGreen")], "spec.strategy", NS),
    ("Deployment", [("spec.strategy.rollingUpdate.maxSurge", 0)],
     "spec.strategy.rollingUpdate.maxUnavailable", INV),
    ("Deployment", [("spec.strategy.rollingUpdate.maxUnavailable", "150%")],
     "spec.strategy.rollingUpdate.maxUnavailable", INV),
    ("Deployment", [("spec.strategy.rollingUpdate.maxSurge", "lots")],
     "spec.strategy.rollingUpdate.maxSurge", INV),
    ("Deployment", [("spec.strategy.type", "Recreate")], "spec.strategy.rollingUpdate", FORB),
    ("Deployment", [("spec.progressDeadlineSeconds", 0)], "spec.progressDeadlineSeconds", INV),
    ("Deployment", [("spec.template.metadata.labels", {"app": "web", "-x": "y"})],
     "spec.template.labels", INV),
    ("DaemonSet", [("spec.selector", {})], "spec.selector", INV),
    ("DaemonSet", [("spec.selector", DELETE)], "spec.template.metadata.labels", INV),
    ("DaemonSet", [("spec.updateStrategy.type", "Always")], "spec.updateStrategy", NS),
    ("DaemonSet", [("spec.template.spec.activeDeadlineSeconds", 10)],
     "spec.template.spec.activeDeadlineSeconds", INV),
    # Lease
    ("Lease", [("spec.leaseDurationSeconds", 0)], "spec.leaseDurationSeconds", INV),
    ("Lease", [("spec.leaseDurationSeconds", "40")], "spec.leaseDurationSeconds", TYPE),
    ("Lease", [("spec.leaseTransitions", -1)], "spec.leaseTransitions", INV),
    ("Lease", [("spec.preferredHolder", "node-2")], "spec.preferredHolder", FORB),
    ("Lease", [("spec.strategy", "Bogus")], "spec.strategy.strategy", NS),
    ("Lease", [("spec.renewTime", 5)], "spec.renewTime", TYPE),
]


@pytest.mark.parametrize("kind,edits,field,reason", CREATE_CASES)
def test_create_rule(kind: str, edits: list, field: str, reason: str) -> None:
    causes = v.validate_create(RT[kind], variant(kind, *edits))
    assert (field, reason) in fields(causes), causes


OK_CREATES = [
    ("Service", [("spec.ports", DELETE), ("spec.clusterIP", "None"),
                 ("spec.clusterIPs", ["None"])]),  # headless needs no ports
    ("Service", [("spec.type", "ExternalName"), ("spec.externalName", "db.example.com."),
                 ("spec.ports", DELETE), ("spec.clusterIP", DELETE), ("spec.clusterIPs", DELETE),
                 ("spec.ipFamilies", DELETE), ("spec.ipFamilyPolicy", DELETE)]),
    ("Service", [("spec.clusterIPs", DELETE)]),  # old clients set only clusterIP
    ("Service", [("spec.ports[0].targetPort", 0)]),  # defaulted to port
    ("Service", [("spec.type", "NodePort"), ("spec.externalTrafficPolicy", "Local"),
                 ("spec.ports[0].nodePort", 31000)]),
    ("Service", [("spec.clusterIPs", ["10.96.0.10", "2001:DB8::A"]),
                 ("spec.ipFamilies", ["IPv4", "IPv6"]),
                 ("spec.ipFamilyPolicy", "PreferDualStack")]),
    ("NetworkPolicy", [("spec.podSelector", DELETE)]),  # absent selects every pod
    ("NetworkPolicy", [("spec.podSelector", {})]),
    ("Node", [("spec.podCIDRs", DELETE)]),
    ("Pod", [("spec.hostNetwork", True), ("spec.containers[0].ports[0].hostPort", 80)]),
    ("EndpointSlice", [("ports[0].port", None)]),  # null port means all ports
    ("EndpointSlice", [("addressType", "FQDN"), ("endpoints[0].addresses", ["db.example.com"])]),
    ("Event", [("involvedObject.namespace", DELETE), ("metadata.namespace", "default")]),
]


@pytest.mark.parametrize("kind,edits", OK_CREATES)
def test_create_accepted(kind: str, edits: list) -> None:
    assert v.validate_create(RT[kind], variant(kind, *edits)) == []


# --- updates: create rules plus immutability ----------------------------------------------------

UPDATE_CASES = [
    ("Pod", [("metadata.name", "web2")], "metadata.name", INV),
    ("Pod", [("metadata.namespace", "other")], "metadata.namespace", INV),
    ("Pod", [("metadata.uid", "u-2")], "metadata.uid", INV),
    ("Pod", [("metadata.creationTimestamp", "2030-01-01T00:00:00Z")],
     "metadata.creationTimestamp", INV),
    ("Pod", [("metadata.generation", 1)], "metadata.generation", INV),
    ("Pod", [("spec.nodeName", "node-2")], "spec", FORB),
    ("Pod", [("spec.containers[0].ports[0].containerPort", 81)], "spec", FORB),
    ("Pod", [("spec.containers[1]", {"name": "side", "image": "x"})], "spec.containers", FORB),
    ("Pod", [("spec.containers[0].image", " nginx")], "spec.containers[0].image", INV),
    ("Pod", [("spec.activeDeadlineSeconds", 100)], "spec.activeDeadlineSeconds", INV),
    ("Pod", [("spec.activeDeadlineSeconds", DELETE)], "spec.activeDeadlineSeconds", INV),
    ("Pod", [("spec.tolerations", [])], "spec.tolerations", FORB),
    ("Pod", [("spec.terminationGracePeriodSeconds", 10)], "spec", FORB),
    ("Service", [("spec.clusterIP", "10.96.0.11"), ("spec.clusterIPs", ["10.96.0.11"])],
     "spec.clusterIPs[0]", INV),
    ("Service", [("spec.clusterIP", DELETE), ("spec.clusterIPs", DELETE)],
     "spec.clusterIPs[0]", INV),
    ("EndpointSlice", [("addressType", "IPv6"), ("endpoints[0].addresses", ["fd00::5"])],
     "addressType", INV),
    ("Node", [("spec.podCIDR", "10.244.9.0/24"),
              ("spec.podCIDRs", ["10.244.9.0/24", "fd00:10:244:1::/64"])], "spec.podCIDRs", FORB),
    ("Node", [("spec.providerID", "aws://b")], "spec.providerID", FORB),
    ("Node", [("status.addresses[1]", {"type": "InternalIP", "address": "192.168.1.10"})],
     "status.addresses[1]", DUP),
    ("ConfigMap", [("immutable", True), ("data.app.conf", "x=2")], "data", FORB),
    ("Deployment", [("spec.selector", {"matchLabels": {"app": "web"}})], "spec.selector", INV),
    ("DaemonSet", [("spec.selector.matchLabels.tier", "x"),
                   ("spec.template.metadata.labels.tier", "x")], "spec.selector", INV),
]


def _stored(kind: str) -> dict:
    old = valid(kind)
    meta = old["metadata"]
    meta.update(uid="u-1", creationTimestamp="2024-01-01T00:00:00Z", generation=2)
    if kind == "Pod":
        old["spec"]["activeDeadlineSeconds"] = 60
    if kind == "Node":
        old["spec"]["providerID"] = "aws://a"
    if kind == "ConfigMap":
        old["immutable"] = True
    return old


@pytest.mark.parametrize("kind,edits,field,reason", UPDATE_CASES)
def test_update_rule(kind: str, edits: list, field: str, reason: str) -> None:
    old = _stored(kind)
    new = copy.deepcopy(old)
    for path, value in edits:
        if path == "data.app.conf":
            new["data"]["app.conf"] = value
            continue
        patch(new, path, value)
    causes = v.validate_update(RT[kind], new, old)
    assert (field, reason) in fields(causes), causes


def test_update_messages_match_upstream() -> None:
    old = _stored("Pod")
    new = variant("Pod", ("spec.nodeName", "node-2"))
    new["spec"]["activeDeadlineSeconds"] = 60
    [cause] = v.validate_update(RT["Pod"], new, old)
    assert cause.message.startswith(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
        "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
        "set to 1 if it was previously negative)\n")
    renamed = copy.deepcopy(old)
    renamed["metadata"]["name"] = "web2"
    assert n.Cause("metadata.name", 'Invalid value: "web2": field is immutable') in \
        v.validate_update(RT["Pod"], renamed, old)


OK_UPDATES = [
    ("Pod", [("spec.containers[0].image", "nginx:1.26"), ("spec.activeDeadlineSeconds", 30),
             ("spec.tolerations[1]", {"key": "b", "operator": "Exists"})]),
    ("Pod", [("metadata.uid", DELETE), ("metadata.creationTimestamp", DELETE),
             ("metadata.labels.tier", "x")]),  # the server restores omitted system fields
    ("Service", [("spec.type", "ExternalName"), ("spec.externalName", "db.example.com"),
                 ("spec.clusterIP", DELETE), ("spec.clusterIPs", DELETE),
                 ("spec.ipFamilies", DELETE), ("spec.ipFamilyPolicy", DELETE)]),
    ("Service", [("spec.clusterIPs", DELETE)]),  # dropped by an old client: kept from storage
    ("Service", [("spec.clusterIPs", ["10.96.0.10", "fd00::10"]), ("spec.ipFamilies", DELETE),
                 ("spec.ipFamilyPolicy", "PreferDualStack")]),  # upgrade to dual-stack
    ("Node", [("spec.unschedulable", True)]),
    ("Deployment", [("spec.replicas", 5)]),
]


@pytest.mark.parametrize("kind,edits", OK_UPDATES)
def test_update_accepted(kind: str, edits: list) -> None:
    old = _stored(kind)
    if kind == "ConfigMap":
        old.pop("immutable")
    new = copy.deepcopy(old)
    for path, value in edits:
        patch(new, path, value)
    assert v.validate_update(RT[kind], new, old) == []


def test_service_from_external_name_gets_ip() -> None:
    old = variant("Service", ("spec.type", "ExternalName"), ("spec.externalName", "db.example.com"),
                  ("spec.clusterIP", DELETE), ("spec.clusterIPs", DELETE),
                  ("spec.ipFamilies", DELETE), ("spec.ipFamilyPolicy", DELETE))
    assert v.validate_update(RT["Service"], valid("Service"), old) == []


def _service_with(**spec: Any) -> dict:
    svc = valid("Service")
    svc["spec"].update(spec)
    return svc


@pytest.mark.parametrize("old_spec,new_spec,dropped", [
    ({}, {"clusterIP": None, "clusterIPs": None}, ()),  # replace without the allocated IP
    ({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
      "externalTrafficPolicy": "Local"},
     {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
      "externalTrafficPolicy": "Local"}, ("externalTrafficPolicy",)),
    ({}, {"type": "ExternalName", "externalName": "db.example.com"},
     ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")),
    ({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": True,
      "loadBalancerClass": "example.com/lb"}, {"type": "ClusterIP"},
     ("allocateLoadBalancerNodePorts", "loadBalancerClass")),
])
def test_prepare_service_update(old_spec: dict, new_spec: dict, dropped: tuple) -> None:
    old = _service_with(**old_spec)
    new = copy.deepcopy(old)
    for key, value in new_spec.items():
        if value is None:
            new["spec"].pop(key, None)
        else:
            new["spec"][key] = value
    assert v.validate_update(RT["Service"], new, old) != []  # as sent: a 422
    prepared = v.prepare_service_update(new, old)
    assert v.validate_update(RT["Service"], prepared, old) == []
    assert new != prepared and prepared["spec"].get("clusterIP") in ("10.96.0.10", None)
    assert all(key not in prepared["spec"] for key in dropped)
    assert all("nodePort" not in p for p in prepared["spec"]["ports"]) or \
        prepared["spec"]["type"] != "ClusterIP"


def test_prepare_service_update_carries_node_ports() -> None:
    old = _service_with(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080},
                                                {"name": "dns", "port": 53, "nodePort": 30053}])
    new = _service_with(type="NodePort", ports=[{"name": "http", "port": 80},
                                                {"name": "dns", "port": 53, "nodePort": 30080}])
    ports = v.prepare_service_update(new, old)["spec"]["ports"]
    assert ports == [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "nodePort": 30080}]
    new["spec"]["ports"][1]["nodePort"] = 30054
    ports = v.prepare_service_update(new, old)["spec"]["ports"]
    assert ports[0]["nodePort"] == 30080  # the old value is free again, so it comes back


# --- status subresource ---------------------------------------------------------------------------

STATUS_CASES = [
    ("Pod", [("status.podIPs", DELETE), ("status.podIP", "010.0.0.1")], "status.podIP", INV),
    ("Pod", [("status.podIP", "10.244.1.6")], "status.podIPs[0].ip", INV),
    ("Pod", [("status.podIPs[1].ip", "10.244.1.7")], "status.podIPs", INV),
    ("Pod", [("status.podIPs[1].ip", "10.244.1.5")], "status.podIPs[1]", DUP),
    ("Pod", [("status.podIPs[1].ip", "fd00::zz")], "status.podIPs[1]", INV),
    ("Pod", [("status.podIPs[1].ip", "::ffff:10.1.1.1")], "status.podIPs[1]", INV),
    ("Pod", [("status.hostIPs[0].ip", "192.168.1.11")], "status.hostIPs[0].ip", INV),
    ("Pod", [("spec.nodeName", "node-2")], "status.nodeName", FORB),
    ("Pod", [("status.podIPs", "10.244.1.5")], "status.podIPs", TYPE),
    ("Service", [("status", {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})],
     "status.loadBalancer.ingress", FORB),
    ("Service", [("spec.type", "LoadBalancer"),
                 ("status", {"loadBalancer": {"ingress": [{"ip": "1.2.3.4.5"}]}})],
     "status.loadBalancer.ingress[0].ip", INV),
    ("Service", [("spec.type", "LoadBalancer"),
                 ("status", {"loadBalancer": {"ingress": [{"hostname": "lb", "ipMode": "VIP"}]}})],
     "status.loadBalancer.ingress[0].ipMode", FORB),
    ("Namespace", [("status.phase", "Terminating")], "status.Phase", INV),
    ("Deployment", [("status.availableReplicas", 4)], "status.availableReplicas", INV),
    ("Deployment", [("status.replicas", -1)], "status.replicas", INV),
    ("DaemonSet", [("status.numberReady", -1)], "status.numberReady", INV),
    ("Node", [("status.addresses[1].address", "192.168.1.10"),
              ("status.addresses[1].type", "InternalIP")], "status.addresses[1]", DUP),
]


@pytest.mark.parametrize("kind,edits,field,reason", STATUS_CASES)
def test_status_rule(kind: str, edits: list, field: str, reason: str) -> None:
    causes = v.validate_status_update(RT[kind], variant(kind, *edits), valid(kind))
    assert (field, reason) in fields(causes), causes


def test_status_update_ignores_spec_rules() -> None:
    # the status subresource keeps the stored spec; spec rules belong to the main resource
    assert v.validate_status_update(RT["Service"], variant("Service", ("spec.ports", [])),
                                    valid("Service")) == []


# --- Cause and Status shapes ---------------------------------------------------------------------


def test_cause_and_status_body() -> None:
    causes = v.validate_create(RT["Deployment"],
                               variant("Deployment", ("metadata.name", "Foo_Bar"),
                                       ("spec.replicas", -1)))
    assert causes[0].to_status_cause() == {
        "reason": "FieldValueInvalid", "field": "metadata.name",
        "message": 'Invalid value: "Foo_Bar": ' + n.dns1123_subdomain_errors("Foo_Bar")[0]}
    assert "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*" \
           "[a-z0-9])?)*')" in causes[0].message
    status = v.invalid_status(RT["Deployment"], "Foo_Bar", causes)
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"] == {"name": "Foo_Bar", "kind": "Deployment", "group": "apps",
                                 "causes": [c.to_status_cause() for c in causes]}
    assert status["message"].startswith('Deployment.apps "Foo_Bar" is invalid: [metadata.name: ')
    assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0]" in \
        status["message"]


def test_message_formats() -> None:
    assert n.required("a").message == "Required value"
    assert n.not_supported("p", "HTTP", v.PROTOCOLS).message == \
        'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'
    assert n.duplicate("p", {"port": 80}).message == 'Duplicate value: {"port":80}'
    assert n.type_invalid("spec", [], "object").message == \
        'Invalid value: "array": must be of type object'
    assert n.too_many("e", 1001, 1000).message == "Too many: 1001: must have at most 1000 items"
    assert n.invalid("x", True, "d").message == "Invalid value: true: d"


# --- name, label, IP and CIDR helpers ------------------------------------------------------


@pytest.mark.parametrize("value,ok", [
    ("a", True), ("a" * 63, True), ("a" * 64, False), ("my-name", True), ("123-abc", True),
    ("-a", False), ("a-", False), ("A", False), ("a.b", False), ("", False), ("a_b", False),
    ("a\n", False), ("é", False)])
def test_dns1123_label(value: str, ok: bool) -> None:
    assert n.is_dns1123_label(value) is ok


def test_dns1123_label_messages() -> None:
    assert n.dns1123_label_errors("a.b") == ["must not contain dots"]
    assert n.dns1123_label_errors("a" * 64) == ["must be no more than 63 characters"]


@pytest.mark.parametrize("value,ok", [
    ("example.com", True), ("a" * 253, True), ("a" * 254, False),
    (".".join(["a" * 63] * 3) + "." + "a" * 61, True),  # 253 characters
    (".".join(["a" * 63] * 4), False), ("a..b", False), ("a.-b", False), ("Example.com", False),
    ("a.b.", False)])
def test_dns1123_subdomain(value: str, ok: bool) -> None:
    assert n.is_dns1123_subdomain(value) is ok


@pytest.mark.parametrize("value,ok", [("abc-123", True), ("1abc", False), ("a" * 64, False),
                                      ("a" * 63, True), ("a-", False)])
def test_dns1035_label(value: str, ok: bool) -> None:
    assert n.is_dns1035_label(value) is ok


def test_generate_name_prefix_allows_trailing_dash() -> None:
    assert n.name_is_dns_subdomain("web-", True) == []
    assert n.name_is_dns_subdomain("web-", False) != []
    assert n.name_is_dns1035_label("1web-", True) != []


@pytest.mark.parametrize("value,ok", [
    ("10.0.0.1", True), ("0.0.0.0", True), ("255.255.255.255", True), ("010.0.0.1", False),
    ("10.0.0.01", False), ("256.0.0.1", False), ("1.2.3", False), ("1.2.3.4.5", False),
    ("::", True), ("::1", True), ("2001:db8::1", True), ("2001:DB8::1", True),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", True), ("fe80::1%eth0", False),
    ("::ffff:1.2.3.4", False), ("::1.2.3.4", True), ("2001:db8::g", False),
    ("1:2:3:4:5:6:7:8:9", False), ("", False), (" 10.0.0.1", False), ("10.0.0.1/32", False),
    ("١٠.0.0.1", False), (None, False), (167772161, False)])
def test_is_valid_ip(value: Any, ok: bool) -> None:
    assert n.is_valid_ip(value) is ok


def test_ip_messages() -> None:
    assert n.ip_errors("010.0.0.1") == ["must not have leading 0s"]
    assert n.ip_errors("::ffff:1.2.3.4") == ["must not be an IPv4-mapped IPv6 address"]
    assert n.ip_errors("x") == ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
    assert n.ip_family("10.0.0.1") == 4 and n.ip_family("::1") == 6 and n.ip_family("x") is None


@pytest.mark.parametrize("value,ok", [
    ("10.0.0.0/8", True), ("0.0.0.0/0", True), ("10.0.0.1/32", True), ("10.0.0.1/24", False),
    ("10.0.0.0/33", False), ("10.0.0.0/08", False), ("010.0.0.0/8", False), ("10.0.0.0", False),
    ("10.0.0.0/", False), ("10.0.0.0/8/8", False), ("10.0.0.0/255.0.0.0", False),
    ("2001:db8::/32", True), ("2001:DB8::/32", True), ("2001:db8::1/64", False),
    ("::/0", True), ("::ffff:10.0.0.0/104", False), ("fd00::/129", False), ("fd00::/+8", False),
    (None, False)])
def test_is_valid_cidr(value: Any, ok: bool) -> None:
    assert n.is_valid_cidr(value) is ok


def test_cidr_messages() -> None:
    assert n.cidr_errors("10.0.0.1/24") == ["must not have bits set beyond the prefix length"]
    assert n.cidr_errors("10.0.0.0/08") == ["must not have leading 0s in IP or prefix length"]


@pytest.mark.parametrize("key,ok", [
    ("app", True), ("example.com/app", True), ("a" * 63, True), ("a" * 64, False),
    ("/app", False), ("example.com/", False), ("a/b/c", False), ("Example.com/app", False),
    ("app.kubernetes.io/name", True), ("-app", False), ("app_1.x", True)])
def test_qualified_name(key: str, ok: bool) -> None:
    assert (n.qualified_name_errors(key) == []) is ok


@pytest.mark.parametrize("value,ok", [("", True), ("a" * 63, True), ("a" * 64, False),
                                      ("a b", False), ("_a", False), ("A.b-c_d", True)])
def test_label_value(value: str, ok: bool) -> None:
    assert (n.label_value_errors(value) == []) is ok


@pytest.mark.parametrize("name,ok", [("http", True), ("h2c", True), ("a" * 15, True),
                                     ("a" * 16, False), ("web--http", False), ("-http", False),
                                     ("8080", False), ("HTTP", False), ("", False)])
def test_port_name(name: str, ok: bool) -> None:
    assert (n.port_name_errors(name) == []) is ok


def test_labels_and_annotations() -> None:
    assert n.validate_labels({"app": "web", "example.com/tier": ""}, "l") == []
    assert fields(n.validate_labels({"app": 1}, "l")) == {("l[app]", TYPE)}
    assert n.validate_annotations({"Example.com/Key": "x" * 1000}, "a") == []
    assert fields(n.validate_annotations({"k": "x" * (256 * 1024)}, "a")) == {("a", LONG)}


def test_selector_matching() -> None:
    sel = {"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["db"]},
        {"key": "env", "operator": "Exists"}, {"key": "old", "operator": "DoesNotExist"}]}
    assert n.selector_matches(sel, {"app": "web", "env": "prod"})
    assert not n.selector_matches(sel, {"app": "web", "env": "prod", "tier": "db"})
    assert not n.selector_matches(sel, {"app": "web"})
    assert not n.selector_matches(sel, {"app": "web", "env": "x", "old": "1"})
    assert n.selector_matches({}, {})


# --- garbage of any type never raises ----------------------------------------------------------


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    makers = [
        lambda: None, lambda: True, lambda: False, lambda: rng.randint(-2**70, 2**70),
        lambda: rng.choice([0, -1, 1, 65535, 65536]),
        lambda: rng.choice([0.5, -0.0, math.inf, math.nan, 80.0]),
        lambda: rng.choice(["", "None", "a/b", "010.0.0.1", "10.0.0.0/8", "::", "é", "x" * 300,
                            "\x00", "In", "Exists", "LoadBalancer", "ExternalName", "IPv4",
                            "FQDN", "25%"]),
        lambda: "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(8))),
        lambda: rng.choice([[], {}]),
        lambda: [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {rng.choice(["a", "ip", "name", "port", "spec", "matchLabels", "values", "key"]):
                 _garbage(rng, depth + 1) for _ in range(rng.randrange(4))},
        lambda: {"": _garbage(rng, depth + 1)},
    ]
    return makers[rng.randrange(len(makers) if depth < 3 else 9)]()


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else []
    for k, child in items:
        out += _paths(child, prefix + (k,))
    return out


def _replace(obj: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


def test_random_garbage_never_raises() -> None:
    rng = random.Random(20240601)
    kinds = sorted(RT)
    for case in range(2000):
        kind = kinds[case % len(kinds)]
        obj = valid(kind)
        if rng.random() < 0.05:
            obj = _garbage(rng)
        else:
            paths = _paths(obj)
            for _ in range(rng.randint(1, 3)):
                _replace(obj, rng.choice(paths), _garbage(rng))
                paths = _paths(obj) or paths
        old = valid(kind) if rng.random() < 0.8 else _garbage(rng)
        prepared = v.prepare_service_update(obj, old)
        for causes in (v.validate_create(RT[kind], obj), v.validate_update(RT[kind], obj, old),
                       v.validate_status_update(RT[kind], obj, old),
                       v.validate_update(RT[kind], valid(kind), obj),
                       v.validate_update(RT[kind], prepared, old)):
            assert isinstance(causes, list)
            assert all(isinstance(c, n.Cause) and isinstance(c.message, str) for c in causes)
            v.invalid_status(RT[kind], "x", causes)
