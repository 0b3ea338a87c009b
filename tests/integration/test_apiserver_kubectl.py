"""Acceptance: the kubectl binary against a real `netplane apiserver` subprocess on 127.0.0.1.

One server serves the whole module (`apiserver` fixture, conftest.py); each test works in its own
namespace (and cluster-scoped objects carry the test's prefix), so tests do not see each other.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.kubectl

APISERVER_ARGS = ("--service-cidr", "10.100.0.0/24")
SERVICE_CIDR_PREFIX = "10.100.0."

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def ns(kubectl: Kubectl, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test."""
    name = "k-" + request.node.name.removeprefix("test_").replace("_", "-")[:50].rstrip("-")
    # `kubectl create namespace NAME` (and the other generators) send protobuf, which netplane
    # does not serve (README): manifests go as JSON.
    kubectl("create", "-f", "-", input=manifest({"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name}}))
    return name


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def names(kubectl: Kubectl, *args: str) -> list[str]:
    """Object names from `kubectl get ... -o name` (without the kind/ prefix)."""
    out = kubectl("get", *args, "-o", "name").stdout.split()
    return sorted(line.split("/", 1)[1] for line in out)


def manifest(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def configmap(name: str, ns: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def pod(name: str, ns: str, node: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.27",
                                            "ports": [{"containerPort": 80}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
            "spec": spec}


def service(name: str, ns: str, port: int = 80, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}}


def deployment(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [
                                      {"name": "app", "image": "nginx:1.27"},
                                      {"name": "sidecar", "image": "busybox:1.36",
                                       "command": ["sleep", "3600"]}]}}}}


# -- get -------------------------------------------------------------------------------------------


def test_get_output_formats_and_selectors(kubectl: Kubectl, ns: str) -> None:
    kubectl("create", "-f", "-", input=manifest(
        pod("web-1", ns, node="n-get-a", labels={"app": "web", "tier": "front"}),
        pod("web-2", ns, node="n-get-b", labels={"app": "web", "tier": "back"}),
        pod("db-1", ns, labels={"app": "db"}),
    ))

    plain = kubectl("get", "pods", "-n", ns).stdout.splitlines()
    assert plain[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert sorted(line.split()[0] for line in plain[1:]) == ["db-1", "web-1", "web-2"]

    wide = kubectl("get", "pods", "-n", ns, "-o", "wide").stdout.splitlines()
    assert "NODE" in wide[0].split() and "IP" in wide[0].split()
    rows = {line.split()[0]: line for line in wide[1:]}
    assert "n-get-a" in rows["web-1"] and "n-get-b" in rows["web-2"]

    doc = yaml.safe_load(kubectl("get", "pod", "web-1", "-n", ns, "-o", "yaml").stdout)
    assert doc["kind"] == "Pod" and doc["metadata"]["name"] == "web-1"
    assert doc["spec"]["nodeName"] == "n-get-a" and doc["metadata"]["uid"]

    listed = get_json(kubectl, "pods", "-n", ns)
    assert listed["kind"] == "List"
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["db-1", "web-1", "web-2"]
    assert all(i["kind"] == "Pod" and i["apiVersion"] == "v1" for i in listed["items"])

    assert names(kubectl, "pods", "-n", ns, "-l", "app=web") == ["web-1", "web-2"]
    assert names(kubectl, "pods", "-n", ns, "-l", "app=web,tier!=front") == ["web-2"]
    assert names(kubectl, "pods", "-n", ns, "-l", "tier in (front,back)") == ["web-1", "web-2"]
    assert names(kubectl, "pods", "-n", ns, "-l", "!tier") == ["db-1"]
    assert names(kubectl, "pods", "-n", ns, "--field-selector", "spec.nodeName=n-get-b") == ["web-2"]
    assert names(kubectl, "pods", "-n", ns, "--field-selector", "metadata.name!=web-1") == ["db-1", "web-2"]

    everywhere = kubectl("get", "pods", "-A", "-l", "app=web").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert sorted(tuple(line.split()[:2]) for line in everywhere[1:]) == [(ns, "web-1"), (ns, "web-2")]
    all_ns = kubectl("get", "namespaces").stdout
    assert ns in all_ns and "default" in all_ns


def test_get_watch_prints_events(kubectl: Kubectl, ns: str) -> None:
    kubectl("create", "-f", "-", input=manifest(configmap("first", ns, a="1")))
    proc = subprocess.Popen(
        [*kubectl.argv, "get", "configmaps", "-n", ns, "-w", "--output-watch-events"],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=kubectl.env, start_new_session=True,  # type: ignore[attr-defined]
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[list[str]] = []

    def wait_for(event: str, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fields = lines.get(timeout=0.1).split()
            except queue.Empty:
                continue
            seen.append(fields)
            if fields[:2] == [event, name]:
                return
        raise AssertionError(f"no {event} {name} from kubectl get -w; saw {seen}")

    try:
        wait_for("ADDED", "first")  # the initial list, printed as ADDED
        kubectl("create", "-f", "-", input=manifest(configmap("second", ns, a="1")))
        wait_for("ADDED", "second")
        kubectl("patch", "configmap", "second", "-n", ns, "--type", "merge", "-p", '{"data":{"b":"2"}}')
        wait_for("MODIFIED", "second")
        kubectl("delete", "configmap", "second", "-n", ns)
        wait_for("DELETED", "second")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(5)
    events = [f[:2] for f in seen if f and f[0] in ("ADDED", "MODIFIED", "DELETED")]
    assert events == [["ADDED", "first"], ["ADDED", "second"], ["MODIFIED", "second"],
                      ["DELETED", "second"]]
    assert seen[0][:2] == ["EVENT", "NAME"]  # one header, then the event rows


# -- create / apply / delete -----------------------------------------------------------------------


def test_create_from_file(kubectl: Kubectl, ns: str, scratch_dir: Any) -> None:
    path = scratch_dir / "objs.yaml"
    path.write_text(manifest(configmap("from-file", ns, k="v"), service("svc-file", ns)))
    out = kubectl("create", "-f", str(path)).stdout
    assert "configmap/from-file created" in out and "service/svc-file created" in out
    cm = get_json(kubectl, "configmap", "from-file", "-n", ns)
    assert cm["data"] == {"k": "v"}
    svc = get_json(kubectl, "service", "svc-file", "-n", ns)
    assert svc["spec"]["clusterIP"].startswith(SERVICE_CIDR_PREFIX)
    again = kubectl("create", "-f", str(path), check=False)
    assert again.returncode != 0 and "AlreadyExists" in again.stderr


def test_apply_create_unchanged_configured(kubectl: Kubectl, ns: str, scratch_dir: Any) -> None:
    path = scratch_dir / "svc.yaml"
    svc = service("applied", ns, port=80, labels={"app": "applied", "tier": "web"})
    path.write_text(manifest(svc))
    assert "service/applied created" in kubectl("apply", "-f", str(path)).stdout
    first = get_json(kubectl, "service", "applied", "-n", ns)
    assert first["metadata"]["labels"] == {"app": "applied", "tier": "web"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in first["metadata"]["annotations"]

    assert "service/applied unchanged" in kubectl("apply", "-f", str(path)).stdout
    assert get_json(kubectl, "service", "applied", "-n", ns)["metadata"]["resourceVersion"] == \
        first["metadata"]["resourceVersion"]

    svc["spec"]["ports"][0]["port"] = 8081
    del svc["metadata"]["labels"]["tier"]
    path.write_text(manifest(svc))
    assert "service/applied configured" in kubectl("apply", "-f", str(path)).stdout
    after = get_json(kubectl, "service", "applied", "-n", ns)
    assert [p["port"] for p in after["spec"]["ports"]] == [8081]
    assert after["metadata"]["labels"] == {"app": "applied"}
    assert after["spec"]["clusterIP"] == first["spec"]["clusterIP"]  # kept across the patch
    assert after["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_delete(kubectl: Kubectl, ns: str) -> None:
    kubectl("create", "-f", "-", input=manifest(
        configmap("gone-1", ns, labels={"batch": "x"}), configmap("gone-2", ns, labels={"batch": "x"}),
        configmap("stays", ns), pod("unbound", ns)))
    assert 'configmap "gone-1" deleted' in kubectl("delete", "configmap", "gone-1", "-n", ns).stdout
    out = kubectl("delete", "configmaps", "-n", ns, "-l", "batch=x").stdout
    assert 'configmap "gone-2" deleted' in out
    # A pod no kubelet runs (no nodeName) goes at once, so kubectl's wait returns immediately.
    assert 'pod "unbound" deleted' in kubectl("delete", "pod", "unbound", "-n", ns).stdout
    assert names(kubectl, "configmaps", "-n", ns) == ["stays"]
    assert names(kubectl, "pods", "-n", ns) == []
    missing = kubectl("delete", "configmap", "gone-1", "-n", ns, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_dry_run_server_creates_nothing(kubectl: Kubectl, ns: str) -> None:
    out = kubectl("create", "-f", "-", "--dry-run=server", "-o", "json",
                  input=manifest(configmap("dry", ns, a="b"))).stdout
    created = json.loads(out)
    assert created["data"] == {"a": "b"} and created["metadata"]["uid"]  # as the server would store it
    res = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest(service("dry-svc", ns)))
    assert "service/dry-svc created (server dry run)" in res.stdout
    assert names(kubectl, "configmaps,services", "-n", ns) == []
    kubectl("create", "-f", "-", input=manifest(configmap("real", ns, a="1")))
    kubectl("delete", "configmap", "real", "-n", ns, "--dry-run=server")
    kubectl("label", "configmap", "real", "-n", ns, "x=y", "--dry-run=server")
    cm = get_json(kubectl, "configmap", "real", "-n", ns)
    assert "labels" not in cm["metadata"] or "x" not in cm["metadata"]["labels"]


# -- label / annotate / patch ------------------------------------------------------------------------


def test_label_and_annotate(kubectl: Kubectl, ns: str) -> None:
    kubectl("create", "-f", "-", input=manifest(configmap("meta", ns, labels={"keep": "1"})))
    kubectl("label", "configmap", "meta", "-n", ns, "env=dev")
    assert get_json(kubectl, "cm", "meta", "-n", ns)["metadata"]["labels"] == {"keep": "1", "env": "dev"}
    clash = kubectl("label", "configmap", "meta", "-n", ns, "env=prod", check=False)
    assert clash.returncode != 0 and "--overwrite" in clash.stderr
    kubectl("label", "configmap", "meta", "-n", ns, "env=prod", "--overwrite")
    assert get_json(kubectl, "cm", "meta", "-n", ns)["metadata"]["labels"]["env"] == "prod"
    kubectl("label", "configmap", "meta", "-n", ns, "env-")
    assert get_json(kubectl, "cm", "meta", "-n", ns)["metadata"]["labels"] == {"keep": "1"}
    assert names(kubectl, "cm", "-n", ns, "-l", "keep=1") == ["meta"]

    kubectl("annotate", "configmap", "meta", "-n", ns, "owner=team-a", "note=hello world")
    ann = get_json(kubectl, "cm", "meta", "-n", ns)["metadata"]["annotations"]
    assert ann["owner"] == "team-a" and ann["note"] == "hello world"
    kubectl("annotate", "configmap", "meta", "-n", ns, "owner-")
    ann = get_json(kubectl, "cm", "meta", "-n", ns)["metadata"]["annotations"]
    assert "owner" not in ann and ann["note"] == "hello world"
    bad = kubectl("label", "configmap", "meta", "-n", ns, "bad key=x", check=False)
    assert bad.returncode != 0


def test_patch_merge_json_strategic(kubectl: Kubectl, ns: str) -> None:
    kubectl("create", "-f", "-", input=manifest(configmap("p", ns, a="1", b="2"), deployment("dep", ns)))

    kubectl("patch", "configmap", "p", "-n", ns, "--type", "merge", "-p", '{"data":{"a":null,"c":"3"}}')
    assert get_json(kubectl, "cm", "p", "-n", ns)["data"] == {"b": "2", "c": "3"}

    kubectl("patch", "configmap", "p", "-n", ns, "--type", "json",
            "-p", '[{"op":"replace","path":"/data/b","value":"20"},{"op":"add","path":"/data/d","value":"4"}]')
    assert get_json(kubectl, "cm", "p", "-n", ns)["data"] == {"b": "20", "c": "3", "d": "4"}
    failed = kubectl("patch", "configmap", "p", "-n", ns, "--type", "json",
                     "-p", '[{"op":"test","path":"/data/b","value":"nope"}]', check=False)
    assert failed.returncode != 0
    assert get_json(kubectl, "cm", "p", "-n", ns)["data"]["b"] == "20"

    # Strategic merge (kubectl's default type): containers merge by name, the sidecar stays.
    kubectl("patch", "deployment", "dep", "-n", ns,
            "-p", '{"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"app","image":"nginx:1.28"}]}}}}')
    dep = get_json(kubectl, "deployment", "dep", "-n", ns)
    containers = {c["name"]: c["image"] for c in dep["spec"]["template"]["spec"]["containers"]}
    assert containers == {"app": "nginx:1.28", "sidecar": "busybox:1.36"}
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["generation"] == 2
    kubectl("patch", "deployment", "dep", "-n", ns, "--type", "strategic",
            "-p", '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}')
    dep = get_json(kubectl, "deployment", "dep", "-n", ns)
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["app"]


# -- describe / api-resources / errors ---------------------------------------------------------------


def pod_event(ns: str, pod_uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "d-pod.1", "namespace": ns},
            "involvedObject": {"kind": "Pod", "name": "d-pod", "namespace": ns, "apiVersion": "v1",
                               "uid": pod_uid},
            "reason": "Scheduled", "message": "assigned to a node", "type": "Normal",
            "source": {"component": "scheduler"}, "count": 1}


def describe_objects(ns: str, node: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"role": "worker"}},
         "spec": {"podCIDR": "10.244.1.0/24"}},
        pod("d-pod", ns, node=node),
        service("d-svc", ns),
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "d-svc", "namespace": ns},
         "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": node}],
                      "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "d-svc-abc", "namespace": ns,
                      "labels": {"kubernetes.io/service-name": "d-svc"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}, "nodeName": node}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "d-netpol", "namespace": ns},
         "spec": {"podSelector": {"matchLabels": {"app": "d-pod"}}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                               "ports": [{"protocol": "TCP", "port": 80}]}]}},
        configmap("d-cm", ns, key="value"),
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d-ds", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "d-ds"}},
                  "template": {"metadata": {"labels": {"app": "d-ds"}},
                               "spec": {"containers": [{"name": "agent", "image": "busybox:1.36"}]}}}},
        deployment("d-deploy", ns),
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": "d-lease", "namespace": ns},
         "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}},
    ]


