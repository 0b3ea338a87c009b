"""The sandbox controllers (node IPAM, EndpointSlices + Endpoints, scheduler) against an
in-process netplane apiserver on 127.0.0.1, through the real client and informers.

One server and one ControlPlane for the module (short resync period, so "a resync changes
nothing" is observable); tests use their own namespaces and node names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from netplane.apiserver.main import ApiServer
from netplane.errors import ConflictError, NotFoundError
from netplane.k8s import Client, load_kubeconfig, resource_path, write_kubeconfig
from netplane.sandbox.controllers import MANAGED_BY, MANAGED_BY_LABEL, ControlPlane

T = TypeVar("T")
RESYNC = 0.4
SLICES = "discovery.k8s.io/v1"


def wait_for(fn: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (NotFoundError, KeyError, IndexError, TypeError):
            last = None
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    srv = ApiServer(listen=[("127.0.0.1", 0)], bookmark_interval=1.0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path = write_kubeconfig(Path(tmp_path_factory.mktemp("kube")) / "config", server.url)
    c = Client(load_kubeconfig(path), timeout=10)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def plane(client: Client) -> Iterator[ControlPlane]:
    cp = ControlPlane(client, cluster_cidr="10.244.0.0/22", node_cidr_mask=24,
                      resync_period=RESYNC).start()
    try:
        assert cp.wait_for_sync(10)
        yield cp
    finally:
        cp.stop(timeout=5)


def make_node(client: Client, name: str, *, ready: bool = True, zone: str | None = None,
              cidr: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    spec: dict[str, Any] = {}
    if cidr:
        spec = {"podCIDR": cidr, "podCIDRs": [cidr]}
    body = {"metadata": {"name": name, "labels": labels}, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    return client.create(resource_path("v1", "nodes"), body)


def make_namespace(client: Client, name: str) -> None:
    client.create(resource_path("v1", "namespaces"), {"metadata": {"name": name}})


def node_cidr(client: Client, name: str) -> str | None:
    spec = client.get(resource_path("v1", "nodes", name=name)).get("spec") or {}
    if spec.get("podCIDR"):
        assert spec["podCIDRs"] == [spec["podCIDR"]]
    return spec.get("podCIDR")


def make_pod(client: Client, ns: str, name: str, *, node: str | None,
             labels: dict[str, str] | None = None, node_selector: dict[str, str] | None = None
             ) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": "c", "image": "none", "command": ["sleep", "inf"],
        "ports": [{"name": "http", "containerPort": 8080}]}]}
    if node:
        spec["nodeName"] = node
    if node_selector:
        spec["nodeSelector"] = node_selector
    return client.create(resource_path("v1", "pods", ns),
                         {"metadata": {"name": name, "labels": labels or {"app": "web"}},
                          "spec": spec})


def set_pod_status(client: Client, ns: str, name: str, ip: str, ready: bool) -> None:
    """What a kubelet reports, through the status subresource."""
    client.patch(resource_path("v1", "pods", ns, name, "status"), {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def slices_of(client: Client, ns: str, svc: str) -> list[dict[str, Any]]:
    return client.list(resource_path(SLICES, "endpointslices", ns),
                       label_selector=f"kubernetes.io/service-name={svc}")["items"]


def endpoints_by_pod(client: Client, ns: str, svc: str) -> dict[str, dict[str, Any]]:
    return {ep["targetRef"]["name"]: ep for s in slices_of(client, ns, svc)
            for ep in s.get("endpoints") or ()}


# ---------------------------------------------------------------------------------- tests


def test_node_ipam(client: Client, plane: ControlPlane) -> None:
    make_node(client, "ipam-a", ready=False)
    make_node(client, "ipam-b", ready=False)
    assert wait_for(lambda: node_cidr(client, "ipam-a")) == "10.244.0.0/24"
    assert wait_for(lambda: node_cidr(client, "ipam-b")) == "10.244.1.0/24"
    make_node(client, "ipam-preset", ready=False, cidr="10.244.3.0/24")
    make_node(client, "ipam-c", ready=False)
    assert wait_for(lambda: node_cidr(client, "ipam-c")) == "10.244.2.0/24"
    assert node_cidr(client, "ipam-preset") == "10.244.3.0/24"

    # The /22 is used up: an error event on the node, and no crash.
    make_node(client, "ipam-d", ready=False)
    event = wait_for(lambda: [e for e in client.list(
        resource_path("v1", "events", "default"),
        field_selector="involvedObject.name=ipam-d")["items"]
        if e["reason"] == "CIDRNotAvailable"], what="CIDRNotAvailable event")[0]
    assert event["involvedObject"]["kind"] == "Node"
    assert node_cidr(client, "ipam-d") is None

    # A deleted node's subnet is free again, and the waiting node gets it.
    client.delete(resource_path("v1", "nodes", name="ipam-b"))
    assert wait_for(lambda: node_cidr(client, "ipam-d")) == "10.244.1.0/24"
    for name in ("ipam-a", "ipam-c", "ipam-d", "ipam-preset"):
        client.delete(resource_path("v1", "nodes", name=name))


def test_endpoint_slices_follow_pods(client: Client, plane: ControlPlane) -> None:
    ns = "eps"
    make_namespace(client, ns)
    make_node(client, "eps-n1", zone="zone-a")
    make_node(client, "eps-n2", zone="zone-b")
    client.create(resource_path("v1", "services", ns), {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    make_pod(client, ns, "p1", node="eps-n1")
    make_pod(client, ns, "p2", node="eps-n2")
    make_pod(client, ns, "other", node="eps-n2", labels={"app": "db"})
    set_pod_status(client, ns, "p1", "10.244.0.11", True)
    set_pod_status(client, ns, "p2", "10.244.1.12", True)
    set_pod_status(client, ns, "other", "10.244.1.13", True)

    eps = wait_for(lambda: (e := endpoints_by_pod(client, ns, "web")) and len(e) == 2 and e,
                   what="two endpoints")
    (slice_,) = slices_of(client, ns, "web")
    assert slice_["metadata"]["name"].startswith("web-")
    assert slice_["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
    assert slice_["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert slice_["addressType"] == "IPv4"
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert eps["p1"]["addresses"] == ["10.244.0.11"]
    assert eps["p1"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert (eps["p1"]["nodeName"], eps["p1"]["zone"]) == ("eps-n1", "zone-a")
    assert eps["p2"]["zone"] == "zone-b"
    legacy = wait_for(lambda: client.get(resource_path("v1", "endpoints", ns, "web")))
    assert sorted(a["ip"] for a in legacy["subsets"][0]["addresses"]) == [
        "10.244.0.11", "10.244.1.12"]

    # Readiness flips the slice's conditions (and moves the legacy address).
    set_pod_status(client, ns, "p2", "10.244.1.12", False)
    wait_for(lambda: endpoints_by_pod(client, ns, "web")["p2"]["conditions"]
             == {"ready": False, "serving": False, "terminating": False}, what="p2 not ready")
    wait_for(lambda: [a["ip"] for a in client.get(resource_path("v1", "endpoints", ns, "web"))
                      ["subsets"][0].get("notReadyAddresses", [])] == ["10.244.1.12"],
             what="p2 in notReadyAddresses")

    # A resync with nothing changed writes nothing.
    time.sleep(0.3)  # let the last write's own events settle
    before = {s["metadata"]["name"]: s["metadata"]["resourceVersion"]
              for s in slices_of(client, ns, "web")}
    ep_rv = client.get(resource_path("v1", "endpoints", ns, "web"))["metadata"]["resourceVersion"]
    assert plane.endpoint_slices is not None
    writes, reconciles = plane.endpoint_slices.writes, plane.endpoint_slices.worker.reconciles
    time.sleep(RESYNC * 3)
    assert plane.endpoint_slices.worker.reconciles > reconciles  # resyncs did run
    assert plane.endpoint_slices.writes == writes
    assert {s["metadata"]["name"]: s["metadata"]["resourceVersion"]
            for s in slices_of(client, ns, "web")} == before
    assert client.get(resource_path("v1", "endpoints", ns, "web"))[
        "metadata"]["resourceVersion"] == ep_rv

    # Graceful deletion: terminating (still serving while Ready), then gone.
    client.delete(resource_path("v1", "pods", ns, "p1"))
    wait_for(lambda: endpoints_by_pod(client, ns, "web")["p1"]["conditions"]
             == {"ready": False, "serving": True, "terminating": True}, what="p1 terminating")
    client.delete(resource_path("v1", "pods", ns, "p1"), grace_period_seconds=0)
    wait_for(lambda: set(endpoints_by_pod(client, ns, "web")) == {"p2"}, what="p1 removed")
    assert len(slices_of(client, ns, "web")) == 1  # updated in place, not replaced

    # Someone deletes our slice: it comes back.
    (slice_,) = slices_of(client, ns, "web")
    client.delete(resource_path(SLICES, "endpointslices", ns, slice_["metadata"]["name"]))
    wait_for(lambda: set(endpoints_by_pod(client, ns, "web")) == {"p2"}, what="slice restored")

    # The Service goes: so do its slices and Endpoints.
    client.delete(resource_path("v1", "services", ns, "web"))
    wait_for(lambda: not slices_of(client, ns, "web"), what="slices deleted")

    def endpoints_gone() -> bool:
        try:
            client.get(resource_path("v1", "endpoints", ns, "web"))
        except NotFoundError:
            return True
        return False
    wait_for(endpoints_gone, what="Endpoints deleted")
    for name in ("eps-n1", "eps-n2"):
        client.delete(resource_path("v1", "nodes", name=name))


def test_scheduler_binds_pending_pods(client: Client, plane: ControlPlane) -> None:
    ns = "sched"
    make_namespace(client, ns)
    make_node(client, "sched-n1")
    make_node(client, "sched-n2")
    make_node(client, "sched-down", ready=False)
    make_pod(client, ns, "busy", node="sched-n1")

    def bound(name: str) -> str | None:
        return (client.get(resource_path("v1", "pods", ns, name)).get("spec") or {}).get("nodeName")

    make_pod(client, ns, "free", node=None)
    assert wait_for(lambda: bound("free"), what="free bound") == "sched-n2"
    pod = client.get(resource_path("v1", "pods", ns, "free"))
    conds = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conds["PodScheduled"]["status"] == "True"
    # Bound once: binding again is a conflict, as upstream.
    with pytest.raises(ConflictError):
        client.create(resource_path("v1", "pods", ns, "free", "binding"),
                      {"metadata": {"name": "free"}, "target": {"kind": "Node", "name": "x"}})

    # No node matches the selector: PodScheduled=False, Unschedulable; retried on node changes.
    make_pod(client, ns, "picky", node=None, node_selector={"disk": "ssd"})

    def scheduled_condition() -> dict[str, Any] | None:
        pod = client.get(resource_path("v1", "pods", ns, "picky"))
        return next((c for c in (pod.get("status") or {}).get("conditions") or ()
                     if c["type"] == "PodScheduled"), None)

    cond = wait_for(lambda: (c := scheduled_condition()) and c["status"] == "False" and c,
                    what="Unschedulable condition")
    assert cond["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in cond["message"]
    assert "1 node(s) were not ready" in cond["message"]
    client.patch(resource_path("v1", "nodes", name="sched-n1"),
                 {"metadata": {"labels": {"disk": "ssd"}}})
    assert wait_for(lambda: bound("picky"), what="picky bound") == "sched-n1"
    assert scheduled_condition()["status"] == "True"  # type: ignore[index]
    for name in ("sched-n1", "sched-n2", "sched-down"):
        client.delete(resource_path("v1", "nodes", name=name))
