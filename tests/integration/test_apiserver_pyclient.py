"""Acceptance: the official Python client (`kubernetes` package) against a real
`netplane apiserver` subprocess on 127.0.0.1.

Most tests share one server (`apiserver` fixture, conftest.py), each in its own namespace and
with uniquely named cluster-scoped objects. Tests that need other flags (a tiny --history) or a
restart start their own server.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

SERVICE_CIDR = ipaddress.ip_network("10.100.0.0/24")
NODE_PORTS = (30000, 32767)
APISERVER_ARGS = ("--service-cidr", str(SERVICE_CIDR), "--bookmark-interval", "0.5")
MERGE = "application/merge-patch+json"

StartApiserver = Callable[..., Any]


# -- fixtures and helpers ---------------------------------------------------------------------------


def new_api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture(scope="module")
def api(apiserver: Any) -> Iterator[client.ApiClient]:
    with new_api_client(apiserver.kubeconfig) as api_client:
        yield api_client


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    return (prefix + name)[:63].strip("-")


@pytest.fixture
def ns(core: client.CoreV1Api, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test."""
    name = unique_name(request, "p-")
    core.create_namespace({"metadata": {"name": name}})
    return name


def status_of(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body = json.loads(exc.value.body)
    assert body["kind"] == "Status" and body["code"] == exc.value.status
    return body


def as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    return api.sanitize_for_serialization(obj)


def rv(obj: Any) -> int:
    return int(obj.metadata.resource_version)


def item_names(listed: Any) -> list[str]:
    return sorted(i.metadata.name for i in listed.items)


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta, "data": data or {"k": "v"}}


def pod_body(name: str, node: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels or {"app": name}}, "spec": spec}


def service_body(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                     **spec}}


