"""The API verbs on a Store, without HTTP: system metadata, optimistic concurrency, status
subresources, patches, deletion (preconditions, grace periods, finalizers, namespace cascade),
paginated lists over snapshots, and watches (initial events, resume, selector transitions, 410,
bookmarks, timeouts). A fake clock; no sockets; no threads."""

from __future__ import annotations

import base64
import random
import time

import orjson
import pytest

from netplane.apiserver import status as st
from netplane.apiserver.allocators import ServiceAllocator
from netplane.apiserver.api import DEFAULT_NAMESPACES, Api, Selection
from netplane.apiserver.resources import lookup
from netplane.apiserver.store import Store

PODS = lookup("", "v1", "pods")
SERVICES = lookup("", "v1", "services")
CONFIGMAPS = lookup("", "v1", "configmaps")
NAMESPACES = lookup("", "v1", "namespaces")
NODES = lookup("", "v1", "nodes")
DEPLOYMENTS = lookup("apps", "v1", "deployments")
SLICES = lookup("discovery.k8s.io", "v1", "endpointslices")

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_api(clock: Clock, *, history: int = 10_000, bookmark_interval: float = 60.0) -> Api:
    return Api(Store(history=history), ServiceAllocator("10.96.0.0/24", rng=random.Random(3)),
               clock=clock, bookmark_interval=bookmark_interval)


@pytest.fixture
def api(clock: Clock) -> Api:
    return make_api(clock)


def cm(name: str = "c", **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def pod(name: str = "p", node: str | None = None, labels: dict | None = None, **meta) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    m: dict = {"name": name, **meta}
    if labels:
        m["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": spec}


def service(name: str = "s", **spec) -> dict:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], **spec}}


def rv_of(stored) -> int:
    return int(stored.obj["metadata"]["resourceVersion"])


def raises(code: int, reason: str | None = None):
    class _Ctx:
        def __enter__(self):
            return self

        def __exit__(self, typ, exc, tb):
            assert typ is not None, f"expected ApiStatus {code}, nothing raised"
            assert issubclass(typ, st.ApiStatus), f"expected ApiStatus {code}, got {typ.__name__}: {exc}"
            assert exc.code == code, f"expected {code}, got {exc.code}: {exc.message}"
            if reason is not None:
                assert exc.reason == reason, exc.reason
            body = exc.body()
            assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == code
            self.exc = exc
            return True

    return _Ctx()


# -- start-up -------------------------------------------------------------------------------------------


def test_default_namespaces_exist(api):
    names = [k[1] for k, _ in api.store.items(NAMESPACES.key)]
    assert sorted(names) == sorted(DEFAULT_NAMESPACES)
    assert api.store.rv == len(DEFAULT_NAMESPACES)
    ns = api.get(NAMESPACES, None, "default").obj
    assert ns["status"] == {"phase": "Active"}


def test_restart_on_an_existing_store_keeps_namespaces_and_allocations(api, clock):
    s = api.create(SERVICES, "default", service(clusterIP="10.96.0.50"))
    again = Api(api.store, ServiceAllocator("10.96.0.0/24"), clock=clock)
    assert again.store.rv == rv_of(s)  # nothing re-created
    with raises(422, "Invalid") as ctx:
        again.create(SERVICES, "default", service("t", clusterIP="10.96.0.50"))
    assert "already allocated" in ctx.exc.message


# -- create ---------------------------------------------------------------------------------------------


def test_create_sets_system_metadata(api):
    before = api.store.rv
    p = api.create(PODS, "default", pod(labels={"app": "web"}))
    meta = p.obj["metadata"]
    assert meta["namespace"] == "default"
    assert meta["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert meta["resourceVersion"] == str(before + 1) == str(api.store.rv)
    assert meta["generation"] == 1
    assert len(meta["uid"]) == 36 and meta["uid"].count("-") == 4
    assert p.obj["apiVersion"] == "v1" and p.obj["kind"] == "Pod"
    assert p.obj["status"] == {"phase": "Pending"}  # defaulted
    assert p.obj["spec"]["restartPolicy"] == "Always"
    assert api.get(PODS, "default", "p") is p
    # ConfigMaps have no generation.
    c = api.create(CONFIGMAPS, "default", cm())
    assert "generation" not in c.obj["metadata"]
    assert c.obj["metadata"]["uid"] != meta["uid"]


def test_create_ignores_client_supplied_system_fields(api):
    body = cm()
    body["metadata"].update(uid="mine", resourceVersion="999", creationTimestamp="2000-01-01T00:00:00Z",
                            deletionTimestamp="2000-01-01T00:00:00Z", deletionGracePeriodSeconds=5,
                            selfLink="/x", managedFields=[{"manager": "x"}])
    meta = api.create(CONFIGMAPS, "default", body).obj["metadata"]
    assert meta["uid"] != "mine" and meta["resourceVersion"] == str(api.store.rv)
    assert meta["creationTimestamp"] == "2023-11-14T22:13:20Z"
    for gone in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
        assert gone not in meta


def test_create_does_not_mutate_the_request_body(api):
    body = cm(a="1")
    snapshot = orjson.dumps(body)
    api.create(CONFIGMAPS, "default", body)
    assert orjson.dumps(body) == snapshot


def test_create_drops_client_status_for_kinds_with_a_status_subresource(api):
    body = pod()
    body["status"] = {"phase": "Running", "podIP": "not-an-ip"}
    p = api.create(PODS, "default", body)
    assert p.obj["status"] == {"phase": "Pending"}
    svc = service()
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "bogus"}]}}
    assert api.create(SERVICES, "default", svc).obj["status"] == {"loadBalancer": {}}


def test_generate_name(api):
    body = {"metadata": {"generateName": "web-"}}
    a = api.create(CONFIGMAPS, "default", body).obj["metadata"]["name"]
    b = api.create(CONFIGMAPS, "default", body).obj["metadata"]["name"]
    assert a != b and a.startswith("web-") and len(a) == len("web-") + 5
    assert all(ch in "bcdfghjklmnpqrstvwxz2456789" for ch in a[4:])
    # An explicit name wins over generateName.
    named = api.create(CONFIGMAPS, "default", {"metadata": {"name": "n", "generateName": "web-"}})
    assert named.obj["metadata"]["name"] == "n"
    # A very long prefix is cut so the result is still a valid name.
    long = api.create(CONFIGMAPS, "default", {"metadata": {"generateName": "x" * 100}})
    assert len(long.obj["metadata"]["name"]) == 63


