"""The sandbox controllers' pure functions (IPAM, EndpointSlices and Endpoints, scheduling) and
their loop machinery (work queue, worker, write tracker), without a server."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from typing import Any

import pytest

from netplane.errors import ApiError
from netplane.k8s import Backoff
from netplane.sandbox.controllers import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    Requeue,
    WorkQueue,
    Worker,
    WriteTracker,
    choose_node,
    compute_bindings,
    compute_endpoint_slices,
    compute_endpoints,
    compute_pod_cidrs,
    needs_scheduling,
    plan_slices,
    resolve_target_port,
    selector_matches,
)

_uids = itertools.count(1)


# ------------------------------------------------------------------------------ builders


def node(name: str, *, cidr: str | None = None, zone: str | None = None, ready: bool = True,
         unschedulable: bool = False, labels: dict[str, str] | None = None,
         created: str = "2024-01-01T00:00:00Z", taints: list[dict[str, Any]] | None = None
         ) -> dict[str, Any]:
    lab = dict(labels or {})
    if zone:
        lab["topology.kubernetes.io/zone"] = zone
    spec: dict[str, Any] = {}
    if cidr:
        spec.update(podCIDR=cidr, podCIDRs=[cidr])
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {"metadata": {"name": name, "uid": f"node-{name}", "labels": lab,
                         "creationTimestamp": created},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, ip: str | None = "10.244.0.10", *, ns: str = "default",
        labels: dict[str, str] | None = None, ready: bool = True, node_name: str = "n1",
        phase: str = "Running", terminating: bool = False, ports: list[dict[str, Any]] | None = None,
        hostname: str = "", subdomain: str = "", ips: list[str] | None = None,
        created: str = "2024-01-01T00:00:00Z", node_selector: dict[str, str] | None = None
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}",
                            "labels": {"app": "web"} if labels is None else labels,
                            "creationTimestamp": created}
    if terminating:
        meta["deletionTimestamp"] = "2024-01-01T00:01:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "c", "ports": ports or []}]}
    if node_name:
        spec["nodeName"] = node_name
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    if node_selector:
        spec["nodeSelector"] = node_selector
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready", "status": str(ready)}]}
    all_ips = ips if ips is not None else ([ip] if ip else [])
    if all_ips:
        status["podIP"] = all_ips[0]
        status["podIPs"] = [{"ip": i} for i in all_ips]
    return {"metadata": meta, "spec": spec, "status": status}


def service(name: str = "web", *, ns: str = "default", selector: dict[str, str] | None = None,
            ports: list[dict[str, Any]] | None = None, publish_not_ready: bool = False,
            families: list[str] | None = None, cluster_ip: str = "10.96.0.20",
            svc_type: str = "ClusterIP", uid: str = "svc-uid") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": svc_type, "clusterIP": cluster_ip,
        "selector": {"app": "web"} if selector is None else selector,
        "ports": ports if ports is not None else [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        "ipFamilies": families or ["IPv4"],
    }
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"tier": "fe"}},
            "spec": spec}


def stored(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the server holds after creating `slices`: names, resourceVersions."""
    out = []
    for s in slices:
        s = copy.deepcopy(s)
        meta = s["metadata"]
        meta["name"] = meta.pop("generateName", "x-") + f"s{next(_uids)}"
        meta["resourceVersion"] = str(next(_uids))
        out.append(s)
    return out


def apply_plan(existing: list[dict[str, Any]], plan: tuple[list, list, list]
               ) -> list[dict[str, Any]]:
    creates, updates, deletes = plan
    gone = {s["metadata"]["name"] for s in deletes}
    by_name = {s["metadata"]["name"]: s for s in updates}
    out = [by_name.get(s["metadata"]["name"], s) for s in existing
           if s["metadata"]["name"] not in gone]
    return out + stored(creates)


def addresses(slices: list[dict[str, Any]]) -> list[str]:
    return sorted(a for s in slices for ep in s["endpoints"] for a in ep["addresses"])


# ------------------------------------------------------------------------------- selectors


