"""Server-side printing (netplane.apiserver.tables): columns and cells as the real printers."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from netplane.apiserver import resources
from netplane.apiserver.resources import ResourceType
from netplane.apiserver.tables import (
    format_label_selector,
    format_labels,
    human_duration,
    parse_time,
    table_for,
    table_for_object,
)

NOW = datetime(2024, 1, 2, 12, 0, 0, tzinfo=timezone.utc)


def ago(**kw: float) -> str:
    return (NOW - timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")


def rt(kind: str) -> ResourceType:
    return next(r for r in resources.RESOURCES if r.kind == kind)


def meta(name: str = "x", **extra) -> dict:
    return {"name": name, "namespace": "default", "creationTimestamp": ago(minutes=5),
            "resourceVersion": "7", **extra}


def cells(kind: str, obj: dict) -> list:
    return table_for(rt(kind), [obj], now=NOW)["rows"][0]["cells"]


def columns(kind: str) -> list[tuple[str, int]]:
    definitions = table_for(rt(kind), [], now=NOW)["columnDefinitions"]
    return [(c["name"], c["priority"]) for c in definitions]


# --- HumanDuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("delta, text", [
    (timedelta(seconds=-5), "<invalid>"),
    (timedelta(seconds=-2), "<invalid>"),
    (timedelta(seconds=-1.5), "0s"),
    (timedelta(seconds=-1), "0s"),
    (timedelta(0), "0s"),
    (timedelta(seconds=0.9), "0s"),
    (timedelta(seconds=45), "45s"),
    (timedelta(seconds=119), "119s"),
    (timedelta(seconds=120), "2m"),
    (timedelta(seconds=121), "2m1s"),
    (timedelta(minutes=5, seconds=30), "5m30s"),
    (timedelta(seconds=599), "9m59s"),
    (timedelta(minutes=10), "10m"),
    (timedelta(minutes=10, seconds=59), "10m"),
    (timedelta(minutes=179), "179m"),
    (timedelta(minutes=180), "3h"),
    (timedelta(minutes=181), "3h1m"),
    (timedelta(hours=7, minutes=59), "7h59m"),
    (timedelta(hours=8), "8h"),
    (timedelta(hours=47, minutes=59), "47h"),
    (timedelta(hours=48), "2d"),
    (timedelta(hours=49), "2d1h"),
    (timedelta(days=7, hours=23), "7d23h"),
    (timedelta(days=8), "8d"),
    (timedelta(days=729), "729d"),
    (timedelta(days=730), "2y"),
    (timedelta(days=731), "2y1d"),
    (timedelta(days=365 * 8 - 1), "7y364d"),
    (timedelta(days=365 * 8), "8y"),
    (timedelta(days=365 * 30), "30y"),
])
def test_human_duration(delta: timedelta, text: str) -> None:
    assert human_duration(delta) == text


def test_parse_time_forms() -> None:
    assert parse_time("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_time("2024-01-02T03:04:05.123456Z").microsecond == 123456
    assert parse_time("2024-01-02T03:04:05.123456789Z").microsecond == 123456
    assert parse_time("2024-01-02T05:04:05+02:00") == parse_time("2024-01-02T03:04:05Z")
    for bad in (None, "", "yesterday", 12, "2024-13-02T03:04:05Z", "2024-01-02T03:04:05",
                "2024-01-02T03:04:05+24:00", "0001-01-01T00:00:00Z"):
        assert parse_time(bad) is None


def test_age_unknown_when_missing_and_naive_now_is_utc() -> None:
    ns = {"metadata": {"name": "a"}}
    assert cells("Namespace", ns) == ["a", "Active", "<unknown>"]
    ns = {"metadata": {"name": "a", "creationTimestamp": "2024-01-02T11:55:00Z"}}
    naive = NOW.replace(tzinfo=None)
    assert table_for(rt("Namespace"), [ns], now=naive)["rows"][0]["cells"][2] == "5m"


# --- Table envelope -------------------------------------------------------------------------------

def test_table_envelope_and_list_meta() -> None:
    t = table_for(rt("ConfigMap"), [{"metadata": meta("cm")}], now=NOW,
                  list_meta={"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3})
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert t["metadata"] == {"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3}
    assert t["columnDefinitions"][0] == {
        "name": "Name", "type": "string", "format": "name",
        "description": t["columnDefinitions"][0]["description"], "priority": 0}
    assert all(set(c) == {"name", "type", "format", "description", "priority"}
               for c in t["columnDefinitions"])
    assert table_for(rt("ConfigMap"), [], now=NOW)["metadata"] == {}
    assert table_for(rt("ConfigMap"), [], now=NOW)["rows"] == []


def test_include_object_modes() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta("p", labels={"a": "b"}),
           "spec": {"containers": [{"name": "c"}]}}
    row = table_for(rt("Pod"), [pod], now=NOW)["rows"][0]
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": pod["metadata"]}
    empty = table_for(rt("Pod"), [pod], include_object="", now=NOW)
    assert empty["rows"][0]["object"] == row["object"]
    assert table_for(rt("Pod"), [pod], include_object="None", now=NOW)["rows"][0]["object"] is None
    assert table_for(rt("Pod"), [pod], include_object="Object", now=NOW)["rows"][0]["object"] == pod
    # Objects stored without type meta still come back typed, as the server converts them.
    bare = {"metadata": meta("p")}
    full = table_for(rt("Pod"), [bare], include_object="Object", now=NOW)["rows"][0]["object"]
    assert full == {"apiVersion": "v1", "kind": "Pod", "metadata": bare["metadata"]}
    beta = table_for(rt("Pod"), [pod], now=NOW, group_version="meta.k8s.io/v1beta1")
    assert beta["apiVersion"] == beta["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    with pytest.raises(ValueError, match="unrecognized includeObject"):
        table_for(rt("Pod"), [pod], include_object="Everything")


def test_no_headers_drops_column_definitions_but_not_cells() -> None:
    t = table_for(rt("Service"), [{"metadata": meta("s")}], now=NOW, no_headers=True)
    assert t["columnDefinitions"] is None  # a nil slice, as on later watch events
    assert len(t["rows"][0]["cells"]) == 7
    assert json.loads(json.dumps(t))["columnDefinitions"] is None


def test_table_for_object_uses_object_resource_version() -> None:
    t = table_for_object(rt("Lease"), {"metadata": meta("l", resourceVersion="99")}, now=NOW)
    assert t["metadata"] == {"resourceVersion": "99"} and len(t["rows"]) == 1
    t = table_for_object(rt("Lease"), {"metadata": meta("l")}, now=NOW, list_meta={})
    assert t["metadata"] == {}


def test_default_table_for_kinds_without_printer() -> None:
    other = ResourceType("example.com", "v1", "widgets", "Widget", True)
    t = table_for(other, [{"metadata": meta("w")}, {"metadata": {"name": "z"}}], now=NOW)
    assert [(c["name"], c["type"], c["format"]) for c in t["columnDefinitions"]] == [
        ("Name", "string", "name"), ("Created At", "date", "")]
    assert [r["cells"] for r in t["rows"]] == [["w", ago(minutes=5)], ["z", "0001-01-01T00:00:00Z"]]
    early = {"metadata": {"name": "e", "creationTimestamp": "0001-01-01T00:00:00+05:00"}}
    assert table_for(other, [early], now=NOW)["rows"][0]["cells"] == ["e", "0001-01-01T00:00:00Z"]


# --- Pods -----------------------------------------------------------------------------------------

def test_pod_columns() -> None:
    assert columns("Pod") == [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0),
                              ("IP", 1), ("Node", 1), ("Nominated Node", 1), ("Readiness Gates", 1)]


def pod(phase: str = "Running", statuses: list | None = None, **kw) -> dict:
    spec = {"containers": [{"name": "app", "image": "nginx"}], "nodeName": "node-1",
            **kw.pop("spec", {})}
    status = {"phase": phase, "containerStatuses": statuses or [], **kw.pop("status", {})}
    return {"metadata": meta("web", **kw.pop("metadata", {})), "spec": spec, "status": status}


RUNNING = {"name": "app", "ready": True, "restartCount": 0,
           "state": {"running": {"startedAt": ago(minutes=5)}}}


def test_pod_running_wide_cells() -> None:
    ips = {"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
    assert cells("Pod", pod(statuses=[RUNNING], status=ips)) == [
        "web", "1/1", "Running", "0", "5m", "10.0.0.5", "node-1", "<none>", "<none>"]
    p = pod(statuses=[RUNNING], status={"podIP": "10.0.0.9", "nominatedNodeName": "node-2"})
    assert cells("Pod", p)[5:8] == ["10.0.0.9", "node-1", "node-2"]


@pytest.mark.parametrize("statuses, status, want", [
    ([], {}, ("0/1", "Pending")),
    ([{"name": "app", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}], {},
     ("0/1", "ContainerCreating")),
    ([{"name": "app", "ready": False, "state": {"waiting": {"reason": "ErrImagePull"}}}], {},
     ("0/1", "ErrImagePull")),
    ([{"name": "app", "state": {"terminated": {"exitCode": 137}}}], {}, ("0/1", "ExitCode:137")),
    ([{"name": "app", "state": {"terminated": {"exitCode": 0, "signal": 9}}}], {},
     ("0/1", "Signal:9")),
    ([{"name": "app", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}], {},
     ("0/1", "Error")),
    ([], {"reason": "Evicted"}, ("0/1", "Evicted")),
    ([], {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
     ("0/1", "SchedulingGated")),
])
def test_pod_status_reasons(statuses: list, status: dict, want: tuple[str, str]) -> None:
    phase = "Failed" if status.get("reason") == "Evicted" else "Pending"
    assert tuple(cells("Pod", pod(phase, statuses, status=status))[1:3]) == want


def test_pod_missing_phase_reads_pending() -> None:
    bare = {"metadata": {"name": "p"}, "spec": {"containers": [{}]}}
    assert cells("Pod", bare)[1:4] == ["0/1", "Pending", "0"]


def test_pod_restarts_with_last_restart_age() -> None:
    crash = {"name": "app", "ready": False, "restartCount": 3,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                          "finishedAt": ago(minutes=5)}}}
    assert cells("Pod", pod(statuses=[crash]))[1:4] == ["0/1", "CrashLoopBackOff", "3 (5m ago)"]
    # Without a termination time only the count is shown.
    crash = {**crash, "lastState": {}}
    assert cells("Pod", pod(statuses=[crash]))[3] == "3"


def test_pod_completed_and_row_conditions() -> None:
    done = {"name": "app", "ready": False,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    t = table_for(rt("Pod"), [pod("Succeeded", [done])], now=NOW)
    assert t["rows"][0]["cells"][1:3] == ["0/1", "Completed"]
    assert t["rows"][0]["conditions"] == [
        {"type": "Completed", "status": "True", "reason": "Succeeded",
         "message": "The pod has completed successfully."}]
    failed = table_for(rt("Pod"), [pod("Failed", [])], now=NOW)["rows"][0]
    assert failed["conditions"][0]["reason"] == "Failed"
    assert "conditions" not in table_for(rt("Pod"), [pod()], now=NOW)["rows"][0]
    # A terminal pod being deleted keeps its final status.
    deleting = {"deletionTimestamp": ago(seconds=3)}
    assert cells("Pod", pod("Succeeded", [done], metadata=deleting))[2] == "Completed"


def test_pod_completed_container_with_running_sibling() -> None:
    done = {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    run = {**RUNNING, "name": "b"}
    spec = {"containers": [{"name": "a"}, {"name": "b"}]}
    assert cells("Pod", pod(statuses=[done, run], spec=spec))[1:3] == ["1/2", "NotReady"]
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    row = cells("Pod", pod(statuses=[done, run], spec=spec, status=ready))
    assert row[1:3] == ["1/2", "Running"]


def test_pod_first_container_reason_wins() -> None:
    a = {"name": "a", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    b = {"name": "b", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    spec = {"containers": [{"name": "a"}, {"name": "b"}]}
    assert cells("Pod", pod(statuses=[a, b], spec=spec))[2] == "ImagePullBackOff"


def test_pod_terminating_and_node_lost() -> None:
    deleting = {"deletionTimestamp": ago(seconds=10)}
    assert cells("Pod", pod(statuses=[RUNNING], metadata=deleting))[2] == "Terminating"
    lost = pod(statuses=[RUNNING], metadata=deleting, status={"reason": "NodeLost"})
    assert cells("Pod", lost)[2] == "Unknown"


INIT_SPEC = {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "app"}]}


@pytest.mark.parametrize("init_statuses, want", [
    ([{"name": "i1", "state": {"running": {}}},
      {"name": "i2", "state": {"waiting": {"reason": "PodInitializing"}}}], "Init:0/2"),
    ([{"name": "i1", "state": {"terminated": {"exitCode": 0}}},
      {"name": "i2", "state": {"waiting": {"reason": "PodInitializing"}}}], "Init:1/2"),
    ([{"name": "i1", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
     "Init:CrashLoopBackOff"),
    ([{"name": "i1", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}], "Init:Error"),
    ([{"name": "i1", "state": {"terminated": {"exitCode": 2}}}], "Init:ExitCode:2"),
    ([{"name": "i1", "state": {"terminated": {"exitCode": 1, "signal": 9}}}], "Init:Signal:9"),
])
def test_pod_init_containers(init_statuses: list, want: str) -> None:
    waiting = [{"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}]
    p = pod("Pending", waiting, spec=INIT_SPEC, status={"initContainerStatuses": init_statuses})
    assert cells("Pod", p)[1:3] == ["0/1", want]


def test_pod_init_restarts_counted_while_initializing() -> None:
    init = [{"name": "i1", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(seconds=70)}}}]
    p = pod("Pending", [], spec=INIT_SPEC, status={"initContainerStatuses": init})
    assert cells("Pod", p)[2:4] == ["Init:CrashLoopBackOff", "2 (70s ago)"]


def test_pod_sidecar_counts_as_container() -> None:
    spec = {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "app"}]}
    init = [{"name": "proxy", "started": True, "ready": True, "restartCount": 1,
             "state": {"running": {}}}]
    conds = [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}]
    status = {"initContainerStatuses": init, "conditions": conds}
    p = pod(statuses=[RUNNING], spec=spec, status=status)
    assert cells("Pod", p)[1:4] == ["2/2", "Running", "1"]


def test_pod_readiness_gates() -> None:
    spec = {"readinessGates": [{"conditionType": "a"}, {"conditionType": "b"}]}
    conds = [{"type": "a", "status": "True"}, {"type": "b", "status": "False"}]
    p = pod(statuses=[RUNNING], spec=spec, status={"conditions": conds})
    assert cells("Pod", p)[8] == "1/2"


# --- Nodes ----------------------------------------------------------------------------------------

def test_node_columns() -> None:
    assert columns("Node") == [("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0),
                               ("Internal-IP", 1), ("External-IP", 1), ("OS-Image", 1),
                               ("Kernel-Version", 1), ("Container-Runtime", 1)]


def node(ready: str | None = "True", labels: dict | None = None,
         unschedulable: bool = False) -> dict:
    conds = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conds.append({"type": "Ready", "status": ready})
    return {
        "metadata": {"name": "n1", "creationTimestamp": ago(days=3), "labels": labels or {}},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": conds,
                   "addresses": [{"type": "Hostname", "address": "n1"},
                                 {"type": "InternalIP", "address": "192.168.1.10"}],
                   "nodeInfo": {"kubeletVersion": "v1.30.1", "osImage": "Debian GNU/Linux 12",
                                "kernelVersion": "6.1.0",
                                "containerRuntimeVersion": "containerd://1.7"}},
    }


def test_node_ready_with_roles_wide() -> None:
    labels = {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "",
              "kubernetes.io/role": "master", "node-role.kubernetes.io/": "",
              "kubernetes.io/os": "linux"}
    assert cells("Node", node(labels=labels)) == [
        "n1", "Ready", "control-plane,master,worker", "3d", "v1.30.1", "192.168.1.10", "<none>",
        "Debian GNU/Linux 12", "6.1.0", "containerd://1.7"]


@pytest.mark.parametrize("ready, unschedulable, want", [
    ("False", False, "NotReady"),
    ("Unknown", False, "NotReady"),
    (None, False, "Unknown"),
    ("True", True, "Ready,SchedulingDisabled"),
    ("False", True, "NotReady,SchedulingDisabled"),
])
def test_node_status(ready: str | None, unschedulable: bool, want: str) -> None:
    row = cells("Node", node(ready, unschedulable=unschedulable))
    assert row[1] == want and row[2] == "<none>"


def test_node_without_status() -> None:
    assert cells("Node", {"metadata": {"name": "n"}}) == [
        "n", "Unknown", "<none>", "<unknown>", "", "<none>", "<none>",
        "<unknown>", "<unknown>", "<unknown>"]


# --- Services -------------------------------------------------------------------------------------

def test_service_columns() -> None:
    assert columns("Service") == [("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0),
                                  ("Port(s)", 0), ("Age", 0), ("Selector", 1)]


def svc(spec: dict, status: dict | None = None) -> dict:
    return {"metadata": meta("s"), "spec": spec, "status": status or {}}


@pytest.mark.parametrize("spec, status, want", [
    ({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
      "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
      "selector": {"k8s-app": "kube-dns", "app": "dns"}},
     None, ["ClusterIP", "10.96.0.10", "<none>", "53/UDP,53/TCP", "app=dns,k8s-app=kube-dns"]),
    ({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}, None,
     ["ClusterIP", "None", "<none>", "<none>", "<none>"]),
    ({"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}, None,
     ["ClusterIP", "10.96.0.1", "<none>", "443/TCP", "<none>"]),
    ({"type": "ClusterIP", "clusterIPs": ["10.96.0.2", "fd00::2"],
      "externalIPs": ["1.2.3.4", "5.6.7.8"], "ports": [{"port": 80, "protocol": "TCP"}]}, None,
     ["ClusterIP", "10.96.0.2", "1.2.3.4,5.6.7.8", "80/TCP", "<none>"]),
    ({"type": "NodePort", "clusterIPs": ["10.96.0.3"],
      "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                {"port": 443, "nodePort": 30443}]},
     None, ["NodePort", "10.96.0.3", "<none>", "80:30080/TCP,443:30443/TCP", "<none>"]),
    ({"type": "LoadBalancer", "clusterIPs": ["10.96.0.4"],
      "ports": [{"port": 80, "nodePort": 31000}]},
     {"loadBalancer": {}}, ["LoadBalancer", "10.96.0.4", "<pending>", "80:31000/TCP", "<none>"]),
    ({"type": "LoadBalancer", "clusterIPs": ["10.96.0.4"],
      "ports": [{"port": 80, "nodePort": 31000}]},
     {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example.com"},
                                   {"ip": "198.51.100.1"}, {"ip": "198.51.100.1"}]}},
     ["LoadBalancer", "10.96.0.4", "198.51.100.1,203.0.113.10,lb.example.com", "80:31000/TCP",
      "<none>"]),
    ({"type": "LoadBalancer", "clusterIPs": ["10.96.0.4"], "externalIPs": ["1.2.3.4"]},
     {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
     ["LoadBalancer", "10.96.0.4", "203.0.113.10,1.2.3.4", "<none>", "<none>"]),
    ({"type": "LoadBalancer", "externalIPs": ["1.2.3.4"]}, None,
     ["LoadBalancer", "<none>", "1.2.3.4", "<none>", "<none>"]),
    ({"type": "ExternalName", "externalName": "db.example.com", "ports": [{"port": 5432}]}, None,
     ["ExternalName", "<none>", "db.example.com", "5432/TCP", "<none>"]),
    ({"type": "Weird"}, None, ["Weird", "<none>", "<unknown>", "<none>", "<none>"]),
])
def test_service_rows(spec: dict, status: dict | None, want: list) -> None:
    row = cells("Service", svc(spec, status))
    assert row[0] == "s" and row[5] == "5m"
    assert row[1:5] + row[6:] == want


# --- Endpoints and EndpointSlices -----------------------------------------------------------------

def test_endpoints_rows() -> None:
    assert columns("Endpoints") == [("Name", 0), ("Endpoints", 0), ("Age", 0)]
    ep = {"metadata": meta("ep"), "subsets": [
        {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
         "ports": [{"port": 80}, {"port": 443}]}]}
    assert cells("Endpoints", ep) == [
        "ep", "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...", "5m"]
    ep["subsets"] = [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 53}]}]
    assert cells("Endpoints", ep)[1] == "[fd00::1]:53"
    ep["subsets"] = [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}]  # headless, no ports
    assert cells("Endpoints", ep)[1] == "10.0.0.1,10.0.0.2"
    ep["subsets"] = [{"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]
    assert cells("Endpoints", ep)[1] == ""  # subsets without ready addresses print empty
    assert cells("Endpoints", {"metadata": meta("ep")})[1] == "<none>"


def test_endpoint_slice_rows() -> None:
    assert columns("EndpointSlice") == [("Name", 0), ("AddressType", 0), ("Ports", 0),
                                        ("Endpoints", 0), ("Age", 0)]
    eps = {"metadata": meta("web-abc"), "addressType": "IPv4",
           "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "named"}, {}],
           "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(1, 6)]}
    assert cells("EndpointSlice", eps) == [
        "web-abc", "IPv4", "80,named,*", "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...", "5m"]
    eps.update(ports=[{"port": p} for p in (1, 2, 3, 4)], endpoints=[])
    assert cells("EndpointSlice", eps)[2:4] == ["1,2,3 + 1 more...", "<unset>"]


# --- Events ---------------------------------------------------------------------------------------

def test_event_columns() -> None:
    assert columns("Event") == [("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0),
                                ("Subobject", 1), ("Source", 1), ("Message", 0), ("First Seen", 1),
                                ("Count", 1), ("Name", 1)]
    name_col = table_for(rt("Event"), [], now=NOW)["columnDefinitions"][-1]
    assert name_col["format"] == "name"


def test_event_core_api() -> None:
    ev = {"metadata": meta("web.17a"), "type": "Warning", "reason": "BackOff",
          "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
          "source": {"component": "kubelet", "host": "node-1"},
          "message": " Back-off restarting \n",
          "firstTimestamp": ago(minutes=10), "lastTimestamp": ago(seconds=30), "count": 4}
    assert cells("Event", ev) == ["30s", "Warning", "BackOff", "pod/web", "spec.containers{app}",
                                  "kubelet, node-1", "Back-off restarting", "10m", 4, "web.17a"]


def test_event_new_api_fields() -> None:
    ev = {"metadata": meta("e"), "type": "Normal", "reason": "Scheduled",
          "involvedObject": {"kind": "Node"}, "eventTime": "2024-01-02T11:59:00.000000Z",
          "reportingComponent": "default-scheduler", "reportingInstance": "sched-1",
          "message": "ok"}
    assert cells("Event", ev) == ["60s", "Normal", "Scheduled", "node", "",
                                  "default-scheduler, sched-1", "ok", "60s", 1, "e"]
    ev["series"] = {"count": 7, "lastObservedTime": "2024-01-02T11:59:50.500000Z"}
    row = cells("Event", ev)
    assert (row[0], row[7], row[8]) == ("9s", "60s", 7)
    assert cells("Event", {"metadata": {"name": "e"}})[:1] + cells("Event", {})[7:9] == [
        "<unknown>", "<unknown>", 1]


# --- Simple kinds ---------------------------------------------------------------------------------

def test_namespace_configmap_lease() -> None:
    ns = {"metadata": meta("kube-system"), "status": {"phase": "Terminating"}}
    assert cells("Namespace", ns) == ["kube-system", "Terminating", "5m"]
    cm = {"metadata": meta("cfg"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}
    assert cells("ConfigMap", cm) == ["cfg", 3, "5m"]
    lease = {"metadata": meta("node-1"),
             "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}
    assert cells("Lease", lease) == ["node-1", "node-1", "5m"]
    assert cells("Lease", {"metadata": meta("l"), "spec": {}}) == ["l", "", "5m"]


@pytest.mark.parametrize("selector, want", [
    (None, "<none>"),
    ({}, "<none>"),
    ({"matchLabels": {"role": "db", "app": "web"}}, "app=web,role=db"),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                           {"key": "env", "operator": "NotIn", "values": ["prod"]},
                           {"key": "zz", "operator": "Exists"},
                           {"key": "legacy", "operator": "DoesNotExist"}],
      "matchLabels": {"app": "web"}},
     "app=web,env notin (prod),!legacy,tier in (a,b),zz"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "<error>"),
    ({"matchExpressions": [{"key": "a", "operator": "Near"}]}, "<error>"),
])
def test_network_policy_pod_selector(selector: dict | None, want: str) -> None:
    np = {"metadata": meta("deny"), "spec": {"podSelector": selector, "policyTypes": ["Ingress"]}}
    assert cells("NetworkPolicy", np) == ["deny", want, "5m"]
    assert format_label_selector(selector) == want


def test_format_labels() -> None:
    assert format_labels({"b": "2", "a": "1"}) == "a=1,b=2"
    assert format_labels({}) == format_labels(None) == "<none>"


def test_daemon_set_rows() -> None:
    assert columns("DaemonSet") == [
        ("Name", 0), ("Desired", 0), ("Current", 0), ("Ready", 0), ("Up-to-date", 0),
        ("Available", 0), ("Node Selector", 0), ("Age", 0), ("Containers", 1), ("Images", 1),
        ("Selector", 1)]
    ds = {"metadata": meta("netplane"),
          "spec": {"selector": {"matchLabels": {"app": "netplane"}},
                   "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                         "containers": [{"name": "agent", "image": "netplane:1"},
                                                        {"name": "dns", "image": "netplane:1"}]}}},
          "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                     "updatedNumberScheduled": 3, "numberAvailable": 2}}
    assert cells("DaemonSet", ds) == ["netplane", 3, 3, 2, 3, 2, "kubernetes.io/os=linux", "5m",
                                      "agent,dns", "netplane:1,netplane:1", "app=netplane"]


def test_deployment_rows() -> None:
    assert columns("Deployment") == [("Name", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0),
                                     ("Age", 0), ("Containers", 1), ("Images", 1), ("Selector", 1)]
    dep = {"metadata": meta("web"),
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "nginx",
                                                          "image": "nginx:1.25"}]}}},
           "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3,
                      "availableReplicas": 2}}
    assert cells("Deployment", dep) == ["web", "2/3", 3, 2, "5m", "nginx", "nginx:1.25", "app=web"]
    # Unset replicas default to 1; a missing selector prints empty; an invalid one <invalid>.
    bare = {"metadata": meta("d"), "spec": {}}
    assert cells("Deployment", bare) == ["d", "0/1", 0, 0, "5m", "", "", ""]
    bad = {"metadata": meta("d"),
           "spec": {"replicas": 0, "selector": {"matchExpressions": [{"key": "a"}]}}}
    assert cells("Deployment", bad)[1::6] == ["0/0", "<invalid>"]


# --- Robustness -----------------------------------------------------------------------------------

SIDECAR_POD = pod(
    statuses=[RUNNING],
    spec={"initContainers": [{"name": "i", "restartPolicy": "Always"}],
          "readinessGates": [{"conditionType": "g"}]},
    status={"initContainerStatuses": [
        {"name": "i", "started": True, "ready": True, "state": {"running": {}},
         "lastState": {"terminated": {"finishedAt": ago(minutes=1)}}}],
        "podIPs": [{"ip": "10.0.0.1"}], "conditions": [{"type": "Ready", "status": "True"}]})

REPRESENTATIVE = {
    "Namespace": {"metadata": meta("ns"), "status": {"phase": "Active"}},
    "Node": node(labels={"node-role.kubernetes.io/worker": ""}),
    "Pod": SIDECAR_POD,
    "Service": svc({"type": "LoadBalancer", "clusterIPs": ["10.96.0.1"], "externalIPs": ["1.1.1.1"],
                    "ports": [{"port": 80, "nodePort": 30080}], "selector": {"a": "b"}},
                   {"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}]}}),
    "Endpoints": {"metadata": meta("ep"), "subsets": [{"addresses": [{"ip": "10.0.0.1"}],
                                                      "ports": [{"port": 80}]}]},
    "ConfigMap": {"metadata": meta("cm"), "data": {"a": "b"}, "binaryData": {"c": "AA=="}},
    "Event": {"metadata": meta("e"), "involvedObject": {"kind": "Pod", "name": "p"},
              "source": {"component": "kubelet"}, "firstTimestamp": ago(minutes=1),
              "lastTimestamp": ago(seconds=1), "count": 2,
              "series": {"count": 3, "lastObservedTime": ago(seconds=1)}},
    "EndpointSlice": {"metadata": meta("eps"), "addressType": "IPv4",
                      "ports": [{"port": 80, "name": "h"}],
                      "endpoints": [{"addresses": ["10.0.0.1"]}]},
    "NetworkPolicy": {"metadata": meta("np"), "spec": {"podSelector": {
        "matchLabels": {"a": "b"},
        "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}}},
    "DaemonSet": {"metadata": meta("ds"), "spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"spec": {"nodeSelector": {"a": "b"},
                              "containers": [{"name": "c", "image": "i"}]}}},
        "status": {"numberReady": 1}},
    "Deployment": {"metadata": meta("d"), "spec": {
        "replicas": 2, "selector": {"matchLabels": {"a": "b"}},
        "template": {"spec": {"containers": [{"name": "c"}]}}},
        "status": {"readyReplicas": 1}},
    "Lease": {"metadata": meta("l"), "spec": {"holderIdentity": "h"}},
    "ServiceAccount": {"metadata": meta("sa")},
    "ClusterRole": {"metadata": meta("cr"), "rules": [{"apiGroups": [""], "resources": ["pods"],
                                                       "verbs": ["get"]}]},
    "Role": {"metadata": meta("r"), "rules": []},
    "ClusterRoleBinding": {"metadata": meta("crb"),
                           "roleRef": {"kind": "ClusterRole", "name": "cr"}},
    "RoleBinding": {"metadata": meta("rb"), "roleRef": {"kind": "Role", "name": "r"}},
}

ODD_VALUES = (None, 0, -3, True, "", "x", [], {}, [None], {"": None}, 1.5,
              "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59")


def mutations(obj, path=()):
    """Every copy of `obj` with one nested value replaced by an odd value."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for key, value in items:
        for odd in ODD_VALUES:
            clone = copy.deepcopy(obj)
            clone[key] = odd
            yield path + (key,), clone
        for sub_path, sub in mutations(value, path + (key,)):
            clone = copy.deepcopy(obj)
            clone[key] = sub
            yield sub_path, clone


def test_representative_objects_cover_every_kind() -> None:
    assert set(REPRESENTATIVE) == {r.kind for r in resources.RESOURCES}


@pytest.mark.parametrize("kind", sorted(REPRESENTATIVE))
def test_odd_fields_never_raise(kind: str) -> None:
    base = REPRESENTATIVE[kind]
    width = len(columns(kind))
    variants = [base, {}, {"metadata": None}] + [clone for _, clone in mutations(base)]
    before = copy.deepcopy(variants)
    for mode in ("None", "Metadata", "Object"):
        t = table_for(rt(kind), variants, include_object=mode, now=NOW)
        assert all(len(row["cells"]) == width for row in t["rows"])
        json.dumps(t)  # every cell and object stays JSON-serializable
    assert variants == before  # inputs are never mutated


def test_non_dict_objects_render() -> None:
    t = table_for(rt("Pod"), [None, "junk", 3], now=NOW)  # type: ignore[list-item]
    assert [r["cells"][:3] for r in t["rows"]] == [["", "0/0", "Pending"]] * 3