def test_create_existing_is_409_already_exists(api):
    first = api.create(CONFIGMAPS, "default", cm(a="1"))
    rv = api.store.rv
    with raises(409, "AlreadyExists") as ctx:
        api.create(CONFIGMAPS, "default", cm(a="2"))
    assert ctx.exc.message == 'configmaps "c" already exists'
    assert ctx.exc.details == {"name": "c", "kind": "configmaps"}
    assert api.store.rv == rv and api.get(CONFIGMAPS, "default", "c") is first
    # Same name in another namespace is fine.
    api.create(CONFIGMAPS, "kube-system", cm())


def test_create_in_a_missing_namespace_is_404(api):
    with raises(404, "NotFound") as ctx:
        api.create(CONFIGMAPS, "nope", cm())
    assert ctx.exc.message == 'namespaces "nope" not found'
    with raises(400, "BadRequest"):
        api.create(CONFIGMAPS, None, cm())


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "Secret", "metadata": {"name": "c"}},
        {"apiVersion": "v2", "metadata": {"name": "c"}},
        {"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        {"metadata": {"name": "c", "namespace": "kube-system"}},
        {"metadata": "c"},
        [],
        "text",
        None,
        42,
    ],
)
def test_create_with_mismatched_or_malformed_body_is_400(api, body):
    rv = api.store.rv
    with raises(400, "BadRequest"):
        api.create(CONFIGMAPS, "default", body)
    assert api.store.rv == rv


def test_cluster_scoped_objects_drop_a_namespace(api):
    n = api.create(NODES, None, {"metadata": {"name": "n1", "namespace": "default"}})
    assert "namespace" not in n.obj["metadata"]
    assert api.get(NODES, "ignored", "n1") is n


@pytest.mark.parametrize("name", ["Upper", "a" * 254, "has/slash", "under_score", "", "-lead"])
def test_create_with_an_invalid_name_is_422(api, name):
    rv = api.store.rv
    with raises(422, "Invalid") as ctx:
        api.create(CONFIGMAPS, "default", cm(name))
    assert ctx.exc.details["causes"][0]["field"] == "metadata.name"
    assert api.store.rv == rv


def test_invalid_service_is_422_and_allocates_nothing(api):
    rv = api.store.rv
    with raises(422):
        api.create(SERVICES, "default", service(clusterIP="10.96.0.7", ports=[{"port": 99999}]))
    assert api.store.rv == rv and api.allocator.ips == set()
    with raises(422) as ctx:
        api.create(SERVICES, "default", service(clusterIP="192.168.1.1"))
    assert ctx.exc.details["causes"][0]["field"] == "spec.clusterIPs"
    assert api.allocator.ips == set()


def test_service_allocation_on_create_update_delete(api):
    s = api.create(SERVICES, "default", service(type="NodePort"))
    ip, np_ = s.obj["spec"]["clusterIP"], s.obj["spec"]["ports"][0]["nodePort"]
    assert api.allocator.ips == {ip} and api.allocator.ports == {np_}
    body = service(type="ClusterIP")  # a replace that leaves out clusterIP and moves off NodePort
    updated = api.update(SERVICES, "default", "s", body)
    assert updated.obj["spec"]["clusterIP"] == ip
    assert "nodePort" not in updated.obj["spec"]["ports"][0]
    assert api.allocator.ports == set()
    api.delete(SERVICES, "default", "s")
    assert api.allocator.ips == set()


def test_dry_run_create_stores_nothing(api):
    rv = api.store.rv
    out = api.create(SERVICES, "default", service(type="NodePort"), dry_run=True)
    assert out.obj["metadata"]["uid"] and out.obj["spec"]["clusterIP"]
    assert "resourceVersion" not in out.obj["metadata"]
    assert api.store.rv == rv and api.allocator.ips == set() and api.allocator.ports == set()
    with raises(404):
        api.get(SERVICES, "default", "s")


# -- update ---------------------------------------------------------------------------------------------


def test_update_with_a_stale_resource_version_is_409(api):
    c = api.create(CONFIGMAPS, "default", cm(a="1"))
    body = dict(c.obj, data={"a": "2"})
    api.update(CONFIGMAPS, "default", "c", body)  # carries the current rv: fine
    stale = dict(c.obj, data={"a": "3"})  # the same, now stale, rv
    rv = api.store.rv
    with raises(409, "Conflict") as ctx:
        api.update(CONFIGMAPS, "default", "c", stale)
    assert "the object has been modified" in ctx.exc.message
    assert api.store.rv == rv and api.get(CONFIGMAPS, "default", "c").obj["data"] == {"a": "2"}


def test_unconditional_update_without_resource_version(api):
    c = api.create(CONFIGMAPS, "default", cm(a="1"))
    u = api.update(CONFIGMAPS, "default", "c", cm(a="2"))
    assert u.obj["data"] == {"a": "2"}
    assert rv_of(u) == rv_of(c) + 1
    # System fields are carried over from the stored object.
    for field in ("uid", "creationTimestamp"):
        assert u.obj["metadata"][field] == c.obj["metadata"][field]


def test_noop_update_keeps_the_resource_version(api):
    c = api.create(CONFIGMAPS, "default", cm(a="1"))
    rv = api.store.rv
    same = api.update(CONFIGMAPS, "default", "c", c.obj)
    assert same is c and api.store.rv == rv
    assert api.update(CONFIGMAPS, "default", "c", cm(a="1")) is c
    assert api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"data":{"a":"1"}}') is c
    assert api.store.rv == rv


def test_update_missing_is_404(api):
    with raises(404, "NotFound"):
        api.update(CONFIGMAPS, "default", "nope", cm("nope"))


