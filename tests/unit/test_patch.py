"""netplane.apiserver.patch: RFC 7386, RFC 6902 and Kubernetes strategic merge patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from netplane.apiserver.patch import (
    PatchError,
    UnsupportedPatchType,
    apply_json_patch,
    apply_merge_patch,
    apply_patch,
    apply_strategic_merge_patch,
    patch_meta,
)

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def smp(original: dict, patch: Any, kind: str = "Pod") -> dict:
    """Strategic merge patch that also asserts neither input was mutated."""
    before_original, before_patch = copy.deepcopy(original), copy.deepcopy(patch)
    result = apply_strategic_merge_patch(original, patch, kind)
    assert original == before_original and patch == before_patch
    return result


# ---------------------------------------------------------------------------------------------
# RFC 7386, appendix A (the cases whose target and patch are objects)


@pytest.mark.parametrize(("target", "patch", "expected"), [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_examples(target: dict, patch: dict, expected: dict) -> None:
    before = copy.deepcopy(target)
    assert apply_merge_patch(target, patch) == expected
    assert target == before


@pytest.mark.parametrize("patch", [["c"], "bar", None, 3])
def test_merge_patch_rejects_non_object(patch: Any) -> None:
    with pytest.raises(PatchError):
        apply_merge_patch({"a": "b"}, patch)


def test_merge_patch_result_does_not_alias_patch_or_original() -> None:
    original = {"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1]}}
    patch = {"metadata": {"labels": {"b": "2"}}, "data": [1, 2]}
    result = apply_merge_patch(original, patch)
    result["metadata"]["labels"]["c"] = "3"
    result["data"].append(3)
    assert original == {"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1]}}
    assert patch == {"metadata": {"labels": {"b": "2"}}, "data": [1, 2]}


# ---------------------------------------------------------------------------------------------
# RFC 6902, appendix A


@pytest.mark.parametrize(("doc", "ops", "expected"), [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}],
     {"baz": "qux", "foo": "bar"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}],
     {"foo": ["bar", "qux", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}],
     {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}],
     {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
     {"foo": "bar", "baz": "qux"}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
     {"foo": ["bar", ["abc", "def"]]}),
    # beyond the appendix: copy, escapes in paths, replacing the whole document
    ({"a": {"b": [1]}}, [{"op": "copy", "from": "/a/b", "path": "/c"}], {"a": {"b": [1]}, "c": [1]}),
    ({"metadata": {"labels": {}}},
     [{"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "x"},
      {"op": "add", "path": "/metadata/labels/a~0b", "value": "y"}],
     {"metadata": {"labels": {"app.kubernetes.io/name": "x", "a~b": "y"}}}),
    ({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}], {"b": 2}),
])
def test_json_patch_rfc6902_examples(doc: dict, ops: list, expected: dict) -> None:
    before = copy.deepcopy(doc)
    assert apply_json_patch(doc, ops) == expected
    assert doc == before


@pytest.mark.parametrize(("doc", "ops", "fragment"), [
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], "test failed"),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], "/baz/bat"),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}], "test failed"),
    ({"a": True}, [{"op": "test", "path": "/a", "value": 1}], "test failed"),
    ({"a": 1}, [{"op": "remove", "path": "/b"}], "path not found"),
    ({"a": 1}, [{"op": "replace", "path": "/b", "value": 2}], "path not found"),
    ({"a": [1]}, [{"op": "add", "path": "/a/2", "value": 2}], "out of bounds"),
    ({"a": [1]}, [{"op": "remove", "path": "/a/01"}], "not an array index"),
    ({"a": [1]}, [{"op": "remove", "path": "/a/-"}], "not an array index"),
    ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}], "own children"),
    ({"a": 1}, [{"op": "frobnicate", "path": "/a"}], "unknown operation"),
    ({"a": 1}, [{"op": "add", "path": "/b"}], "missing 'value'"),
    ({"a": 1}, [{"op": "copy", "path": "/b"}], "missing 'from'"),
    ({"a": 1}, [{"op": "add", "path": "a", "value": 1}], "not a JSON pointer"),
    ({"a": 1}, [{"op": "add", "path": "/~2", "value": 1}], "invalid ~ escape"),
    ({"a": 1}, [{"op": "replace", "path": "", "value": [1]}], "must be a JSON object"),
    ({"a": 1}, {"op": "add"}, "JSON array"),
])
def test_json_patch_errors(doc: dict, ops: Any, fragment: str) -> None:
    with pytest.raises(PatchError, match=fragment.replace("~", r"\~")):
        apply_json_patch(doc, ops)


def test_json_patch_is_atomic_and_error_names_op_index_and_path() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}}
    before = copy.deepcopy(doc)
    ops = [
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "remove", "path": "/spec/ports/0"},
        {"op": "test", "path": "/metadata/labels/a", "value": "nope"},
    ]
    with pytest.raises(PatchError, match=r"operation 2 \(test /metadata/labels/a\)"):
        apply_json_patch(doc, ops)
    assert doc == before


# ---------------------------------------------------------------------------------------------
# Strategic merge patch


POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "fe"},
                 "finalizers": ["a.example/x", "b.example/y"]},
    "spec": {
        "containers": [
            {"name": "app", "image": "app:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "side:1"},
        ],
        "tolerations": [{"key": "k1", "operator": "Exists"}],
        "volumes": [{"name": "data", "hostPath": {"path": "/srv"}}],
    },
    "status": {"conditions": [{"type": "Ready", "status": "False"},
                              {"type": "Initialized", "status": "True"}]},
}


def containers(result: dict) -> list[dict]:
    return result["spec"]["containers"]


def test_labels_set_and_removed_with_null() -> None:
    result = smp(POD, {"metadata": {"labels": {"tier": None, "env": "prod"}}})
    assert result["metadata"]["labels"] == {"app": "web", "env": "prod"}


def test_containers_merge_by_name_and_env_by_name() -> None:
    patch = {"spec": {"containers": [
        {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]},
    ]}}
    result = smp(POD, patch)
    app, sidecar = containers(result)
    assert app["image"] == "app:2" and sidecar == POD["spec"]["containers"][1]
    assert app["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    # live items keep their order; patch items keep the patch's relative order
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "20"},
                          {"name": "C", "value": "3"}]


def test_new_container_is_added_without_touching_others() -> None:
    result = smp(POD, {"spec": {"containers": [{"name": "debug", "image": "busybox"}]}})
    assert [c["name"] for c in containers(result)] == ["debug", "app", "sidecar"]


def test_patch_delete_directive_removes_container() -> None:
    result = smp(POD, {"spec": {"containers": [{"$patch": "delete", "name": "sidecar"}]}})
    assert [c["name"] for c in containers(result)] == ["app"]


def test_patch_replace_directive_in_list_replaces_the_list() -> None:
    patch = {"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}
    assert containers(smp(POD, patch)) == [{"name": "only", "image": "x"}]


def test_patch_replace_and_delete_on_maps() -> None:
    result = smp(POD, {"metadata": {"labels": {"$patch": "replace", "new": "1"}}})
    assert result["metadata"]["labels"] == {"new": "1"}
    result = smp(POD, {"metadata": {"labels": {"$patch": "delete"}}})
    assert result["metadata"]["labels"] == {}


def test_set_element_order_orders_the_merged_list() -> None:
    patch = {"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
                      "containers": [{"name": "app", "image": "app:2"}]}}
    result = smp(POD, patch)
    assert [c["name"] for c in containers(result)] == ["sidecar", "app"]
    assert containers(result)[1]["image"] == "app:2"
    assert "$setElementOrder/containers" not in result["spec"]


def test_set_element_order_keeps_server_only_items_in_live_position() -> None:
    original = {"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}
    patch = {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                      "containers": [{"name": "c", "image": "x"}]}}
    assert [c["name"] for c in containers(smp(original, patch))] == ["b", "c", "a"]


def test_set_element_order_must_agree_with_patch_list() -> None:
    patch = {"spec": {"$setElementOrder/containers": [{"name": "app"}],
                      "containers": [{"name": "sidecar", "image": "s:2"}]}}
    with pytest.raises(PatchError, match="order"):
        smp(POD, patch)


def test_retain_keys_switches_volume_source() -> None:
    patch = {"spec": {"volumes": [
        {"name": "data", "emptyDir": {}, "$retainKeys": ["emptyDir", "name"]}]}}
    assert smp(POD, patch)["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_retain_keys_on_deployment_strategy() -> None:
    deployment = {"spec": {"strategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert smp(deployment, patch, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(PatchError, match="retainKeys"):
        smp(deployment, {"spec": {"strategy": {"$retainKeys": ["type"],
                                               "rollingUpdate": {"maxSurge": 2}}}}, "Deployment")


def test_finalizers_union_and_delete_from_primitive_list() -> None:
    result = smp(POD, {"metadata": {"finalizers": ["b.example/y", "c.example/z"]}})
    assert result["metadata"]["finalizers"] == ["a.example/x", "b.example/y", "c.example/z"]
    result = smp(POD, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example/x"]}})
    assert result["metadata"]["finalizers"] == ["b.example/y"]
    result = smp(POD, {"metadata": {"finalizers": ["c.example/z"],
                                    "$deleteFromPrimitiveList/finalizers": ["b.example/y"]}})
    assert sorted(result["metadata"]["finalizers"]) == ["a.example/x", "c.example/z"]


def test_tolerations_are_replaced_wholesale() -> None:
    result = smp(POD, {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}})
    assert result["spec"]["tolerations"] == [{"key": "k2", "operator": "Exists"}]


def test_pod_status_conditions_merge_by_type() -> None:
    result = smp(POD, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert result["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                              {"type": "Initialized", "status": "True"}]


def test_daemonset_pod_template_uses_podspec_metadata() -> None:
    ds = {"spec": {"template": {"spec": {"containers": [
        {"name": "agent", "image": "a:1", "env": [{"name": "X", "value": "1"}]}]}}}}
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "agent", "env": [{"name": "Y", "value": "2"}]}]}}}}
    (agent,) = smp(ds, patch, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert agent["image"] == "a:1"
    assert {e["name"] for e in agent["env"]} == {"X", "Y"}


def test_node_pod_cidrs_union_and_taints_replaced() -> None:
    node = {"spec": {"podCIDRs": ["10.244.1.0/24"], "taints": [{"key": "a", "effect": "NoSchedule"}]}}
    result = smp(node, {"spec": {"podCIDRs": ["fd00:1::/64"], "taints": []}}, "Node")
    assert sorted(result["spec"]["podCIDRs"]) == ["10.244.1.0/24", "fd00:1::/64"]
    assert result["spec"]["taints"] == []


def test_endpoints_subsets_are_atomic() -> None:
    ep = {"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}
    patch = {"subsets": [{"addresses": [{"ip": "10.0.0.2"}], "ports": [{"port": 80}]}]}
    assert smp(ep, patch, "Endpoints") == patch


def test_directives_never_leak_into_new_fields() -> None:
    patch = {"spec": {"initContainers": [{"name": "init", "env": [
        {"name": "A", "value": "1"}, {"$patch": "delete", "name": "B"}], "$retainKeys": ["name", "env"]}],
        "securityContext": {"$patch": "replace", "runAsUser": 1, "fsGroup": None}}}
    result = smp(POD, patch)
    assert result["spec"]["initContainers"] == [{"name": "init", "env": [{"name": "A", "value": "1"}]}]
    assert result["spec"]["securityContext"] == {"runAsUser": 1}
    assert "$" not in json.dumps(result)


@pytest.mark.parametrize("patch", [
    {"spec": {"containers": [{"image": "no-name"}]}},
    {"spec": {"containers": [{"name": "app", "$patch": "merge"}, {"$patch": "merge"}]}},
    {"metadata": {"$bogus": 1}},
    {"metadata": {"labels": {"$patch": "explode"}}},
    {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
    ["not", "an", "object"],
])
def test_strategic_errors(patch: Any) -> None:
    with pytest.raises(PatchError):
        smp(POD, patch)


def test_patch_meta_facts() -> None:
    pod, svc, node = patch_meta("Pod"), patch_meta("Service"), patch_meta("Node")
    assert pod["metadata.ownerReferences"] == ("merge", "uid")
    assert pod["spec.containers.ports"] == ("merge", "containerPort")
    assert pod["spec.ephemeralContainers.volumeDevices"] == ("merge", "devicePath")
    assert pod["status.podIPs"] == ("merge", "ip")
    assert svc["spec.ports"] == ("merge", "port")
    assert node["spec.podCIDRs"] == ("merge", "")
    assert patch_meta("Deployment")["spec.template.spec.initContainers.env"] == ("merge", "name")
    assert patch_meta("SomethingNew")["metadata.finalizers"] == ("merge", "")


# ---------------------------------------------------------------------------------------------
# kubectl apply of a Service: port 80 -> 8080 and label "tier" removed, as kubectl builds it


def _applied(port: int, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080},
                {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090}]}}


def test_kubectl_apply_service_patch() -> None:
    old_config = _applied(80, {"app": "web", "tier": "frontend"})
    new_config = _applied(8080, {"app": "web"})
    live = copy.deepcopy(old_config)
    live["metadata"].update(uid="u-1", resourceVersion="7",
                            annotations={LAST_APPLIED: json.dumps(old_config) + "\n"})
    live["spec"].update(clusterIP="10.96.0.20", type="ClusterIP", sessionAffinity="None")
    live["status"] = {"loadBalancer": {}}
    patch = {
        "metadata": {"annotations": {LAST_APPLIED: json.dumps(new_config) + "\n"},
                     "labels": {"tier": None}},
        "spec": {"$setElementOrder/ports": [{"port": 8080}, {"port": 9090}],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080},
                           {"$patch": "delete", "port": 80}]},
    }
    body = json.dumps(patch).encode()
    result = apply_patch(live, "application/strategic-merge-patch+json; charset=utf-8", body,
                         "Service")
    assert result["metadata"]["labels"] == {"app": "web"}
    assert result["metadata"]["annotations"][LAST_APPLIED] == json.dumps(new_config) + "\n"
    assert result["metadata"]["uid"] == "u-1"
    assert result["spec"]["ports"] == new_config["spec"]["ports"]
    assert result["spec"]["clusterIP"] == "10.96.0.20"
    assert result["status"] == {"loadBalancer": {}}
    assert "$" not in json.dumps({k: v for k, v in result.items() if k != "metadata"})


def test_service_ports_merge_by_port() -> None:
    svc = _applied(80, {})
    result = smp(svc, {"spec": {"ports": [{"port": 9090, "targetPort": 9191}]}}, "Service")
    assert [(p["port"], p["targetPort"]) for p in result["spec"]["ports"]] == [(80, 8080), (9090, 9191)]
    assert result["spec"]["ports"][1]["name"] == "metrics"


# ---------------------------------------------------------------------------------------------
# Dispatch


def test_apply_patch_dispatches_on_content_type() -> None:
    doc = {"metadata": {"finalizers": ["a"]}}
    merge = apply_patch(doc, "application/merge-patch+json", b'{"metadata":{"finalizers":["b"]}}', "Pod")
    assert merge["metadata"]["finalizers"] == ["b"]
    strategic = apply_patch(doc, "application/strategic-merge-patch+json",
                            '{"metadata":{"finalizers":["b"]}}', "Pod")
    assert strategic["metadata"]["finalizers"] == ["b", "a"]  # new items go first, as upstream
    jsonpatch = apply_patch(doc, "Application/JSON-Patch+JSON",
                            [{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}], "Pod")
    assert jsonpatch["metadata"]["finalizers"] == ["a", "b"]


@pytest.mark.parametrize("content_type", ["application/apply-patch+yaml", "application/json", ""])
def test_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(UnsupportedPatchType) as err:
        apply_patch({}, content_type, b"{}", "Pod")
    assert err.value.code == 415
    assert "application/strategic-merge-patch+json" in str(err.value)
    assert isinstance(err.value, PatchError)


@pytest.mark.parametrize("body", [b"{not json", b'{"a": NaN}', b"\xff\xfe\x00"])
def test_invalid_json_body(body: bytes) -> None:
    with pytest.raises(PatchError) as err:
        apply_patch({}, "application/merge-patch+json", body, "Pod")
    assert err.value.code == 400