def test_selector_matches_every_pair() -> None:
    assert selector_matches({"app": "web"}, {"app": "web", "x": "y"})
    assert not selector_matches({"app": "web", "x": "z"}, {"app": "web", "x": "y"})
    assert not selector_matches({"app": "web"}, {})
    assert selector_matches({}, {"a": "b"}) and selector_matches(None, {})


# ------------------------------------------------------------------------------------ IPAM


def test_ipam_assigns_lowest_free_subnets_in_creation_order() -> None:
    nodes = [node("b", created="2024-01-01T00:00:02Z"), node("a", created="2024-01-01T00:00:01Z"),
             node("c", created="2024-01-01T00:00:02Z")]
    assert compute_pod_cidrs(nodes, "10.244.0.0/16", 24) == {
        "a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}


def test_ipam_skips_subnets_already_set_and_leaves_those_nodes_alone() -> None:
    nodes = [node("old1", cidr="10.244.0.0/24"), node("old2", cidr="10.244.2.0/24"),
             node("new1"), node("new2")]
    assert compute_pod_cidrs(nodes, "10.244.0.0/16", 24) == {
        "new1": "10.244.1.0/24", "new2": "10.244.3.0/24"}


def test_ipam_respects_existing_cidrs_of_another_size() -> None:
    # A /23 set by hand covers two /24 candidates.
    nodes = [node("big", cidr="10.244.0.0/23"), node("new")]
    assert compute_pod_cidrs(nodes, "10.244.0.0/16", 24) == {"new": "10.244.2.0/24"}


def test_ipam_reuses_a_deleted_nodes_subnet() -> None:
    nodes = [node("a", cidr="10.244.0.0/24"), node("c", cidr="10.244.2.0/24"), node("d")]
    # "b" (10.244.1.0/24) was deleted: the lowest free subnet is its.
    assert compute_pod_cidrs(nodes, "10.244.0.0/16", 24) == {"d": "10.244.1.0/24"}


def test_ipam_exhaustion_gives_none_for_the_nodes_left_over() -> None:
    nodes = [node("a"), node("b"), node("c")]
    assert compute_pod_cidrs(nodes, "10.244.0.0/23", 24) == {
        "a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": None}


def test_ipam_ipv6_and_bad_configuration() -> None:
    assert compute_pod_cidrs([node("a")], "fd00:10::/56", 64) == {"a": "fd00:10::/64"}
    with pytest.raises(ValueError):
        compute_pod_cidrs([], "10.244.0.0/16", 8)
    with pytest.raises(ValueError):
        compute_pod_cidrs([], "10.244.0.1/16", 24)


def test_ipam_nothing_to_do() -> None:
    assert compute_pod_cidrs([node("a", cidr="10.244.0.0/24")], "10.244.0.0/16", 24) == {}


# ---------------------------------------------------------------------------------- ports


def test_resolve_target_port_number_name_protocol() -> None:
    p = pod("p", ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "dns", "containerPort": 5353, "protocol": "UDP"}])
    assert resolve_target_port({"port": 80, "targetPort": 9000}, p) == 9000
    assert resolve_target_port({"port": 80}, p) == 80
    assert resolve_target_port({"port": 80, "targetPort": "http", "protocol": "TCP"}, p) == 8080
    assert resolve_target_port({"port": 53, "targetPort": "dns", "protocol": "UDP"}, p) == 5353
    assert resolve_target_port({"port": 53, "targetPort": "dns", "protocol": "TCP"}, p) is None
    assert resolve_target_port({"port": 80, "targetPort": "nope"}, p) is None


def test_resolve_target_port_in_sidecar_init_container() -> None:
    p = pod("p")
    p["spec"]["initContainers"] = [
        {"name": "side", "restartPolicy": "Always", "ports": [{"name": "m", "containerPort": 9}]},
        {"name": "init", "ports": [{"name": "i", "containerPort": 7}]}]
    assert resolve_target_port({"port": 1, "targetPort": "m"}, p) == 9
    assert resolve_target_port({"port": 1, "targetPort": "i"}, p) is None