def test_update_name_and_namespace_mismatch_is_400(api):
    api.create(CONFIGMAPS, "default", cm())
    with raises(400):
        api.update(CONFIGMAPS, "default", "c", cm("other"))
    body = cm()
    body["metadata"]["namespace"] = "kube-system"
    with raises(400):
        api.update(CONFIGMAPS, "default", "c", body)
    with raises(400):
        api.update(CONFIGMAPS, "default", "c", dict(cm(), kind="Pod"))


def test_update_bumps_generation_on_spec_changes_only(api):
    d = {"metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    created = api.create(DEPLOYMENTS, "default", d)
    assert created.obj["metadata"]["generation"] == 1
    labelled = api.patch(DEPLOYMENTS, "default", "d", MERGE_PATCH, b'{"metadata":{"labels":{"x":"y"}}}')
    assert labelled.obj["metadata"]["generation"] == 1
    scaled = api.patch(DEPLOYMENTS, "default", "d", MERGE_PATCH, b'{"spec":{"replicas":3}}')
    assert scaled.obj["metadata"]["generation"] == 2


def test_immutable_fields_are_422(api):
    s = api.create(SERVICES, "default", service(clusterIP="10.96.0.9"))
    with raises(422):
        api.update(SERVICES, "default", "s", dict(s.obj, spec={**s.obj["spec"], "clusterIP": "10.96.0.10",
                                                               "clusterIPs": ["10.96.0.10"]}))
    body = dict(s.obj, metadata={**s.obj["metadata"], "uid": "other"})
    with raises(422):
        api.update(SERVICES, "default", "s", body)


# -- status subresource ---------------------------------------------------------------------------------


def test_main_resource_writes_ignore_status(api):
    p = api.create(PODS, "default", pod())
    body = orjson.loads(p.raw)
    body["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    body["metadata"]["labels"] = {"a": "b"}
    u = api.update(PODS, "default", "p", body)
    assert u.obj["status"] == {"phase": "Pending"}
    assert u.obj["metadata"]["labels"] == {"a": "b"}
    # A status-only change through the main resource is a no-op.
    body = orjson.loads(u.raw)
    body["status"] = {"phase": "Failed"}
    assert api.update(PODS, "default", "p", body) is u


def test_status_writes_change_only_status(api):
    p = api.create(PODS, "default", pod())
    body = orjson.loads(p.raw)
    body["status"] = {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]}
    body["spec"]["containers"][0]["image"] = "nginx"
    body["metadata"]["labels"] = {"ignored": "yes"}
    u = api.update(PODS, "default", "p", body, subresource="status")
    assert u.obj["status"]["podIP"] == "10.0.0.1"
    assert u.obj["spec"] == p.obj["spec"]
    assert "labels" not in u.obj["metadata"]
    assert u.obj["metadata"]["generation"] == 1
    assert rv_of(u) == rv_of(p) + 1
    patched = api.patch(PODS, "default", "p", MERGE_PATCH, b'{"status":{"phase":"Succeeded"},"spec":{"nodeName":"n"}}',
                        subresource="status")
    assert patched.obj["status"]["phase"] == "Succeeded" and "nodeName" not in patched.obj["spec"]


@pytest.mark.parametrize(
    "status",
    [{"podIP": "not-an-ip"}, {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.2"}]}, {"podIPs": "10.0.0.1"},
     {"hostIP": "300.1.1.1"}],
)
def test_status_writes_are_validated(api, status):
    api.create(PODS, "default", pod())
    rv = api.store.rv
    body = dict(api.get(PODS, "default", "p").obj, status=status)
    with raises(422, "Invalid"):
        api.update(PODS, "default", "p", body, subresource="status")
    assert api.store.rv == rv


def test_status_subresource_keeps_a_stale_rv_check(api):
    p = api.create(PODS, "default", pod())
    api.patch(PODS, "default", "p", MERGE_PATCH, b'{"metadata":{"labels":{"a":"b"}}}')
    with raises(409, "Conflict"):
        api.update(PODS, "default", "p", dict(p.obj, status={"phase": "Running"}), subresource="status")


# -- patch ----------------------------------------------------------------------------------------------


def test_patch_types(api):
    api.create(CONFIGMAPS, "default", cm(a="1", b="2"))
    merged = api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"data":{"a":null,"c":"3"}}')
    assert merged.obj["data"] == {"b": "2", "c": "3"}
    jp = api.patch(CONFIGMAPS, "default", "c", JSON_PATCH,
                   b'[{"op":"add","path":"/data/d","value":"4"},{"op":"remove","path":"/data/b"}]')
    assert jp.obj["data"] == {"c": "3", "d": "4"}
    smp = api.patch(CONFIGMAPS, "default", "c", SMP + "; charset=utf-8", b'{"data":{"e":"5"}}')
    assert smp.obj["data"] == {"c": "3", "d": "4", "e": "5"}
    assert rv_of(smp) == rv_of(jp) + 1 == rv_of(merged) + 2


def test_strategic_merge_patch_merges_lists_by_key(api):
    body = pod()
    body["spec"]["containers"].append({"name": "d", "image": "x"})
    api.create(PODS, "default", body)
    out = api.patch(PODS, "default", "p", SMP,
                    b'{"spec":{"containers":[{"name":"d","image":"y"}]}}')
    assert [(c["name"], c["image"]) for c in out.obj["spec"]["containers"]] == [("c", "busybox"), ("d", "y")]
    merged = api.patch(PODS, "default", "p", MERGE_PATCH,
                       b'{"spec":{"activeDeadlineSeconds":10}}')
    assert merged.obj["spec"]["activeDeadlineSeconds"] == 10


def test_patch_errors(api):
    api.create(CONFIGMAPS, "default", cm(a="1"))
    rv = api.store.rv
    with raises(415, "UnsupportedMediaType"):
        api.patch(CONFIGMAPS, "default", "c", "application/apply-patch+yaml", b"{}")
    with raises(415):
        api.patch(CONFIGMAPS, "default", "c", "application/json", b"{}")
    with raises(400, "BadRequest"):
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b"{not json")
    with raises(400):
        api.patch(CONFIGMAPS, "default", "c", JSON_PATCH, b'{"op":"add"}')
    with raises(400):
        api.patch(CONFIGMAPS, "default", "c", JSON_PATCH, b'[{"op":"frobnicate","path":"/a"}]')
    with raises(422):
        api.patch(CONFIGMAPS, "default", "c", JSON_PATCH, b'[{"op":"remove","path":"/data/zzz"}]')
    with raises(422):
        api.patch(CONFIGMAPS, "default", "c", JSON_PATCH, b'[{"op":"test","path":"/data/a","value":"2"}]')
    with raises(404):
        api.patch(CONFIGMAPS, "default", "nope", MERGE_PATCH, b"{}")
    with raises(400):  # a patch may not rename the object
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"metadata":{"name":"d"}}')
    with raises(400):
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"kind":"Pod"}')
    with raises(422):
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"metadata":{"labels":{"bad key!":"x"}}}')
    assert api.store.rv == rv