def workload_body(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": name}},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}


# -- create / list / read / patch / replace / delete for every served kind ----------------------------


@dataclass(frozen=True)
class Kind:
    api: str
    snake: str
    namespaced: bool
    body: Callable[[str, str], dict[str, Any]]  # (name, namespace)
    patch: dict[str, Any]
    patched: Callable[[dict[str, Any]], bool]
    replace: Callable[[dict[str, Any]], None]  # mutates a read object for the replace
    replaced: Callable[[dict[str, Any]], bool]

    def call(self, api: client.ApiClient, verb: str, *args: Any, ns: str, **kwargs: Any) -> Any:
        target = getattr(client, self.api)(api)
        if self.namespaced:
            method = getattr(target, f"{verb}_namespaced_{self.snake}")
            if verb in ("create", "list"):  # (namespace, body) vs (name, namespace, body)
                return method(ns, *args, **kwargs)
            return method(args[0], ns, *args[1:], **kwargs)
        return getattr(target, f"{verb}_{self.snake}")(*args, **kwargs)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj.setdefault(p, {})
        if isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return mutate


def _get(obj: Any, path: str) -> Any:
    for p in path.split("."):
        obj = obj[int(p)] if isinstance(obj, list) else (obj or {}).get(p)
    return obj


def _labels_has(**want: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())


KINDS = {
    "namespace": Kind(
        "CoreV1Api", "namespace", False, lambda n, ns: {"metadata": {"name": n, "labels": {"a": "1"}}},
        {"metadata": {"labels": {"b": "2"}}}, _labels_has(a="1", b="2"),
        _set("metadata.labels", {"c": "3"}),
        lambda o: o["metadata"]["labels"].get("c") == "3" and "a" not in o["metadata"]["labels"]),
    "node": Kind(
        "CoreV1Api", "node", False, lambda n, ns: {"metadata": {"name": n}, "spec": {"podCIDR": "10.244.7.0/24"}},
        {"spec": {"unschedulable": True}}, lambda o: o["spec"]["unschedulable"] is True,
        _set("metadata.labels", {"zone": "z1"}), _labels_has(zone="z1")),
    "pod": Kind(
        "CoreV1Api", "pod", True, lambda n, ns: pod_body(n),
        {"metadata": {"labels": {"extra": "x"}}}, _labels_has(extra="x"),
        _set("spec.containers.0.image", "nginx:1.28"),
        lambda o: o["spec"]["containers"][0]["image"] == "nginx:1.28"),
    "service": Kind(
        "CoreV1Api", "service", True, lambda n, ns: service_body(n),
        {"spec": {"ports": [{"port": 443, "name": "https", "protocol": "TCP"}]}},
        lambda o: sorted(p["port"] for p in o["spec"]["ports"]) == [80, 443],
        _set("spec.selector", {"app": "other"}), lambda o: o["spec"]["selector"] == {"app": "other"}),
    "config_map": Kind(
        "CoreV1Api", "config_map", True, lambda n, ns: configmap(n, a="1"),
        {"data": {"b": "2"}}, lambda o: o["data"] == {"a": "1", "b": "2"},
        _set("data", {"c": "3"}), lambda o: o["data"] == {"c": "3"}),
    "endpoints": Kind(
        "CoreV1Api", "endpoints", True,
        lambda n, ns: {"metadata": {"name": n}, "subsets": [{"addresses": [{"ip": "10.244.1.5"}],
                                                        "ports": [{"port": 8080, "protocol": "TCP"}]}]},
        {"metadata": {"labels": {"svc": "x"}}}, _labels_has(svc="x"),
        _set("subsets.0.addresses", [{"ip": "10.244.1.6"}, {"ip": "10.244.1.7"}]),
        lambda o: [a["ip"] for a in o["subsets"][0]["addresses"]] == ["10.244.1.6", "10.244.1.7"]),
    "event": Kind(
        "CoreV1Api", "event", True,
        lambda n, ns: {"metadata": {"name": n},
                       "involvedObject": {"kind": "Pod", "name": "p", "namespace": ns, "apiVersion": "v1"},
                   "reason": "Test", "message": "first", "type": "Normal", "count": 1,
                   "source": {"component": "pytest"}},
        {"count": 2}, lambda o: o["count"] == 2,
        _set("message", "second"), lambda o: o["message"] == "second"),
    "endpoint_slice": Kind(
        "DiscoveryV1Api", "endpoint_slice", True,
        lambda n, ns: {"metadata": {"name": n, "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.5"]}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        {"metadata": {"labels": {"extra": "x"}}}, _labels_has(extra="x"),
        _set("endpoints", [{"addresses": ["10.244.2.9"], "conditions": {"ready": False}}]),
        lambda o: o["endpoints"][0]["addresses"] == ["10.244.2.9"]
        and o["endpoints"][0]["conditions"]["ready"] is False),
    "network_policy": Kind(
        "NetworkingV1Api", "network_policy", True,
        lambda n, ns: {"metadata": {"name": n}, "spec": {"podSelector": {"matchLabels": {"app": "web"}}}},
        {"spec": {"policyTypes": ["Ingress", "Egress"]}},
        lambda o: o["spec"]["policyTypes"] == ["Ingress", "Egress"],
        _set("spec.ingress", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]),
        lambda o: o["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] == "10.0.0.0/8"),
    "deployment": Kind(
        "AppsV1Api", "deployment", True, lambda n, ns: workload_body(n),
        {"spec": {"replicas": 3}}, lambda o: o["spec"]["replicas"] == 3,
        _set("spec.template.spec.containers.0.image", "nginx:1.28"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"),
    "daemon_set": Kind(
        "AppsV1Api", "daemon_set", True, lambda n, ns: workload_body(n),
        {"metadata": {"labels": {"extra": "x"}}}, _labels_has(extra="x"),
        _set("spec.template.spec.containers.0.image", "nginx:1.28"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"),
    "lease": Kind(
        "CoordinationV1Api", "lease", True,
        lambda n, ns: {"metadata": {"name": n}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
        {"spec": {"leaseDurationSeconds": 30}}, lambda o: o["spec"]["leaseDurationSeconds"] == 30,
        _set("spec.holderIdentity", "b"), lambda o: o["spec"]["holderIdentity"] == "b"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_crud(api: client.ApiClient, ns: str, kind: str, request: pytest.FixtureRequest) -> None:
    k = KINDS[kind]
    name = unique_name(request, "c-") if not k.namespaced else f"obj-{kind.replace('_', '-')}"

    created = k.call(api, "create", k.body(name, ns), ns=ns)
    assert created.metadata.name == name and created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert (created.metadata.namespace == ns) if k.namespaced else created.metadata.namespace is None
    try:
        if k.namespaced:
            listed = k.call(api, "list", ns=ns)
        else:
            listed = k.call(api, "list", ns=ns, field_selector=f"metadata.name={name}")
        assert [i.metadata.uid for i in listed.items] == [created.metadata.uid]
        assert rv(listed) >= rv(created)

        read = k.call(api, "read", name, ns=ns)
        assert as_dict(api, read) == as_dict(api, created)

        patched = k.call(api, "patch", name, k.patch, ns=ns)
        assert k.patched(as_dict(api, patched)), as_dict(api, patched)
        assert rv(patched) > rv(created) and patched.metadata.uid == created.metadata.uid

        body = as_dict(api, k.call(api, "read", name, ns=ns))
        k.replace(body)
        replaced = k.call(api, "replace", name, body, ns=ns)
        assert k.replaced(as_dict(api, replaced)), as_dict(api, replaced)
        assert rv(replaced) > rv(patched)
        assert as_dict(api, k.call(api, "read", name, ns=ns)) == as_dict(api, replaced)
    finally:
        k.call(api, "delete", name, ns=ns)

    def gone() -> bool:
        try:
            k.call(api, "read", name, ns=ns)
        except ApiException as e:
            assert e.status == 404
            return True
        return False

    eventually(gone, what=f"{kind} {name} deleted")


def test_conflicts(core: client.CoreV1Api, ns: str) -> None:
    first = core.create_namespaced_config_map(ns, configmap("cm", a="1"))
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(ns, configmap("cm", a="2"))
    assert exists.value.status == 409 and status_of(exists)["reason"] == "AlreadyExists"

    core.patch_namespaced_config_map("cm", ns, {"data": {"a": "changed"}})
    stale = as_dict(core.api_client, first)
    stale["data"] = {"a": "stale"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", ns, stale)
    assert conflict.value.status == 409 and status_of(conflict)["reason"] == "Conflict"
    assert core.read_namespaced_config_map("cm", ns).data == {"a": "changed"}

    # Without a resourceVersion a replace is unconditional.
    stale["metadata"].pop("resourceVersion")
    assert core.replace_namespaced_config_map("cm", ns, stale).data == {"a": "stale"}


# -- watch -----------------------------------------------------------------------------------------------


class Watcher:
    """Runs `watch.Watch().stream(...)` in a thread; events land in a queue."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any):
        self.w = watch.Watch()
        self.q: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        kwargs.setdefault("timeout_seconds", 20)
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            for event in self.w.stream(func, *args, **kwargs):
                self.q.put(event)
        except BaseException as e:  # surfaced to the test by next()
            self.q.put(e)

    def next(self, timeout: float = 10.0, skip_bookmarks: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, BaseException):
                raise item
            if skip_bookmarks and item["type"] == "BOOKMARK":
                continue
            return item

    def stop(self) -> None:
        self.w.stop()
        self._thread.join(10)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    running: list[Watcher] = []
    try:
        yield running
    finally:
        for w in running:
            w.stop()


def brief(event: dict[str, Any]) -> tuple[str, str]:
    return event["type"], event["raw_object"]["metadata"]["name"]


def test_watch_sees_changes_in_order(core: client.CoreV1Api, ns: str, watchers: list[Watcher]) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    w = Watcher(core.list_namespaced_config_map, ns, resource_version=start)
    watchers.append(w)
    core.create_namespaced_config_map(ns, configmap("a", x="1"))
    core.patch_namespaced_config_map("a", ns, {"data": {"x": "2"}})
    core.delete_namespaced_config_map("a", ns)
    events = [w.next() for _ in range(3)]
    assert [brief(e) for e in events] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert events[1]["object"].data == {"x": "2"}  # deserialized into V1ConfigMap
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3

    # A watch without a resourceVersion starts with the current objects as ADDED.
    core.create_namespaced_config_map(ns, configmap("b"))
    w2 = Watcher(core.list_namespaced_config_map, ns)
    watchers.append(w2)
    assert brief(w2.next()) == ("ADDED", "b")


def test_watch_resume_from_resource_version(core: client.CoreV1Api, ns: str,
                                            watchers: list[Watcher]) -> None:
    core.create_namespaced_config_map(ns, configmap("a"))
    b = core.create_namespaced_config_map(ns, configmap("b"))
    core.patch_namespaced_config_map("a", ns, {"data": {"k": "2"}})
    core.delete_namespaced_config_map("b", ns)
    core.create_namespaced_config_map("default", configmap(f"{ns}-elsewhere"))  # another namespace
    core.create_namespaced_config_map(ns, configmap("sentinel"))
    try:
        w = Watcher(core.list_namespaced_config_map, ns, resource_version=b.metadata.resource_version)
        watchers.append(w)
        got = []
        while not got or got[-1] != ("ADDED", "sentinel"):
            got.append(brief(w.next()))
        assert got == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "sentinel")]
    finally:
        core.delete_namespaced_config_map(f"{ns}-elsewhere", "default")


def test_watch_label_selector_transitions(core: client.CoreV1Api, ns: str,
                                          watchers: list[Watcher]) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, configmap("x", {"sel": "in"}))
    core.patch_namespaced_config_map("x", ns, {"data": {"k": "2"}})
    core.patch_namespaced_config_map("x", ns, {"metadata": {"labels": {"sel": "out"}}})
    core.patch_namespaced_config_map("x", ns, {"data": {"k": "3"}})  # unseen: not selected
    core.patch_namespaced_config_map("x", ns, {"metadata": {"labels": {"sel": "in"}}})
    core.create_namespaced_config_map(ns, configmap("never", {"sel": "out"}))
    core.delete_namespaced_config_map("x", ns)
    w = Watcher(core.list_namespaced_config_map, ns, resource_version=start, label_selector="sel=in")
    watchers.append(w)
    got = [brief(w.next()) for _ in range(5)]
    # Leaving the selection looks like a delete, entering it like an add (as upstream).
    assert got == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "x"), ("DELETED", "x")]
    with pytest.raises(queue.Empty):
        w.next(timeout=0.3)


def test_watch_bookmarks(core: client.CoreV1Api, ns: str, watchers: list[Watcher]) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    w = Watcher(core.list_namespaced_config_map, ns, resource_version=start, allow_watch_bookmarks=True)
    watchers.append(w)
    first = w.next(timeout=5, skip_bookmarks=False)
    assert first["type"] == "BOOKMARK"
    assert first["raw_object"]["kind"] == "ConfigMap" and first["raw_object"]["apiVersion"] == "v1"
    assert int(first["raw_object"]["metadata"]["resourceVersion"]) >= int(start)
    # A change elsewhere moves the resourceVersion; a later bookmark carries it.
    other = core.create_namespaced_config_map("default", configmap(f"{ns}-bm"))
    try:
        deadline = time.monotonic() + 5
        while True:
            event = w.next(timeout=max(0.1, deadline - time.monotonic()), skip_bookmarks=False)
            assert event["type"] == "BOOKMARK"  # nothing happened in this namespace
            if int(event["raw_object"]["metadata"]["resourceVersion"]) >= rv(other):
                break
        assert w.w.resource_version == event["raw_object"]["metadata"]["resourceVersion"]
    finally:
        core.delete_namespaced_config_map(f"{ns}-bm", "default")


def test_watch_and_list_gone_after_compaction(start_apiserver: StartApiserver) -> None:
    server = start_apiserver("--history", "5")
    with new_api_client(server.kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "compact"}})
        first = core.create_namespaced_config_map("compact", configmap("cm", n="0"))
        for i in range(1, 13):
            core.patch_namespaced_config_map("cm", "compact", {"data": {"n": str(i)}})
        with pytest.raises(ApiException) as gone:
            for event in watch.Watch().stream(core.list_namespaced_config_map, "compact",
                                              resource_version=first.metadata.resource_version,
                                              timeout_seconds=5):
                if event["type"] == "ERROR":  # a client that surfaces the ERROR event itself
                    assert event["raw_object"]["code"] == 410
                    raise ApiException(status=410)
                pytest.fail(f"watch from a compacted version delivered {event['type']}")
        assert gone.value.status == 410

        with pytest.raises(ApiException) as too_old:
            core.list_namespaced_config_map("compact", resource_version=first.metadata.resource_version,
                                            resource_version_match="Exact")
        assert too_old.value.status == 410 and status_of(too_old)["reason"] in ("Expired", "Gone")

        # A recent version still resumes.
        recent = core.read_namespaced_config_map("cm", "compact")
        core.patch_namespaced_config_map("cm", "compact", {"data": {"n": "last"}})
        events = []
        for event in watch.Watch().stream(core.list_namespaced_config_map, "compact",
                                          resource_version=recent.metadata.resource_version,
                                          timeout_seconds=1):
            events.append(brief(event))
        assert events == [("MODIFIED", "cm")]


def test_list_resource_version_semantics(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, configmap("a"))
    listed = core.list_namespaced_config_map(ns)
    current = listed.metadata.resource_version
    exact = core.list_namespaced_config_map(ns, resource_version=current, resource_version_match="Exact")
    assert item_names(exact) == ["a"]
    newer = core.list_namespaced_config_map(ns, resource_version="1", resource_version_match="NotOlderThan")
    assert item_names(newer) == ["a"] and int(newer.metadata.resource_version) >= int(current)
    any_version = core.list_namespaced_config_map(ns, resource_version="0")
    assert item_names(any_version) == ["a"]


# -- selectors and pagination ---------------------------------------------------------------------------


def test_label_and_field_selectors(core: client.CoreV1Api, ns: str) -> None:
    for name, labels in {"a": {"env": "prod", "tier": "web"}, "b": {"env": "dev", "tier": "web"},
                         "c": {"env": "prod"}, "d": {}}.items():
        core.create_namespaced_config_map(ns, configmap(name, labels))

    def sel(selector: str) -> list[str]:
        return item_names(core.list_namespaced_config_map(ns, label_selector=selector))

    assert sel("env=prod") == ["a", "c"]
    assert sel("env==prod") == ["a", "c"]
    assert sel("env!=prod") == ["b", "d"]
    assert sel("env in (dev,qa)") == ["b"]
    assert sel("env notin (prod)") == ["b", "d"]
    assert sel("tier") == ["a", "b"]
    assert sel("!tier") == ["c", "d"]
    assert sel("env=prod,tier") == ["a"]
    assert sel("env in (prod),!tier") == ["c"]
    with pytest.raises(ApiException) as bad:
        sel("env in prod")
    assert bad.value.status == 400

    def fsel(selector: str) -> list[str]:
        return item_names(core.list_namespaced_config_map(ns, field_selector=selector))

    assert fsel("metadata.name=b") == ["b"]
    assert fsel("metadata.name!=b") == ["a", "c", "d"]
    everywhere = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert item_names(everywhere) == ["a", "b", "c", "d"]
    assert {i.metadata.namespace for i in everywhere.items} == {ns}
    assert item_names(core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={ns},metadata.name=c", label_selector="env=prod")) == ["c"]
    with pytest.raises(ApiException) as unsupported:
        fsel("data.k=v")
    assert unsupported.value.status == 400

    core.create_namespaced_pod(ns, pod_body("on-n1", node=f"{ns}-n1"))
    core.create_namespaced_pod(ns, pod_body("on-n2", node=f"{ns}-n2"))
    core.create_namespaced_pod(ns, pod_body("pending"))
    pods = lambda s: item_names(core.list_namespaced_pod(ns, field_selector=s))  # noqa: E731
    assert pods(f"spec.nodeName={ns}-n1") == ["on-n1"]
    assert pods("spec.nodeName=") == ["pending"]
    assert pods(f"spec.nodeName!={ns}-n1") == ["on-n2", "pending"]
    assert item_names(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={ns}-n2")) == ["on-n2"]


def test_pagination(core: client.CoreV1Api, ns: str) -> None:
    original = [f"cm-{i:02d}" for i in range(25)]
    for name in original:
        core.create_namespaced_config_map(ns, configmap(name))

    page1 = core.list_namespaced_config_map(ns, limit=10)
    assert item_names(page1) == original[:10]
    assert page1.metadata.var_continue and page1.metadata.remaining_item_count == 15
    # Changes between pages do not show up in (or shift) the remaining pages.
    core.create_namespaced_config_map(ns, configmap("cm-05a"))
    core.create_namespaced_config_map(ns, configmap("cm-99"))
    core.delete_namespaced_config_map("cm-15", ns)
    core.patch_namespaced_config_map("cm-20", ns, {"data": {"k": "changed"}})

    page2 = core.list_namespaced_config_map(ns, limit=10, _continue=page1.metadata.var_continue)
    assert item_names(page2) == original[10:20]
    assert page2.metadata.var_continue and page2.metadata.remaining_item_count == 5
    page3 = core.list_namespaced_config_map(ns, limit=10, _continue=page2.metadata.var_continue)
    assert item_names(page3) == original[20:]
    assert page3.metadata.var_continue is None and page3.metadata.remaining_item_count is None
    assert page3.items[0].data == {"k": "v"}  # as of the first page's resourceVersion
    assert page1.metadata.resource_version == page2.metadata.resource_version == \
        page3.metadata.resource_version

    now = core.list_namespaced_config_map(ns)
    assert item_names(now) == sorted([n for n in original if n != "cm-15"] + ["cm-05a", "cm-99"])
    assert int(now.metadata.resource_version) > int(page1.metadata.resource_version)

    # Paging with a label selector; the token is opaque and bound to its list.
    for i in range(3):
        core.patch_namespaced_config_map(f"cm-{i:02d}", ns, {"metadata": {"labels": {"pick": "yes"}}})
    sel1 = core.list_namespaced_config_map(ns, limit=2, label_selector="pick=yes")
    assert item_names(sel1) == ["cm-00", "cm-01"] and sel1.metadata.var_continue
    sel2 = core.list_namespaced_config_map(ns, limit=2, label_selector="pick=yes",
                                           _continue=sel1.metadata.var_continue)
    assert item_names(sel2) == ["cm-02"] and sel2.metadata.var_continue is None
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_config_map(ns, limit=2, _continue="not-a-token")
    assert bad.value.status in (400, 410)


# -- restart persistence -----------------------------------------------------------------------------


def test_restart_keeps_objects_uids_and_versions(start_apiserver: StartApiserver, scratch_dir: Path) -> None:
    data = scratch_dir / "data"
    server = start_apiserver("--data-dir", str(data), "--service-cidr", str(SERVICE_CIDR))

    def snapshot(api: client.ApiClient) -> dict[str, Any]:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        return {
            "ns": as_dict(api, core.read_namespace("keep")),
            "cm": as_dict(api, core.read_namespaced_config_map("cm", "keep")),
            "svc": as_dict(api, core.read_namespaced_service("svc", "keep")),
            "pod": as_dict(api, core.read_namespaced_pod("pod", "keep")),
            "deploy": as_dict(api, apps.read_namespaced_deployment("deploy", "keep")),
            "node": as_dict(api, core.read_node("keep-node")),
        }

    with new_api_client(server.kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "keep"}})
        core.create_namespaced_config_map("keep", configmap("cm", a="1"))
        core.create_namespaced_config_map("keep", configmap("deleted-before-restart"))
        core.delete_namespaced_config_map("deleted-before-restart", "keep")
        core.create_namespaced_service("keep", service_body("svc", type="NodePort"))
        core.create_namespaced_pod("keep", pod_body("pod", node="keep-node"))
        client.AppsV1Api(api).create_namespaced_deployment("keep", workload_body("deploy"))
        core.create_node({"metadata": {"name": "keep-node"}})
        core.patch_namespaced_config_map("cm", "keep", {"data": {"b": "2"}})
        before = snapshot(api)
        list_rv = int(core.list_namespaced_config_map("keep").metadata.resource_version)

    assert server.stop() == 0  # SIGTERM: a clean exit
    server.start()
    with new_api_client(server.kubeconfig) as api:
        core = client.CoreV1Api(api)
        after = snapshot(api)
        assert after == before  # same objects, uids, resourceVersions, timestamps, allocations
        assert item_names(core.list_namespaced_config_map("keep")) == ["cm"]
        assert int(core.list_namespaced_config_map("keep").metadata.resource_version) == list_rv
        earlier = max(int(o["metadata"]["resourceVersion"]) for o in before.values())
        written = core.create_namespaced_config_map("keep", configmap("after"))
        assert rv(written) > max(earlier, list_rv)
        # The allocations were rebuilt from the stored Services: the same IP and port are taken.
        svc = before["svc"]["spec"]
        with pytest.raises(ApiException) as taken:
            core.create_namespaced_service("keep", service_body("dup-ip", clusterIP=svc["clusterIP"]))
        assert taken.value.status == 422
        with pytest.raises(ApiException) as port_taken:
            core.create_namespaced_service("keep", service_body(
                "dup-port", type="NodePort",
                ports=[{"port": 80, "protocol": "TCP", "nodePort": svc["ports"][0]["nodePort"]}]))
        assert port_taken.value.status == 422
        # The event log is not persisted: a watch from an older version gets 410 (and re-lists),
        # one from the version the server stopped at resumes.
        with pytest.raises(ApiException) as gone:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "keep",
                                          resource_version=before["ns"]["metadata"]["resourceVersion"],
                                          timeout_seconds=2):
                pass
        assert gone.value.status == 410
        resumed = [brief(e) for e in watch.Watch().stream(
            core.list_namespaced_config_map, "keep", resource_version=str(list_rv), timeout_seconds=1)]
        assert resumed == [("ADDED", "after")]


# -- Service ClusterIP / NodePort allocation -----------------------------------------------------------


def used_ips_and_ports(core: client.CoreV1Api) -> tuple[set[str], set[int]]:
    ips: set[str] = set()
    ports: set[int] = set()
    for svc in core.list_service_for_all_namespaces().items:
        ips.update(svc.spec.cluster_ips or [])
        ports.update(p.node_port for p in svc.spec.ports or [] if p.node_port)
    return ips, ports


def free_ip(core: client.CoreV1Api) -> str:
    used, _ = used_ips_and_ports(core)
    return next(str(ip) for ip in reversed(list(SERVICE_CIDR.hosts())) if str(ip) not in used)


def free_node_port(core: client.CoreV1Api) -> int:
    _, used = used_ips_and_ports(core)
    return next(p for p in range(NODE_PORTS[1], NODE_PORTS[0], -1) if p not in used)


def assert_invalid(exc: pytest.ExceptionInfo[ApiException], field: str, text: str) -> None:
    assert exc.value.status == 422
    body = status_of(exc)
    assert body["reason"] == "Invalid"
    assert any(c.get("field") == field for c in body["details"]["causes"]), body
    assert text in body["message"], body["message"]


def test_cluster_ip_allocation(core: client.CoreV1Api, ns: str) -> None:
    auto = core.create_namespaced_service(ns, service_body("auto"))
    ip = auto.spec.cluster_ip
    assert ipaddress.ip_address(ip) in SERVICE_CIDR and auto.spec.cluster_ips == [ip]
    assert ip not in (str(SERVICE_CIDR.network_address), str(SERVICE_CIDR.broadcast_address))

    with pytest.raises(ApiException) as dup:
        core.create_namespaced_service(ns, service_body("dup", clusterIP=ip))
    assert_invalid(dup, "spec.clusterIPs", "already allocated")
    with pytest.raises(ApiException) as outside:
        core.create_namespaced_service(ns, service_body("outside", clusterIP="10.200.0.5"))
    assert_invalid(outside, "spec.clusterIPs", "not in the valid range")

    explicit = free_ip(core)
    made = core.create_namespaced_service(ns, service_body("explicit", clusterIP=explicit))
    assert made.spec.cluster_ip == explicit and made.spec.cluster_ips == [explicit]
    with pytest.raises(ApiException):
        core.create_namespaced_service(ns, service_body("explicit-again", clusterIP=explicit))
    core.delete_namespaced_service("explicit", ns)
    reused = core.create_namespaced_service(ns, service_body("explicit-again", clusterIP=explicit))
    assert reused.spec.cluster_ip == explicit

    # A rejected create allocates nothing: the IP it would have taken is still free.
    candidate = free_ip(core)
    with pytest.raises(ApiException):
        core.create_namespaced_service(ns, {**service_body("bad", clusterIP=candidate),
                                            "metadata": {"name": "Bad_Name"}})
    assert core.create_namespaced_service(ns, service_body("good", clusterIP=candidate)).spec.cluster_ip == candidate

    headless = core.create_namespaced_service(ns, service_body("headless", clusterIP="None"))
    assert headless.spec.cluster_ip == "None" and headless.spec.cluster_ips == ["None"]

    # The ClusterIP is immutable, and a replace without it keeps the allocated one.
    with pytest.raises(ApiException) as immutable:
        core.patch_namespaced_service("auto", ns, {"spec": {"clusterIP": free_ip(core),
                                                            "clusterIPs": None}})
    assert immutable.value.status == 422
    body = as_dict(core.api_client, core.read_namespaced_service("auto", ns))
    body["spec"].pop("clusterIP")
    body["spec"].pop("clusterIPs")
    assert core.replace_namespaced_service("auto", ns, body).spec.cluster_ip == ip


def test_node_port_allocation(core: client.CoreV1Api, ns: str) -> None:
    first = core.create_namespaced_service(ns, service_body("np", type="NodePort"))
    port = first.spec.ports[0].node_port
    assert NODE_PORTS[0] <= port <= NODE_PORTS[1]
    assert ipaddress.ip_address(first.spec.cluster_ip) in SERVICE_CIDR

    def with_port(name: str, node_port: int) -> dict[str, Any]:
        return service_body(name, type="NodePort",
                            ports=[{"port": 80, "protocol": "TCP", "nodePort": node_port}])

    with pytest.raises(ApiException) as dup:
        core.create_namespaced_service(ns, with_port("np-dup", port))
    assert_invalid(dup, "spec.ports[0].nodePort", "already allocated")
    with pytest.raises(ApiException) as outside:
        core.create_namespaced_service(ns, with_port("np-out", 8080))
    assert outside.value.status == 422

    core.delete_namespaced_service("np", ns)  # frees the port
    assert core.create_namespaced_service(ns, with_port("np-reuse", port)).spec.ports[0].node_port == port

    # Changing the type to ClusterIP frees the node port.
    changed = core.patch_namespaced_service("np-reuse", ns, {"spec": {"type": "ClusterIP"}})
    assert changed.spec.type == "ClusterIP" and changed.spec.ports[0].node_port is None
    assert core.create_namespaced_service(ns, with_port("np-after-type", port)).spec.ports[0].node_port == port

    explicit = free_node_port(core)
    made = core.create_namespaced_service(ns, with_port("np-explicit", explicit))
    assert made.spec.ports[0].node_port == explicit
    # A ClusterIP service gets no node port; a headless one gets no ClusterIP.
    plain = core.create_namespaced_service(ns, service_body("plain"))
    assert plain.spec.ports[0].node_port is None
    headless = core.create_namespaced_service(ns, service_body("hl", clusterIP="None", type="ClusterIP"))
    assert headless.spec.cluster_ip == "None" and headless.spec.ports[0].node_port is None


# -- deletion: grace periods, finalizers, namespaces ------------------------------------------------------


def test_graceful_pod_deletion(core: client.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod_body("bound", node=f"{ns}-node"))
    core.delete_namespaced_pod("bound", ns)
    terminating = core.read_namespaced_pod("bound", ns)
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    assert item_names(core.list_namespaced_pod(ns)) == ["bound"]
    core.delete_namespaced_pod("bound", ns)  # again: still terminating, nothing changes
    assert rv(core.read_namespaced_pod("bound", ns)) == rv(terminating)
    core.delete_namespaced_pod("bound", ns, grace_period_seconds=0)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("bound", ns)
    assert gone.value.status == 404
    seen = [(e["type"], e["raw_object"]["metadata"].get("deletionGracePeriodSeconds"))
            for e in watch.Watch().stream(core.list_namespaced_pod, ns, timeout_seconds=1,
                                          resource_version=created.metadata.resource_version)]
    assert seen == [("MODIFIED", 30), ("DELETED", 0)]

    core.create_namespaced_pod(ns, pod_body("unbound"))
    core.delete_namespaced_pod("unbound", ns)
    with pytest.raises(ApiException) as gone_now:
        core.read_namespaced_pod("unbound", ns)
    assert gone_now.value.status == 404


def test_finalizers(core: client.CoreV1Api, ns: str) -> None:
    body = configmap("held")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    core.create_namespaced_config_map(ns, body)
    core.delete_namespaced_config_map("held", ns)
    marked = core.read_namespaced_config_map("held", ns)
    assert marked.metadata.deletion_timestamp is not None
    assert marked.metadata.finalizers == ["example.com/hold"]
    assert item_names(core.list_namespaced_config_map(ns)) == ["held"]
    # Other changes are still allowed while it waits; removing the last finalizer deletes it.
    core.patch_namespaced_config_map("held", ns, {"data": {"k": "2"}})
    core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}}, _content_type=MERGE)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("held", ns)
    assert gone.value.status == 404


def test_namespace_deletion_removes_contents(api: client.ApiClient, core: client.CoreV1Api,
                                             request: pytest.FixtureRequest) -> None:
    name = unique_name(request, "p-")
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, configmap("cm"))
    core.create_namespaced_pod(name, pod_body("pod", node=f"{name}-node"))
    svc = core.create_namespaced_service(name, service_body("svc"))
    client.AppsV1Api(api).create_namespaced_deployment(name, workload_body("deploy"))
    client.CoordinationV1Api(api).create_namespaced_lease(name, {"metadata": {"name": "l"}, "spec": {}})

    core.delete_namespace(name)

    def ns_gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(ns_gone, what=f"namespace {name} deleted")
    selector = f"metadata.namespace={name}"
    assert core.list_config_map_for_all_namespaces(field_selector=selector).items == []
    assert core.list_pod_for_all_namespaces(field_selector=selector).items == []
    assert core.list_service_for_all_namespaces(field_selector=selector).items == []
    assert client.AppsV1Api(api).list_deployment_for_all_namespaces(field_selector=selector).items == []
    assert client.CoordinationV1Api(api).list_lease_for_all_namespaces(field_selector=selector).items == []
    with pytest.raises(ApiException) as no_ns:
        core.create_namespaced_config_map(name, configmap("late"))
    assert no_ns.value.status == 404
    # A namespace of the same name starts empty, and the Service's ClusterIP was freed.
    core.create_namespace({"metadata": {"name": name}})
    try:
        assert core.list_namespaced_config_map(name).items == []
        again = core.create_namespaced_service(name, service_body("svc", clusterIP=svc.spec.cluster_ip))
        assert again.spec.cluster_ip == svc.spec.cluster_ip
    finally:
        core.delete_namespace(name)


# -- status subresource ----------------------------------------------------------------------------------


def test_pod_status_subresource(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod_body("p", node=f"{ns}-node", labels={"app": "p"}))
    assert (created.status is None) or (created.status.phase in (None, "Pending"))

    body = as_dict(api, created)
    body["status"] = {"phase": "Running", "podIP": "10.244.3.7", "podIPs": [{"ip": "10.244.3.7"}],
                      "hostIP": "192.168.1.10"}
    body["metadata"]["labels"] = {"app": "changed-by-status"}
    body["spec"]["containers"][0]["image"] = "changed:by-status"
    after_status = core.replace_namespaced_pod_status("p", ns, body)
    assert after_status.status.phase == "Running" and after_status.status.pod_ip == "10.244.3.7"
    assert after_status.metadata.labels == {"app": "p"}
    assert after_status.spec.containers[0].image == "nginx:1.27"
    assert rv(after_status) > rv(created)
    assert after_status.metadata.generation == created.metadata.generation

    main = as_dict(api, core.read_namespaced_pod("p", ns))
    main["metadata"]["labels"] = {"app": "p", "v": "2"}
    main["status"] = {"phase": "Failed", "podIP": "10.244.9.9"}
    after_main = core.replace_namespaced_pod("p", ns, main)
    assert after_main.metadata.labels == {"app": "p", "v": "2"}
    assert after_main.status.phase == "Running" and after_main.status.pod_ip == "10.244.3.7"

    patched = core.patch_namespaced_pod_status("p", ns, {"status": {"phase": "Succeeded"}})
    assert patched.status.phase == "Succeeded" and patched.metadata.labels == {"app": "p", "v": "2"}
    read = core.read_namespaced_pod_status("p", ns)
    assert read.status.phase == "Succeeded"