# --------------------------------------------------------------------------- EndpointSlices


def test_slices_select_matching_running_pods_with_ips() -> None:
    pods = [pod("a", "10.244.0.3"), pod("b", "10.244.0.2"),
            pod("other-ns", "10.244.0.4", ns="kube-system"),
            pod("other-labels", "10.244.0.5", labels={"app": "db"}),
            pod("no-ip", None), pod("done", "10.244.0.6", phase="Succeeded"),
            pod("failed", "10.244.0.7", phase="Failed")]
    slices = compute_endpoint_slices(service(), pods, [node("n1")])
    assert len(slices) == 1
    s = slices[0]
    assert s["addressType"] == "IPv4"
    assert [ep["addresses"] for ep in s["endpoints"]] == [["10.244.0.2"], ["10.244.0.3"]]
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert s["metadata"]["generateName"] == "web-"
    assert s["metadata"]["labels"] == {"tier": "fe", SERVICE_NAME_LABEL: "web",
                                       MANAGED_BY_LABEL: MANAGED_BY}
    assert s["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc-uid",
        "controller": True, "blockOwnerDeletion": True}]
    ep = s["endpoints"][0]
    assert ep["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "b", "uid": "uid-b"}
    assert ep["nodeName"] == "n1"
    assert "zone" not in ep and "hostname" not in ep


@pytest.mark.parametrize(("ready", "terminating", "publish", "want"), [
    (True, False, False, {"ready": True, "serving": True, "terminating": False}),
    (False, False, False, {"ready": False, "serving": False, "terminating": False}),
    (True, True, False, {"ready": False, "serving": True, "terminating": True}),
    (False, True, False, {"ready": False, "serving": False, "terminating": True}),
    (False, False, True, {"ready": True, "serving": False, "terminating": False}),
    (True, True, True, {"ready": True, "serving": True, "terminating": True}),
])
def test_slice_endpoint_conditions(ready: bool, terminating: bool, publish: bool,
                                   want: dict[str, bool]) -> None:
    slices = compute_endpoint_slices(service(publish_not_ready=publish),
                                     [pod("a", ready=ready, terminating=terminating)], [])
    assert slices[0]["endpoints"][0]["conditions"] == want


def test_slice_zone_from_node_label_and_hostname_for_subdomain() -> None:
    pods = [pod("a", "10.244.0.2", node_name="n1", hostname="a0", subdomain="web"),
            pod("b", "10.244.0.3", node_name="n2", hostname="b0", subdomain="other"),
            pod("c", "10.244.0.4", node_name="gone")]
    nodes = {"n1": node("n1", zone="z1"), "n2": node("n2")}
    eps = compute_endpoint_slices(service(), pods, nodes)[0]["endpoints"]
    assert eps[0]["zone"] == "z1" and eps[0]["hostname"] == "a0"
    assert "zone" not in eps[1] and "hostname" not in eps[1]
    assert eps[2]["nodeName"] == "gone" and "zone" not in eps[2]


def test_named_ports_with_different_numbers_go_to_separate_slices() -> None:
    svc = service(ports=[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                         {"name": "metrics", "port": 9090, "targetPort": 9090,
                          "protocol": "TCP", "appProtocol": "http"}])
    pods = [pod("a", "10.244.0.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.0.3", ports=[{"name": "web", "containerPort": 8080}]),
            pod("c", "10.244.0.4", ports=[{"name": "web", "containerPort": 8081}]),
            pod("d", "10.244.0.5", ports=[])]  # no "web" port: only metrics
    slices = compute_endpoint_slices(svc, pods, [])
    by_ports = {tuple(p["port"] for p in s["ports"]): addresses([s]) for s in slices}
    assert by_ports == {(8080, 9090): ["10.244.0.2", "10.244.0.3"],
                        (8081, 9090): ["10.244.0.4"], (9090,): ["10.244.0.5"]}
    metrics = [p for s in slices for p in s["ports"] if p["name"] == "metrics"]
    assert all(p["appProtocol"] == "http" for p in metrics)


def test_more_than_100_endpoints_are_split() -> None:
    pods = [pod(f"p{i}", f"10.244.{i // 200}.{i % 200 + 1}") for i in range(250)]
    slices = compute_endpoint_slices(service(), pods, [])
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    assert len(set(addresses(slices))) == 250
    # Ordered by address (numerically, not as text).
    assert slices[0]["endpoints"][1]["addresses"] == ["10.244.0.2"]


def test_dual_stack_and_ipv6_pods() -> None:
    pods = [pod("a", ips=["10.244.0.2", "fd00::2"]), pod("b", ips=["fd00::3"])]
    dual = compute_endpoint_slices(service(families=["IPv4", "IPv6"]), pods, [])
    assert {s["addressType"]: addresses([s]) for s in dual} == {
        "IPv4": ["10.244.0.2"], "IPv6": ["fd00::2", "fd00::3"]}
    v6 = compute_endpoint_slices(service(families=["IPv6"], cluster_ip="fd00:96::1"), pods, [])
    assert [(s["addressType"], addresses([s])) for s in v6] == [("IPv6", ["fd00::2", "fd00::3"])]


def test_no_endpoints_gives_a_placeholder_and_unmanaged_services_get_nothing() -> None:
    placeholder = compute_endpoint_slices(service(), [], [])
    assert len(placeholder) == 1
    assert placeholder[0]["endpoints"] == [] and placeholder[0]["ports"] == []
    assert compute_endpoint_slices(service(selector={}), [pod("a")], []) == []
    assert compute_endpoint_slices(service(svc_type="ExternalName"), [pod("a")], []) == []


def test_headless_service_label_and_ports() -> None:
    svc = service(cluster_ip="None", ports=[])
    s = compute_endpoint_slices(svc, [pod("a")], [])[0]
    assert s["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    assert s["ports"] == [] and addresses([s]) == ["10.244.0.10"]


# ------------------------------------------------------------------------------------ plan


def test_plan_creates_then_is_a_no_op_when_unchanged() -> None:
    pods = [pod(f"p{i}", f"10.244.0.{i + 1}") for i in range(150)]
    desired = compute_endpoint_slices(service(), pods, [])
    creates, updates, deletes = plan_slices(desired, [])
    assert [len(c["endpoints"]) for c in creates] == [100, 50] and not updates and not deletes
    existing = stored(creates)
    # Recomputed from scratch (new dict objects, other order of pods): nothing to write.
    again = compute_endpoint_slices(service(), list(reversed(pods)), [])
    assert plan_slices(again, existing) == ([], [], [])
    # Also when the server stored the slices with fields reordered / empty ones dropped.
    shuffled = copy.deepcopy(existing)
    for s in shuffled:
        s["endpoints"].reverse()
        s["metadata"]["annotations"] = {"someone": "else"}
    assert plan_slices(again, shuffled) == ([], [], [])


def test_plan_updates_only_the_slice_whose_endpoint_changed() -> None:
    pods = [pod(f"p{i}", f"10.244.0.{i + 1}") for i in range(150)]
    existing = stored(plan_slices(compute_endpoint_slices(service(), pods, []), [])[0])
    pods[120] = pod("p120", "10.244.0.121", ready=False)
    creates, updates, deletes = plan_slices(compute_endpoint_slices(service(), pods, []), existing)
    assert not creates and not deletes and len(updates) == 1
    upd = updates[0]
    assert upd["metadata"]["name"] == existing[1]["metadata"]["name"]
    assert upd["metadata"]["resourceVersion"] == existing[1]["metadata"]["resourceVersion"]
    changed = [ep for ep in upd["endpoints"] if ep["addresses"] == ["10.244.0.121"]]
    assert changed[0]["conditions"]["ready"] is False


def test_plan_new_endpoints_fill_existing_slices_before_creating() -> None:
    pods = [pod(f"p{i}", f"10.244.0.{i + 1}") for i in range(150)]
    existing = stored(plan_slices(compute_endpoint_slices(service(), pods, []), [])[0])
    pods.append(pod("new", "10.244.1.1"))
    creates, updates, deletes = plan_slices(compute_endpoint_slices(service(), pods, []), existing)
    assert not creates and not deletes
    assert [len(u["endpoints"]) for u in updates] == [51]
    # Removing endpoints keeps the others where they are.
    result = apply_plan(existing, (creates, updates, deletes))
    del pods[0:100]
    plan = plan_slices(compute_endpoint_slices(service(), pods, []), result)
    assert not plan[0] and len(plan[2]) == 1 and not plan[1]
    assert addresses(apply_plan(result, plan)) == addresses(
        compute_endpoint_slices(service(), pods, []))


def test_plan_removing_every_endpoint_leaves_a_placeholder_in_place() -> None:
    existing = stored(plan_slices(compute_endpoint_slices(service(), [pod("a")], []), [])[0])
    creates, updates, deletes = plan_slices(compute_endpoint_slices(service(), [], []), existing)
    # Upstream's finalize: the create of a placeholder + delete becomes one update.
    assert not creates and not deletes and len(updates) == 1
    assert updates[0]["endpoints"] == [] and updates[0]["ports"] == []
    assert updates[0]["metadata"]["name"] == existing[0]["metadata"]["name"]
    after = apply_plan(existing, (creates, updates, deletes))
    assert plan_slices(compute_endpoint_slices(service(), [], []), after) == ([], [], [])


def test_plan_port_change_updates_in_place() -> None:
    existing = stored(plan_slices(compute_endpoint_slices(service(), [pod("a")], []), [])[0])
    svc = service(ports=[{"name": "http", "port": 80, "targetPort": 9999, "protocol": "TCP"}])
    creates, updates, deletes = plan_slices(compute_endpoint_slices(svc, [pod("a")], []),
                                            existing)
    assert not creates and not deletes and len(updates) == 1
    assert updates[0]["ports"][0]["port"] == 9999


def test_plan_service_gone_deletes_everything() -> None:
    existing = stored(plan_slices(compute_endpoint_slices(service(), [pod("a")], []), [])[0])
    assert plan_slices([], existing) == ([], [], existing)


def test_plan_recreated_service_replaces_slices_of_the_old_one() -> None:
    existing = stored(plan_slices(compute_endpoint_slices(service(), [pod("a")], []), [])[0])
    desired = compute_endpoint_slices(service(uid="new-uid"), [pod("a")], [])
    creates, updates, deletes = plan_slices(desired, existing)
    assert len(creates) == 1 and not updates and deletes == existing


def test_plan_repairs_labels_changed_by_someone_else() -> None:
    existing = stored(plan_slices(compute_endpoint_slices(service(), [pod("a")], []), [])[0])
    existing[0]["metadata"]["labels"]["tier"] = "hacked"
    _, updates, _ = plan_slices(compute_endpoint_slices(service(), [pod("a")], []), existing)
    assert updates[0]["metadata"]["labels"]["tier"] == "fe"


def test_plan_duplicate_endpoint_in_two_slices_is_kept_once() -> None:
    desired = compute_endpoint_slices(service(), [pod("a", "10.244.0.2")], [])
    existing = stored([desired[0], copy.deepcopy(desired[0])])
    creates, updates, deletes = plan_slices(desired, existing)
    assert not creates and not updates and len(deletes) == 1


# ---------------------------------------------------------------------------- Endpoints


def test_endpoints_ready_not_ready_terminating_and_labels() -> None:
    pods = [pod("a", "10.244.0.3"), pod("b", "10.244.0.2", ready=False),
            pod("t", "10.244.0.4", terminating=True)]
    ep = compute_endpoints(service(), pods)
    assert ep is not None
    assert ep["metadata"] == {"name": "web", "namespace": "default",
                              "labels": {"tier": "fe", SKIP_MIRROR_LABEL: "true"}}
    (subset,) = ep["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.244.0.3"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.244.0.2"]
    assert subset["addresses"][0]["targetRef"]["name"] == "a"
    assert subset["addresses"][0]["nodeName"] == "n1"
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_endpoints_publish_not_ready_includes_everything_as_ready() -> None:
    pods = [pod("b", "10.244.0.2", ready=False), pod("t", "10.244.0.4", terminating=True)]
    ep = compute_endpoints(service(publish_not_ready=True), pods)
    assert ep is not None
    assert [a["ip"] for a in ep["subsets"][0]["addresses"]] == ["10.244.0.2", "10.244.0.4"]


def test_endpoints_subsets_by_resolved_ports_and_empty() -> None:
    svc = service(ports=[{"port": 80, "targetPort": "web", "protocol": "TCP"}])
    pods = [pod("a", "10.244.0.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.0.3", ports=[{"name": "web", "containerPort": 8081}]),
            pod("c", "10.244.0.4")]  # no such port: not in Endpoints
    ep = compute_endpoints(svc, pods)
    assert ep is not None
    assert [(s["ports"], [a["ip"] for a in s["addresses"]]) for s in ep["subsets"]] == [
        ([{"port": 8080, "protocol": "TCP"}], ["10.244.0.2"]),
        ([{"port": 8081, "protocol": "TCP"}], ["10.244.0.3"])]
    empty = compute_endpoints(service(), [])
    assert empty is not None and "subsets" not in empty
    assert compute_endpoints(service(selector={}), pods) is None


# ------------------------------------------------------------------------------ scheduler


def test_scheduler_picks_fewest_pods_then_name() -> None:
    nodes = [node("b"), node("a"), node("c")]
    assert choose_node(pod("p"), nodes, {"a": 2, "b": 1, "c": 1}).node == "b"
    assert choose_node(pod("p"), nodes, {}).node == "a"


def test_scheduler_honours_node_selector_unschedulable_and_readiness() -> None:
    nodes = [node("a", labels={"disk": "hdd"}), node("b", labels={"disk": "ssd"}),
             node("c", labels={"disk": "ssd"}, unschedulable=True),
             node("d", labels={"disk": "ssd"}, ready=False)]
    p = pod("p", node_name="", node_selector={"disk": "ssd"})
    assert choose_node(p, nodes, {"b": 10}).node == "b"
    nope = choose_node(pod("p", node_selector={"disk": "nvme"}), nodes, {})
    assert nope.node is None
    assert nope.message == ("0/4 nodes are available: 2 node(s) didn't match Pod's node "
                            "affinity/selector, 1 node(s) were not ready, "
                            "1 node(s) were unschedulable.")


def test_scheduler_without_nodes_and_taints() -> None:
    assert choose_node(pod("p"), [], {}).message == "no nodes available to schedule pods"
    tainted = [node("a", taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
               node("b", taints=[{"key": "soft", "effect": "PreferNoSchedule"}])]
    assert choose_node(pod("p"), tainted, {"b": 5}).node == "b"
    p = pod("p")
    p["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "x"}]
    assert choose_node(p, tainted, {"b": 5}).node == "a"
    only = choose_node(pod("p"), tainted[:1], {})
    assert only.message == "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: x}."


def test_compute_bindings_spreads_a_batch_and_skips_pods_not_ours() -> None:
    nodes = [node("n1"), node("n2")]
    running = pod("running", node_name="n1")
    pending = [pod(f"p{i}", None, node_name="", phase="Pending",
                   created=f"2024-01-01T00:00:0{i}Z") for i in range(3)]
    other = pod("other", None, node_name="", phase="Pending")
    other["spec"]["schedulerName"] = "someone-else"
    gated = pod("gated", None, node_name="", phase="Pending")
    gated["spec"]["schedulingGates"] = [{"name": "wait"}]
    dying = pod("dying", None, node_name="", phase="Pending", terminating=True)
    decisions = compute_bindings([running, *pending, other, gated, dying], nodes)
    assert {k: d.node for k, d in decisions.items()} == {
        "default/p0": "n2", "default/p1": "n1", "default/p2": "n2"}
    assert not needs_scheduling(running) and needs_scheduling(pending[0])


def test_compute_bindings_ignores_finished_pods_in_counts() -> None:
    done = [pod(f"d{i}", node_name="n1", phase="Succeeded") for i in range(3)]
    decisions = compute_bindings([*done, pod("busy", node_name="n2"),
                                  pod("p", None, node_name="", phase="Pending")],
                                 [node("n1"), node("n2")])
    assert decisions["default/p"].node == "n1"


# ----------------------------------------------------------------------------- loop parts


def test_work_queue_deduplicates_and_reruns_keys_added_while_processing() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert q.get(0) == "a"
    q.add("a")  # changed again while being processed: not handed out twice at once
    assert q.get(0) == "b"
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    q.done("b")
    assert q.get(0) is None


def test_work_queue_add_after_and_shutdown() -> None:
    q = WorkQueue()
    q.add_after("late", 0.05)
    assert q.get(0) is None
    started = time.monotonic()
    assert q.get(1.0) == "late"
    assert time.monotonic() - started >= 0.03
    done = threading.Event()
    threading.Thread(target=lambda: (q.get(), done.set()), daemon=True).start()
    q.shutdown()
    assert done.wait(1.0)


def test_worker_retries_failures_with_backoff_and_keeps_running() -> None:
    calls: list[str] = []
    fail = {"boom": 2, "api": 1}
    all_done = threading.Event()

    def reconcile(key: str) -> None:
        calls.append(key)
        if fail.get(key, 0) > 0:
            fail[key] -= 1
            if key == "api":
                raise ApiError(500, "InternalError", "try later")
            raise RuntimeError("a bug")
        if calls.count("boom") == 3 and "api" in calls[1:] and calls.count("ok") >= 1:
            all_done.set()

    worker = Worker("test", reconcile, resync_keys=lambda: ["boom", "api", "ok"],
                    backoff=Backoff(initial=0.01, maximum=0.05, jitter=0), resync_period=60)
    worker.start()
    try:
        assert all_done.wait(3.0), calls
    finally:
        worker.stop()
    assert calls.count("boom") == 3 and calls.count("api") == 2
    assert worker.errors == 3


def test_worker_requeue_and_waits_for_ready() -> None:
    ready = threading.Event()
    seen: list[str] = []
    finished = threading.Event()

    def reconcile(key: str) -> None:
        seen.append(key)
        if len(seen) == 1:
            raise Requeue("cache behind", delay=0.01)
        finished.set()

    worker = Worker("test", reconcile, ready=ready.is_set, resync_period=60)
    worker.start()
    try:
        worker.enqueue("k")
        time.sleep(0.1)
        assert seen == []  # not before the caches synced
        ready.set()
        assert finished.wait(2.0)
    finally:
        worker.stop()
    assert seen == ["k", "k"] and worker.errors == 0


def test_worker_periodic_resync() -> None:
    seen: list[str] = []
    worker = Worker("test", seen.append, resync_keys=lambda: ["all"], resync_period=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + 2
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert len(seen) >= 3


def test_write_tracker() -> None:
    now = [0.0]
    t = WriteTracker(ttl=10, clock=lambda: now[0])
    t.wrote("svc", "s1", "5")
    assert t.stale("svc", {})
    assert t.stale("svc", {"s1": "4"})
    assert not t.stale("svc", {"s1": "6"})
    assert not t.stale("svc", {})  # the expectation was met and dropped
    t.deleted("svc", "s2")
    assert t.stale("svc", {"s2": "7"})
    assert not t.stale("svc", {})
    t.wrote("svc", "s3", "9")
    now[0] = 11.0
    assert not t.stale("svc", {})  # expired: somebody else deleted it meanwhile
    assert not t.stale("other", {"x": "1"})


def test_worker_survives_a_failing_resync() -> None:
    attempts = [0]
    seen: list[str] = []

    def keys() -> list[str]:
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("a bug in resync_keys")
        return ["k"]

    worker = Worker("test", seen.append, resync_keys=keys, resync_period=60)
    worker.start()
    try:
        deadline = time.monotonic() + 3
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert seen == ["k"]