def test_json_patch_atomicity(api):
    api.create(CONFIGMAPS, "default", cm(a="1"))
    with raises(422):
        api.patch(CONFIGMAPS, "default", "c", JSON_PATCH,
                  b'[{"op":"add","path":"/data/b","value":"2"},{"op":"remove","path":"/nope"}]')
    assert api.get(CONFIGMAPS, "default", "c").obj["data"] == {"a": "1"}


def test_patch_with_a_resource_version_precondition(api):
    c = api.create(CONFIGMAPS, "default", cm(a="1"))
    api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"data":{"a":"2"}}')
    stale = orjson.dumps({"metadata": {"resourceVersion": c.obj["metadata"]["resourceVersion"]},
                          "data": {"a": "3"}})
    with raises(409, "Conflict"):
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, stale)
    current = api.get(CONFIGMAPS, "default", "c").obj["metadata"]["resourceVersion"]
    fresh = orjson.dumps({"metadata": {"resourceVersion": current}, "data": {"a": "3"}})
    assert api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, fresh).obj["data"] == {"a": "3"}


# -- delete ---------------------------------------------------------------------------------------------


def test_delete_returns_the_final_state_and_removes(api):
    c = api.create(CONFIGMAPS, "default", cm())
    gone = api.delete(CONFIGMAPS, "default", "c")
    assert rv_of(gone) == rv_of(c) + 1 == api.store.rv
    assert gone.obj["metadata"]["uid"] == c.obj["metadata"]["uid"]
    with raises(404):
        api.get(CONFIGMAPS, "default", "c")
    with raises(404):
        api.delete(CONFIGMAPS, "default", "c")