DESCRIBED = [
    ("namespaces", None), ("nodes", None), ("pods", "d-pod"), ("services", "d-svc"),
    ("endpoints", "d-svc"), ("endpointslices", "d-svc-abc"), ("networkpolicies", "d-netpol"),
    ("configmaps", "d-cm"), ("events", "d-pod.1"), ("daemonsets", "d-ds"),
    ("deployments", "d-deploy"), ("leases", "d-lease"),
]


def test_describe_every_kind(kubectl: Kubectl, ns: str) -> None:
    node = f"{ns}-node"
    try:
        out = kubectl("apply", "-f", "-", input=manifest(*describe_objects(ns, node))).stdout
        assert out.count(" created") == 10, out
        # kubectl finds a pod's events by involvedObject name, namespace and uid.
        uid = get_json(kubectl, "pod", "d-pod", "-n", ns)["metadata"]["uid"]
        kubectl("create", "-f", "-", input=manifest(pod_event(ns, uid)))
        for resource, name in DESCRIBED:
            name = {"namespaces": ns, "nodes": node}.get(resource, name)
            args = ["describe", resource, name] + ([] if resource in ("namespaces", "nodes") else ["-n", ns])
            res = kubectl(*args)
            assert name in res.stdout, f"describe {resource} {name}:\n{res.stdout}"
            first = res.stdout.splitlines()[0].split()
            assert first[:2] == ["Name:", name], res.stdout
        # The pod's describe lists its event (found through the events field selector).
        assert "assigned to a node" in kubectl("describe", "pod", "d-pod", "-n", ns).stdout
        # The node's describe lists its non-terminated pods (spec.nodeName + status.phase!=).
        assert "d-pod" in kubectl("describe", "node", node).stdout
    finally:
        kubectl("delete", "node", node, "--ignore-not-found")