def test_delete_preconditions(api):
    c = api.create(CONFIGMAPS, "default", cm())
    meta = c.obj["metadata"]
    with raises(409, "Conflict") as ctx:
        api.delete(CONFIGMAPS, "default", "c", {"preconditions": {"uid": "other"}})
    assert "Precondition failed: UID in precondition: other" in ctx.exc.message
    with raises(409, "Conflict") as ctx:
        api.delete(CONFIGMAPS, "default", "c", {"preconditions": {"resourceVersion": "1"}})
    assert "ResourceVersion in precondition: 1" in ctx.exc.message
    assert api.get(CONFIGMAPS, "default", "c") is c
    api.delete(CONFIGMAPS, "default", "c",
               {"preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}})
    with raises(404):
        api.get(CONFIGMAPS, "default", "c")


def test_dry_run_delete_keeps_the_object(api):
    c = api.create(CONFIGMAPS, "default", cm())
    rv = api.store.rv
    assert api.delete(CONFIGMAPS, "default", "c", dry_run=True) is c
    assert api.store.rv == rv and api.get(CONFIGMAPS, "default", "c") is c


def test_unscheduled_pods_are_deleted_at_once(api):
    api.create(PODS, "default", pod())
    api.delete(PODS, "default", "p")
    with raises(404):
        api.get(PODS, "default", "p")


def test_graceful_pod_deletion(api, clock):
    p = api.create(PODS, "default", pod(node="n1"))
    clock.t += 5
    marked = api.delete(PODS, "default", "p")
    meta = marked.obj["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 30
    assert meta["deletionTimestamp"] == "2023-11-14T22:13:55Z"  # now + 30 s
    assert rv_of(marked) == rv_of(p) + 1
    assert api.get(PODS, "default", "p") is marked
    # Deleting again with the same grace period changes nothing.
    assert api.delete(PODS, "default", "p") is marked
    # A longer grace period cannot extend it.
    assert api.delete(PODS, "default", "p", {"gracePeriodSeconds": 100}) is marked
    # A shorter one shortens it.
    short = api.delete(PODS, "default", "p", {"gracePeriodSeconds": 10})
    assert short.obj["metadata"]["deletionGracePeriodSeconds"] == 10
    # Updates cannot touch the deletion fields.
    body = dict(short.obj, metadata={**short.obj["metadata"], "deletionGracePeriodSeconds": 99})
    with raises(422):
        api.update(PODS, "default", "p", body)
    # The kubelet's final delete with grace 0 removes it.
    final = api.delete(PODS, "default", "p", {"gracePeriodSeconds": 0})
    assert final.obj["metadata"]["deletionGracePeriodSeconds"] == 0
    with raises(404):
        api.get(PODS, "default", "p")


def test_pod_grace_period_from_spec_and_finished_pods(api):
    body = pod("a", node="n1")
    body["spec"]["terminationGracePeriodSeconds"] = 7
    api.create(PODS, "default", body)
    assert api.delete(PODS, "default", "a").obj["metadata"]["deletionGracePeriodSeconds"] == 7
    api.create(PODS, "default", pod("b", node="n1"))
    b = api.get(PODS, "default", "b").obj
    api.update(PODS, "default", "b", dict(b, status={"phase": "Succeeded"}), subresource="status")
    api.delete(PODS, "default", "b")  # finished: no grace
    with raises(404):
        api.get(PODS, "default", "b")
    api.create(PODS, "default", pod("c", node="n1"))
    with raises(400):
        api.delete(PODS, "default", "c", {"gracePeriodSeconds": "soon"})


def test_finalizers_hold_deletion(api):
    c = api.create(CONFIGMAPS, "default", {"metadata": {"name": "c", "finalizers": ["example.com/hold"]}})
    marked = api.delete(CONFIGMAPS, "default", "c")
    meta = marked.obj["metadata"]
    assert meta["deletionTimestamp"] == "2023-11-14T22:13:20Z" and meta["deletionGracePeriodSeconds"] == 0
    assert rv_of(marked) == rv_of(c) + 1
    # No new finalizers while deleting.
    with raises(422):
        api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH,
                  b'{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}')
    # Other changes are still allowed.
    labelled = api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"metadata":{"labels":{"a":"b"}}}')
    assert labelled.obj["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"]
    # Removing the last finalizer removes the object.
    gone = api.patch(CONFIGMAPS, "default", "c", MERGE_PATCH, b'{"metadata":{"finalizers":null}}')
    assert rv_of(gone) == api.store.rv
    with raises(404):
        api.get(CONFIGMAPS, "default", "c")
    events = api.store.events_from(api.store.seq_after(rv_of(c)))
    assert [e.type for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_namespace_delete_cascades(api):
    api.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    api.create(CONFIGMAPS, "team", cm())
    api.create(PODS, "team", pod())
    api.create(SERVICES, "team", service(type="NodePort"))
    api.create(SLICES, "team", {"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": []})
    api.create(CONFIGMAPS, "default", cm("keep"))
    assert api.allocator.ips and api.allocator.ports
    api.delete(NAMESPACES, None, "team")
    for rt in (CONFIGMAPS, PODS, SERVICES, SLICES):
        assert api.store.items(rt.key, "team") == []
    assert api.allocator.ips == set() and api.allocator.ports == set()
    with raises(404):
        api.get(NAMESPACES, None, "team")
    assert api.get(CONFIGMAPS, "default", "keep")
    with raises(404):
        api.create(CONFIGMAPS, "team", cm())


def test_delete_collection(api):
    for i in range(4):
        api.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}", "labels": {"odd": str(i % 2)}}})
    api.create(CONFIGMAPS, "kube-system", cm("other"))
    gone = api.delete_collection(CONFIGMAPS, Selection("default", "odd=1"))
    assert sorted(s.obj["metadata"]["name"] for s in gone) == ["c1", "c3"]
    assert [k[1] for k, _ in api.store.items(CONFIGMAPS.key)] == ["c0", "c2", "other"]
    rv = api.store.rv
    with raises(400):
        api.delete_collection(CONFIGMAPS, Selection("default", "odd in (1"))
    with raises(404):
        api.delete_collection(CONFIGMAPS, Selection("nope"))
    assert api.store.rv == rv


# -- list -----------------------------------------------------------------------------------------------


def names(items) -> list[str]:
    return [s.obj["metadata"]["name"] for s in items]


def test_list_selects_by_namespace_labels_and_fields(api):
    for ns in ("default", "kube-system"):
        for i in range(3):
            api.create(CONFIGMAPS, ns, {"metadata": {"name": f"c{i}", "labels": {"i": str(i)}}})
    items, meta = api.list(CONFIGMAPS, Selection(None))
    assert [(s.obj["metadata"]["namespace"], s.obj["metadata"]["name"]) for s in items] == [
        ("default", "c0"), ("default", "c1"), ("default", "c2"),
        ("kube-system", "c0"), ("kube-system", "c1"), ("kube-system", "c2")]
    assert meta == {"resourceVersion": str(api.store.rv)}
    assert names(api.list(CONFIGMAPS, Selection("default", "i in (0,2)"))[0]) == ["c0", "c2"]
    assert names(api.list(CONFIGMAPS, Selection("default", "i!=0"))[0]) == ["c1", "c2"]
    assert names(api.list(CONFIGMAPS, Selection(None, None, "metadata.namespace=kube-system,metadata.name!=c1"))[0]) == ["c0", "c2"]
    with raises(400):
        api.list(CONFIGMAPS, Selection(None, "a in (b"))
    with raises(400):
        api.list(CONFIGMAPS, Selection(None, None, "data.x=1"))


def test_list_resource_version_parameters(api):
    rv = api.store.rv
    for value in (None, "", "0", str(rv), "1"):
        api.list(CONFIGMAPS, Selection(None), resource_version=value)
    with raises(400):
        api.list(CONFIGMAPS, Selection(None), resource_version="abc")
    with raises(504, "Timeout"):
        api.list(CONFIGMAPS, Selection(None), resource_version=str(rv + 10))
    with raises(410, "Expired"):
        api.list(CONFIGMAPS, Selection(None), resource_version="1", resource_version_match="Exact")


def test_pagination_is_a_consistent_snapshot(api):
    for i in range(7):
        api.create(CONFIGMAPS, "default", cm(f"c{i}", v="old"))
    list_rv = api.store.rv
    page, meta = api.list(CONFIGMAPS, Selection("default"), limit=3)
    assert names(page) == ["c0", "c1", "c2"]
    assert meta["resourceVersion"] == str(list_rv) and meta["remainingItemCount"] == 4
    token = meta["continue"]
    # Changes while paginating: delete a later item, add one, modify one.
    api.delete(CONFIGMAPS, "default", "c4")
    api.create(CONFIGMAPS, "default", cm("c3a"))
    api.update(CONFIGMAPS, "default", "c5", cm("c5", v="new"))
    page2, meta2 = api.list(CONFIGMAPS, Selection("default"), limit=3, continue_token=token)
    assert names(page2) == ["c3", "c4", "c5"]
    assert page2[2].obj["data"] == {"v": "old"}
    assert meta2["resourceVersion"] == str(list_rv) and meta2["remainingItemCount"] == 1
    page3, meta3 = api.list(CONFIGMAPS, Selection("default"), limit=3, continue_token=meta2["continue"])
    assert names(page3) == ["c6"] and "continue" not in meta3
    assert meta3["resourceVersion"] == str(list_rv)
    # A fresh list sees the changes.
    assert names(api.list(CONFIGMAPS, Selection("default"))[0]) == ["c0", "c1", "c2", "c3", "c3a", "c5", "c6"]


def test_pagination_with_a_selector_and_exact_pages(api):
    for i in range(6):
        api.create(CONFIGMAPS, "default", {"metadata": {"name": f"c{i}", "labels": {"even": str(i % 2 == 0).lower()}}})
    page, meta = api.list(CONFIGMAPS, Selection("default", "even=true"), limit=2)
    assert names(page) == ["c0", "c2"]
    page2, meta2 = api.list(CONFIGMAPS, Selection("default", "even=true"), limit=2, continue_token=meta["continue"])
    assert names(page2) == ["c4"] and "continue" not in meta2
    full, meta_full = api.list(CONFIGMAPS, Selection("default"), limit=6)
    assert len(full) == 6 and "continue" not in meta_full
    for limit in (0, -1, None):
        assert len(api.list(CONFIGMAPS, Selection("default"), limit=limit)[0]) == 6


def test_unknown_continue_token_is_410_and_garbage_is_400(api):
    token = base64.urlsafe_b64encode(orjson.dumps({"v": "np1", "s": "feedface", "rv": 1, "i": 1})).decode()
    with raises(410, "Expired") as ctx:
        api.list(CONFIGMAPS, Selection(None), continue_token=token.rstrip("="))
    assert "continue parameter is too old" in ctx.exc.message
    for garbage in ("!!!", "bm90IGpzb24", base64.urlsafe_b64encode(b'{"s":1}').decode()):
        with raises(400, "BadRequest"):
            api.list(CONFIGMAPS, Selection(None), continue_token=garbage)


def test_snapshots_expire(api, clock):
    for i in range(3):
        api.create(CONFIGMAPS, "default", cm(f"c{i}"))
    _, meta = api.list(CONFIGMAPS, Selection("default"), limit=1)
    clock.t += 301
    api.list(CONFIGMAPS, Selection("default"), limit=1)  # a new snapshot expires the old one
    with raises(410):
        api.list(CONFIGMAPS, Selection("default"), limit=1, continue_token=meta["continue"])


# -- watch ----------------------------------------------------------------------------------------------


def collect(stream, max_batches: int = 1000) -> list:
    """Drain a watch stream (it ends by its timeout) into (type, name or body) pairs."""
    out = []
    for i, batch in enumerate(stream):
        for item in batch:
            if item.stored is not None:
                out.append((item.type, item.stored.obj["metadata"]["name"]))
            else:
                out.append((item.type, item.body))
        assert i < max_batches
    return out


def watch(api: Api, rt=CONFIGMAPS, sel: Selection | None = None, **kw):
    kw.setdefault("resource_version", "0")
    kw.setdefault("timeout", 0.05)
    kw.setdefault("idle_tick", 0.01)
    return api.watch(rt, sel or Selection("default"), **kw)


@pytest.mark.parametrize("rv", [None, "", "0"])
def test_watch_from_now_starts_with_synthetic_added_events(api, rv):
    api.create(CONFIGMAPS, "default", cm("a"))
    api.create(CONFIGMAPS, "default", cm("b"))
    api.create(CONFIGMAPS, "kube-system", cm("other"))
    api.delete(CONFIGMAPS, "default", "b")
    assert collect(watch(api, resource_version=rv)) == [("ADDED", "a")]


def test_watch_resumes_from_a_resource_version(api):
    a = api.create(CONFIGMAPS, "default", cm("a"))
    api.update(CONFIGMAPS, "default", "a", cm("a", x="1"))
    api.create(CONFIGMAPS, "default", cm("b"))
    api.delete(CONFIGMAPS, "default", "a")
    events = collect(watch(api, resource_version=str(rv_of(a))))
    assert events == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert collect(watch(api, resource_version=str(api.store.rv))) == []


def test_watch_items_share_the_event_encoding(api):
    a = api.create(CONFIGMAPS, "default", cm("a"))
    api.update(CONFIGMAPS, "default", "a", cm("a", x="1"))
    batches = [b for b in watch(api, resource_version=str(rv_of(a))) if b]
    item = batches[0][0]
    assert item.type == "MODIFIED" and item.event is not None and item.event.new is item.stored


def test_watch_sees_events_that_happen_while_streaming(api):
    start = api.store.rv
    stream = watch(api, resource_version=str(start), timeout=5)
    assert next(stream) == []  # idle tick
    api.create(CONFIGMAPS, "default", cm("late"))
    batch = next(stream)
    assert [(i.type, i.stored.obj["metadata"]["name"]) for i in batch] == [("ADDED", "late")]
    stream.close()


def test_watch_label_selector_transitions(api):
    start = api.store.rv
    api.create(CONFIGMAPS, "default", {"metadata": {"name": "a", "labels": {"app": "x"}}})
    api.patch(CONFIGMAPS, "default", "a", MERGE_PATCH, b'{"data":{"k":"1"}}')          # in -> in
    api.patch(CONFIGMAPS, "default", "a", MERGE_PATCH, b'{"metadata":{"labels":{"app":"y"}}}')  # in -> out
    api.patch(CONFIGMAPS, "default", "a", MERGE_PATCH, b'{"data":{"k":"2"}}')          # out -> out
    api.patch(CONFIGMAPS, "default", "a", MERGE_PATCH, b'{"metadata":{"labels":{"app":"x"}}}')  # out -> in
    api.delete(CONFIGMAPS, "default", "a")
    api.create(CONFIGMAPS, "default", {"metadata": {"name": "b", "labels": {"app": "y"}}})
    events = collect(watch(api, sel=Selection("default", "app=x"), resource_version=str(start)))
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "a"), ("DELETED", "a")]