def test_api_resources(kubectl: Kubectl) -> None:
    lines = kubectl("api-resources").stdout.splitlines()
    assert lines[0].split()[0] == "NAME"
    served = {line.split()[0] for line in lines[1:]}
    assert served == {"namespaces", "nodes", "pods", "services", "endpoints", "endpointslices",
                      "networkpolicies", "configmaps", "events", "daemonsets", "deployments",
                      "leases", "serviceaccounts", "clusterroles", "clusterrolebindings", "roles",
                      "rolebindings"}
    wide = kubectl("api-resources", "-o", "wide").stdout
    assert "watch" in wide
    assert kubectl("api-versions").stdout.split() == sorted([
        "apps/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1", "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1", "v1"])


def test_errors(kubectl: Kubectl, ns: str) -> None:
    missing = kubectl("get", "pod", "nope", "-n", ns, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr and 'pods "nope" not found' in missing.stderr

    bad = service("Bad_Name", ns)
    res = kubectl("create", "-f", "-", "-v=6", input=manifest(bad), check=False)
    assert res.returncode != 0
    assert "422 Unprocessable Entity" in res.stderr, res.stderr  # -v=6 logs the response status
    assert 'The Service "Bad_Name" is invalid' in res.stderr
    assert "metadata.name: Invalid value" in res.stderr
    assert names(kubectl, "services", "-n", ns) == []

    unknown = kubectl("get", "replicasets", "-n", ns, check=False)
    assert unknown.returncode != 0
    no_ns = kubectl("create", "-f", "-", check=False, input=manifest(configmap("x", f"{ns}-missing")))
    assert no_ns.returncode != 0 and "NotFound" in no_ns.stderr