def test_watch_field_selector_and_namespace_filter(api):
    start = api.store.rv
    api.create(CONFIGMAPS, "default", cm("a"))
    api.create(CONFIGMAPS, "default", cm("b"))
    api.create(CONFIGMAPS, "kube-system", cm("a"))
    api.create(PODS, "default", pod("a"))
    events = collect(watch(api, sel=Selection("default", None, "metadata.name=a"), resource_version=str(start)))
    assert events == [("ADDED", "a")]
    everywhere = collect(watch(api, sel=Selection(None), resource_version=str(start)))
    assert everywhere == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "a")]


def test_watch_validation_errors_raise_before_streaming(api):
    with raises(400):
        watch(api, resource_version="abc")
    with raises(400):
        watch(api, sel=Selection("default", "a in (b"))
    with raises(400):
        watch(api, sel=Selection("default", None, "spec.foo=1"))


def test_watch_from_a_compacted_version_is_410(clock):
    api = make_api(clock, history=2)
    first = api.create(CONFIGMAPS, "default", cm("a"))
    for i in range(6):
        api.update(CONFIGMAPS, "default", "a", cm("a", i=str(i)))
    assert api.store.compacted_rv > rv_of(first)
    events = collect(watch(api, resource_version=str(rv_of(first) - 1)))
    assert len(events) == 1
    typ, body = events[0]
    assert typ == "ERROR"
    assert body["kind"] == "Status" and body["code"] == 410 and body["reason"] == "Expired"
    assert "too old resource version" in body["message"]
    # A version inside the retained history still works.
    tail = collect(watch(api, resource_version=str(api.store.compacted_rv)))
    assert tail and all(t == "MODIFIED" for t, _ in tail)


def test_watch_after_compact_all_is_410(api):
    c = api.create(CONFIGMAPS, "default", cm("a"))
    api.store.compact_all()
    assert collect(watch(api, resource_version=str(rv_of(c) - 1)))[0][1]["code"] == 410
    assert collect(watch(api, resource_version=str(api.store.rv))) == []


def test_watch_that_falls_behind_gets_410(clock):
    api = make_api(clock, history=2)
    start = api.store.rv
    stream = watch(api, resource_version=str(start), timeout=5)
    assert next(stream) == []
    for i in range(10):  # more than 2 x history while the watcher is not reading
        api.create(CONFIGMAPS, "default", cm(f"c{i}"))
    batch = next(stream)
    assert [i.type for i in batch] == ["ERROR"] and batch[0].body["code"] == 410
    with pytest.raises(StopIteration):
        next(stream)


def test_watch_bookmarks(clock):
    api = make_api(clock, bookmark_interval=0.02)
    api.create(CONFIGMAPS, "default", cm("a"))
    events = collect(watch(api, resource_version=str(api.store.rv), allow_bookmarks=True, timeout=0.15))
    bookmarks = [body for typ, body in events if typ == "BOOKMARK"]
    assert bookmarks and all(t == "BOOKMARK" for t, _ in events)
    for b in bookmarks:
        assert b["kind"] == "ConfigMap" and b["apiVersion"] == "v1"
        assert b["metadata"] == {"resourceVersion": str(api.store.rv)}
    # No bookmarks unless asked for.
    assert collect(watch(api, resource_version=str(api.store.rv), timeout=0.1)) == []


def test_watch_bookmark_rv_follows_unrelated_changes(clock):
    api = make_api(clock, bookmark_interval=0.02)
    start = api.store.rv
    stream = watch(api, resource_version=str(start), allow_bookmarks=True, timeout=5)
    api.create(PODS, "default", pod())  # not a ConfigMap: filtered out, but the version moves
    deadline = time.monotonic() + 2
    seen = None
    while time.monotonic() < deadline:
        batch = next(stream)
        marks = [i.body for i in batch if i.type == "BOOKMARK"]
        if marks:
            seen = marks[-1]["metadata"]["resourceVersion"]
            break
    stream.close()
    assert seen == str(api.store.rv) and int(seen) > start


def test_send_initial_events_ends_with_an_annotated_bookmark(api):
    api.create(CONFIGMAPS, "default", cm("a"))
    events = collect(watch(api, resource_version="", send_initial_events=True, allow_bookmarks=True))
    assert events[0] == ("ADDED", "a")
    typ, body = events[1]
    assert typ == "BOOKMARK"
    assert body["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert body["metadata"]["resourceVersion"] == str(api.store.rv)


def test_watch_timeout_ends_the_stream(api):
    started = time.monotonic()
    assert collect(watch(api, resource_version="0", timeout=0.1, idle_tick=0.02)) == []
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0


def test_watch_stop_event_and_store_close(api):
    import threading

    stop = threading.Event()
    stream = watch(api, resource_version="0", timeout=60, stop=stop)
    assert next(stream) == []
    stop.set()
    with pytest.raises(StopIteration):
        next(stream)
    stream2 = watch(api, resource_version="0", timeout=60)
    next(stream2)
    api.store.close()
    with pytest.raises(StopIteration):
        next(stream2)


def test_large_initial_state_comes_in_batches(api):
    for i in range(1200):
        api.store.commit(CONFIGMAPS.key, "default", f"c{i:04d}",
                         {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"c{i:04d}", "namespace": "default",
                                       "resourceVersion": str(api.store.next_rv())}}, "ADDED")
    stream = watch(api, resource_version="0")
    sizes = []
    for batch in stream:
        if batch:
            sizes.append(len(batch))
    assert sizes == [500, 500, 200]


def test_namespace_with_a_finalizer_cascades_when_it_goes(api):
    api.create(NAMESPACES, None, {"metadata": {"name": "team", "finalizers": ["example.com/hold"]}})
    api.create(CONFIGMAPS, "team", cm())
    api.delete(NAMESPACES, None, "team")
    assert api.get(NAMESPACES, None, "team").obj["metadata"]["deletionTimestamp"]
    assert api.get(CONFIGMAPS, "team", "c")  # still there while the namespace is held
    api.patch(NAMESPACES, None, "team", MERGE_PATCH, b'{"metadata":{"finalizers":[]}}')
    with raises(404):
        api.get(NAMESPACES, None, "team")
    assert api.store.items(CONFIGMAPS.key, "team") == []


# -- malformed input found by the HTTP fuzz test --------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "+7", " 3", "3 ", "1.5", "0x10", "1e3", "३", "1_0"])
def test_resource_versions_are_plain_decimal_numbers(api, value):
    with raises(400, "BadRequest"):
        api.list(CONFIGMAPS, Selection(None), resource_version=value)
    with raises(400, "BadRequest"):
        watch(api, resource_version=value)


def test_list_options_validation(api):
    for rv, match in ((None, "Exact"), ("", "NotOlderThan"), ("0", "Exact"), ("5", "Bogus"), ("5", "exact")):
        with raises(422, "Invalid") as ctx:
            api.list(CONFIGMAPS, Selection(None), resource_version=rv, resource_version_match=match)
        assert ctx.exc.details["kind"] == "ListOptions"
        assert ctx.exc.message.startswith('ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: ')
    api.list(CONFIGMAPS, Selection(None), resource_version="0", resource_version_match="NotOlderThan")
    api.list(CONFIGMAPS, Selection(None), resource_version=str(api.store.rv), resource_version_match="Exact")
    for i in range(3):
        api.create(CONFIGMAPS, "default", cm(f"c{i}"))
    _, meta = api.list(CONFIGMAPS, Selection(None), limit=1)
    with raises(400, "BadRequest") as ctx:
        api.list(CONFIGMAPS, Selection(None), continue_token=meta["continue"], resource_version="3")
    assert "not allowed when using continue" in ctx.exc.message
    with raises(422):
        api.list(CONFIGMAPS, Selection(None), continue_token=meta["continue"], resource_version="3",
                 resource_version_match="NotOlderThan")
    # resourceVersion "0" with a continue token is fine.
    assert api.list(CONFIGMAPS, Selection(None), continue_token=meta["continue"], resource_version="0")[0]


@pytest.mark.parametrize(
    "options",
    [{"preconditions": "x"}, {"preconditions": []}, {"preconditions": 1},
     {"gracePeriodSeconds": "5"}, {"gracePeriodSeconds": 1.5}, {"gracePeriodSeconds": -1.5},
     {"gracePeriodSeconds": True}, {"gracePeriodSeconds": []}],
)
def test_delete_options_of_the_wrong_type_are_400_for_any_kind(api, options):
    api.create(CONFIGMAPS, "default", cm())
    api.create(PODS, "default", pod(node="n1"))
    rv = api.store.rv
    for rt, name in ((CONFIGMAPS, "c"), (PODS, "p")):
        with raises(400, "BadRequest"):
            api.delete(rt, "default", name, options)
    assert api.store.rv == rv


def test_pod_with_a_null_grace_period_uses_the_default(api):
    body = pod(node="n1")
    body["spec"]["terminationGracePeriodSeconds"] = None
    p = api.create(PODS, "default", body)
    assert p.obj["spec"]["terminationGracePeriodSeconds"] is None
    assert api.delete(PODS, "default", "p").obj["metadata"]["deletionGracePeriodSeconds"] == 30


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_objects_nested_too_deeply_are_400(api):
    from netplane.apiserver.api import MAX_DEPTH, too_deep

    assert not too_deep(nested(MAX_DEPTH)) and too_deep(nested(MAX_DEPTH + 1))
    assert not too_deep([[1], {"a": [2]}], 3) and too_deep([[[1]]], 2)
    rv = api.store.rv
    for depth in (MAX_DEPTH + 1, 900):
        body = dict(cm("deep"), extra=nested(depth))
        with raises(400, "BadRequest") as ctx:
            api.create(CONFIGMAPS, "default", body)
        assert "nested more than" in ctx.exc.message
    api.create(CONFIGMAPS, "default", dict(cm("ok"), extra=nested(MAX_DEPTH - 2)))
    deep_patch = b'{"extra":' * 2000 + b"1" + b"}" * 2000
    for ctype in (MERGE_PATCH, SMP):
        with raises(400):
            api.patch(CONFIGMAPS, "default", "ok", ctype, deep_patch)
    with raises(400):
        api.patch(CONFIGMAPS, "default", "ok", MERGE_PATCH, orjson.dumps({"extra": nested(MAX_DEPTH + 5)}))
    with raises(400):
        api.patch(CONFIGMAPS, "default", "ok", JSON_PATCH,
                  b'[{"op":"add","path":"/x","value":' + b"[" * 3000 + b"]" * 3000 + b"}]")
    assert api.store.rv == rv + 1


def test_wrong_types_in_fields_no_other_rule_reads_are_422(api):
    cases = [
        (PODS, lambda b: b["spec"]["containers"][0].update(env=[{"name": "A", "value": 1}])),
        (PODS, lambda b: b["spec"]["containers"][0].update(env=["A=b"])),
        (PODS, lambda b: b["spec"]["containers"][0].update(env=[{"value": "b"}])),
        (PODS, lambda b: b["spec"].update(tolerations=[{"key": "k", "operator": True}])),
        (PODS, lambda b: b["spec"].update(tolerations=["k"])),
        (PODS, lambda b: b["spec"].update(tolerations=[{"key": "k", "tolerationSeconds": "5"}])),
    ]
    for rt, mutate in cases:
        body = pod("typed")
        mutate(body)
        with raises(422, "Invalid"):
            api.create(rt, "default", body)
    slice_ = {"metadata": {"name": "e"}, "addressType": "IPv4",
              "endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": ["p"]}}]}
    with raises(422) as ctx:
        api.create(SLICES, "default", slice_)
    assert ctx.exc.details["causes"][0]["field"] == "endpoints[0].targetRef.name"
    node = {"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": True}]}}
    with raises(422) as ctx:
        api.create(NODES, None, node)
    assert ctx.exc.details["causes"][0]["field"] == "status.conditions[0].status"
    event = {"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
             "source": {"component": 1}, "firstTimestamp": []}
    with raises(422) as ctx:
        api.create(lookup("", "v1", "events"), "default", event)
    assert {c["field"] for c in ctx.exc.details["causes"]} == {"firstTimestamp", "source.component"}
    # The well-typed versions are fine.
    good = pod("typed")
    good["spec"]["containers"][0]["env"] = [{"name": "A", "value": "b"}, {"name": "B", "valueFrom": {}}]
    good["spec"]["tolerations"] = [{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]
    api.create(PODS, "default", good)
