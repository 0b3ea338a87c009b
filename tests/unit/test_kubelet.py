"""Pure parts of kubelet-lite: resolv.conf/hosts, env and command lines, probes, backoff,
phase and status computation, and probe state machines."""

from __future__ import annotations

import socket
from typing import Any
import threading

import pytest

from netplane.sandbox.kubelet_probes import (
    ProbeResult,
    ProbeState,
    exec_check,
    http_check,
    run_in_netns,
    tcp_check,
)
from netplane.sandbox.kubelet_spec import (
    Probe,
    ProbeError,
    cni_capability_args,
    container_argv,
    container_env,
    effective_dns_policy,
    expand,
    grace_period,
    parse_probe,
    parse_quantity,
    parse_resolv_conf,
    pod_hostname,
    pod_hosts_file,
    pod_netns_name,
    pod_resolv_conf,
    resolve_port,
    restart_delay,
    should_restart,
    wrap_argv,
)
from netplane.sandbox.kubelet_status import (
    ContainerRuntime,
    PodRuntime,
    compute_phase,
    container_status,
    pod_status,
    qos_class,
)


def pod(**spec):
    return {"metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "img"}], **spec}}


# ------------------------------------------------------------------------------ names/files


def test_netns_name_is_short_stable_and_per_uid():
    a = pod_netns_name("c1", "0b9e-uid")
    assert a == pod_netns_name("c1", "0b9e-uid")
    assert a.startswith("np-c1-p-") and len(a) == len("np-c1-p-") + 8
    assert a != pod_netns_name("c1", "other")


def test_resolv_conf_cluster_first():
    text = pod_resolv_conf(pod(), dns_ip="10.96.0.10", cluster_domain="cluster.local",
                           host_resolv="nameserver 8.8.8.8\nsearch corp.example\n").render()
    assert text == ("nameserver 10.96.0.10\n"
                    "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")


def test_resolv_conf_default_and_host_network():
    host = "# comment\nnameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch a.example b.example\noptions rotate\n"
    d = pod_resolv_conf(pod(dnsPolicy="Default"), dns_ip="10.96.0.10",
                        cluster_domain="cluster.local", host_resolv=host)
    assert d.nameservers == ("1.1.1.1", "9.9.9.9") and d.searches == ("a.example", "b.example")
    assert d.options == ("rotate",)
    # ClusterFirst on hostNetwork falls back to Default; ClusterFirstWithHostNet does not.
    assert effective_dns_policy(pod(hostNetwork=True)) == "Default"
    assert effective_dns_policy(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")) == \
        "ClusterFirst"


def test_resolv_conf_none_and_dns_config_merge():
    p = pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.2.3.4", "1.2.3.4"],
                                         "searches": ["x.example"],
                                         "options": [{"name": "ndots", "value": "2"},
                                                     {"name": "edns0"}]})
    r = pod_resolv_conf(p, dns_ip="10.96.0.10", cluster_domain="cluster.local")
    assert r.render() == "nameserver 1.2.3.4\nsearch x.example\noptions ndots:2 edns0\n"
    cf = pod(dnsConfig={"nameservers": ["8.8.8.8"], "options": [{"name": "ndots", "value": "1"}]})
    r = pod_resolv_conf(cf, dns_ip="10.96.0.10", cluster_domain="cluster.local")
    assert r.nameservers == ("10.96.0.10", "8.8.8.8") and r.options == ("ndots:1",)


def test_parse_resolv_conf_last_search_wins():
    r = parse_resolv_conf("search a\ndomain b\nnameserver 1.1.1.1 ; x\n")
    assert r.searches == ("b",) and r.nameservers == ("1.1.1.1",)


def test_hosts_file_plain_subdomain_aliases():
    text = pod_hosts_file(pod(), ["10.251.0.5"], "cluster.local")
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert text.endswith("10.251.0.5\tweb\n")
    p = pod(hostname="db-0", subdomain="db",
            hostAliases=[{"ip": "1.2.3.4", "hostnames": ["foo.local", "bar.local"]}])
    text = pod_hosts_file(p, ["10.251.0.5"], "cluster.local.")
    assert "10.251.0.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n" in text
    assert text.endswith("\n# Entries added by HostAliases.\n1.2.3.4\tfoo.local\tbar.local\n")


def test_pod_hostname_truncated():
    p = pod()
    p["metadata"]["name"] = "a" * 62 + "-bcd"
    assert pod_hostname(p) == "a" * 62


# ------------------------------------------------------------------------------ env/command


def test_expand():
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$$", env) == "1-x y-$(C)-$(A)-$"


def test_container_env_values_and_field_refs():
    c = {"name": "c", "env": [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
        {"name": "EMPTY"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]}
    env, problems = container_env(c, pod(), pod_ips=["10.0.0.5"], node_ip="172.30.0.3",
                                  base_env={"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["HOSTNAME"] == "web"
    assert (env["POD_NAME"], env["POD_NS"], env["POD_IP"], env["NODE"], env["HOST_IP"]) == \
        ("web", "shop", "10.0.0.5", "n1", "172.30.0.3")
    assert env["APP"] == "web" and env["GREETING"] == "hi web" and env["EMPTY"] == ""
    assert "SECRET" not in env and len(problems) == 1 and "secretKeyRef" in problems[0]


def test_container_argv_and_wrapping():
    c = {"command": ["python3", "-m", "http.server"], "args": ["$(PORT)"]}
    argv = container_argv(c, {"PORT": "8080"})
    assert argv == ["python3", "-m", "http.server", "8080"]
    assert container_argv({"args": ["sleep", "1"]}, {}) == ["sleep", "1"]
    assert container_argv({}, {}) == []
    wrapped = wrap_argv(argv, netns="np-c-p-1234abcd", cgroup_procs="/cg/cgroup.procs")
    assert wrapped[:4] == ["sh", "-c", 'echo $$ > "$0" && exec "$@"', "/cg/cgroup.procs"]
    assert wrapped[4:8] == ["ip", "netns", "exec", "np-c-p-1234abcd"] and wrapped[8:] == argv
    assert wrap_argv(["true"], netns=None, cgroup_procs=None) == ["true"]


def test_cni_capability_args_like_containerd():
    p = pod(containers=[{"name": "a", "ports": [
        {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
        {"containerPort": 9000}]}])
    p["metadata"]["annotations"] = {"kubernetes.io/ingress-bandwidth": "10M",
                                    "kubernetes.io/egress-bandwidth": "bogus"}
    caps, problems = cni_capability_args(p)
    assert caps == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                         {"hostPort": 5353, "containerPort": 53, "protocol": "udp",
                          "hostIP": "127.0.0.1"}],
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 2**32 - 1}}
    assert len(problems) == 1 and "egress-bandwidth" in problems[0]
    assert cni_capability_args(pod()) == ({}, [])
    assert parse_quantity("1Gi") == 2**30 and parse_quantity("1.5k") == 1500
    with pytest.raises(ValueError):
        parse_quantity("1 GB")


# ------------------------------------------------------------------------------------ probes


def test_parse_probes():
    c = {"ports": [{"name": "http", "containerPort": 8080}]}
    p = parse_probe({"tcpSocket": {"port": "http"}, "periodSeconds": 2}, c)
    assert p == Probe("tcp", port=8080, period=2.0)
    p = parse_probe({"httpGet": {"path": "healthz", "port": 9000, "scheme": "https",
                                 "httpHeaders": [{"name": "X", "value": "y"}]},
                     "initialDelaySeconds": 3, "timeoutSeconds": 2, "successThreshold": 2,
                     "failureThreshold": 5}, c)
    assert (p.kind, p.path, p.port, p.scheme, p.headers) == ("http", "/healthz", 9000, "HTTPS",
                                                             (("X", "y"),))
    assert (p.initial_delay, p.timeout, p.success_threshold, p.failure_threshold) == (3, 2, 2, 5)
    live = parse_probe({"exec": {"command": ["true"]}, "successThreshold": 3}, c, liveness=True)
    assert live.kind == "exec" and live.command == ("true",) and live.success_threshold == 1
    assert parse_probe(None, c) is None
    with pytest.raises(ProbeError):
        parse_probe({"tcpSocket": {"port": "nope"}}, c)
    with pytest.raises(ProbeError):
        parse_probe({"grpc": {"port": 1}}, c)
    with pytest.raises(ProbeError):
        parse_probe({"periodSeconds": 1}, c)
    assert resolve_port("8081", c) == 8081


def test_probe_state_thresholds():
    st = ProbeState(Probe("tcp", port=1, initial_delay=5, period=2, success_threshold=2,
                          failure_threshold=2), started=100.0)
    assert not st.due(104.9) and st.due(105.0)
    assert st.result is None
    assert not st.record(ProbeResult(True), 105.0) and st.result is None
    assert st.next_due == 107.0
    assert st.record(ProbeResult(True), 107.0) and st.result is True
    assert not st.record(ProbeResult(False), 109.0) and st.result is True
    assert st.record(ProbeResult(False), 111.0) and st.result is False


def test_tcp_and_http_checks_on_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        for status in (200, 503):
            conn, _ = srv.accept()
            conn.recv(4096)
            conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert http_check("127.0.0.1", port, "/", 2).ok
    res = http_check("127.0.0.1", port, "/", 2)
    assert not res.ok and "503" in res.message
    t.join(5)
    assert tcp_check("127.0.0.1", port, 1).ok
    srv.close()
    assert not tcp_check("127.0.0.1", port, 1).ok
    assert run_in_netns(None, lambda: ProbeResult(True, "here"), 1) == ProbeResult(True, "here")


def test_exec_check():
    assert exec_check(["true"], 2).ok
    res = exec_check(["sh", "-c", "echo nope; exit 3"], 2)
    assert not res.ok and "exit code 3" in res.message and "nope" in res.message
    res = exec_check(["sleep", "5"], 0.2)
    assert not res.ok and "timed out" in res.message
    assert not exec_check(["/nonexistent/binary"], 1).ok


# ---------------------------------------------------------------------------- restart/grace


def test_restart_policy_and_backoff():
    assert should_restart("Always", 0) and should_restart("OnFailure", 1)
    assert not should_restart("OnFailure", 0) and not should_restart("Never", 1)
    assert [restart_delay(n, 10, 300) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]


def test_grace_period():
    assert grace_period(pod()) == 30
    assert grace_period(pod(terminationGracePeriodSeconds=7)) == 7
    p = pod(terminationGracePeriodSeconds=7)
    p["metadata"]["deletionGracePeriodSeconds"] = 2
    assert grace_period(p) == 2


# ------------------------------------------------------------------------------------ status


def run_(name, **kw):
    return ContainerRuntime(name, state="running", started_at="2024-01-01T00:00:00Z", pid=42,
                            container_id="netplane://42", **kw)


def term(name, code, **kw):
    return ContainerRuntime(name, state="terminated", exit_code=code,
                            reason="Completed" if code == 0 else "Error", **kw)


def wait(name, **kw):
    return ContainerRuntime(name, **kw)


@pytest.mark.parametrize("policy,init,regular,terminating,want", [
    ("Always", [], [wait("a")], False, "Pending"),
    ("Always", [], [run_("a")], False, "Running"),
    ("Always", [], [run_("a"), wait("b")], False, "Pending"),
    ("Always", [], [term("a", 1)], False, "Running"),
    ("OnFailure", [], [term("a", 1)], False, "Running"),
    ("OnFailure", [], [term("a", 0)], False, "Succeeded"),
    ("Never", [], [term("a", 0), term("b", 0)], False, "Succeeded"),
    ("Never", [], [term("a", 0), term("b", 2)], False, "Failed"),
    ("Never", [], [term("a", 2), run_("b")], False, "Running"),
    ("Always", [], [wait("a", last_terminated={"exitCode": 1})], False, "Running"),
    ("Always", [run_("i", init=True)], [wait("a")], False, "Pending"),
    ("Never", [term("i", 1, init=True)], [wait("a")], False, "Failed"),
    ("OnFailure", [term("i", 1, init=True)], [wait("a")], False, "Pending"),
    ("Always", [term("i", 0, init=True)], [run_("a")], False, "Running"),
    ("Always", [], [run_("a")], True, "Running"),
    ("Always", [], [term("a", 143)], True, "Failed"),
    ("Always", [], [term("a", 0)], True, "Succeeded"),
])
def test_compute_phase(policy, init, regular, terminating, want):
    assert compute_phase({"restartPolicy": policy}, init, regular,
                         terminating=terminating) == want


def test_terminal_phase_sticks():
    assert compute_phase({}, [], [run_("a")], previous="Failed") == "Failed"


def test_container_status_shapes():
    spec = {"name": "a", "image": "python:3"}
    s = container_status(spec, run_("a", ready=True, started=True, restart_count=2,
                                    last_terminated={"exitCode": 1, "reason": "Error"}))
    assert s == {"name": "a", "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}, "ready": True,
                 "restartCount": 2, "image": "python:3", "imageID": "python:3",
                 "started": True, "containerID": "netplane://42"}
    t = container_status(spec, term("a", 3, started_at="s", finished_at="f"))
    assert t["state"] == {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "s",
                                         "finishedAt": "f"}}
    w = container_status(spec, wait("a", reason="CrashLoopBackOff", message="back-off"))
    assert w["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}
    assert "containerID" not in w and w["lastState"] == {}


def test_pod_status_ready_and_transition_times():
    p = pod()
    rt = PodRuntime(pod_ips=["10.251.0.5"], host_ip="172.30.0.3", start_time="T0",
                    sandbox_ready=True, containers=[run_("c", started=True)])
    s1 = pod_status(p, rt, now="T1", previous={"phase": "Pending"})
    conds = {c["type"]: c for c in s1["conditions"]}
    assert s1["phase"] == "Running" and s1["podIP"] == "10.251.0.5"
    assert s1["podIPs"] == [{"ip": "10.251.0.5"}] and s1["hostIPs"] == [{"ip": "172.30.0.3"}]
    assert s1["startTime"] == "T0" and s1["qosClass"] == "BestEffort"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ContainersNotReady"
    assert conds["Ready"]["message"] == "containers with unready status: [c]"
    assert conds["Initialized"]["status"] == "True" and conds["PodScheduled"]["status"] == "True"
    rt.containers[0].ready = True
    s2 = pod_status(p, rt, now="T2", previous=s1)
    conds2 = {c["type"]: c for c in s2["conditions"]}
    assert conds2["Ready"] == {"type": "Ready", "status": "True", "lastProbeTime": None,
                               "lastTransitionTime": "T2"}
    assert conds2["Initialized"]["lastTransitionTime"] == "T1"  # unchanged status keeps its time
    assert pod_status(p, rt, now="T3", previous=s2) == s2  # nothing changed: equal, no PUT


def test_pod_status_init_containers():
    p = pod(initContainers=[{"name": "i", "image": "x"}])
    rt = PodRuntime(sandbox_ready=True, init=[run_("i", init=True)],
                    containers=[wait("c", reason="PodInitializing")])
    s = pod_status(p, rt, now="T")
    conds = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Pending" and conds["Initialized"]["status"] == "False"
    assert conds["Initialized"]["message"] == "containers with incomplete status: [i]"
    assert s["initContainerStatuses"][0]["state"]["running"]
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_qos_class():
    assert qos_class({"containers": [{}]}) == "BestEffort"
    lim = {"cpu": "1", "memory": "1Gi"}
    assert qos_class({"containers": [{"resources": {"limits": lim}}]}) == "Guaranteed"
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}) == "Burstable"


def test_runtime_json_roundtrip():
    c = run_("a", restart_count=3, last_terminated={"exitCode": 1})
    assert ContainerRuntime.from_json({**c.to_json(), "unknown": 1}) == c


# ------------------------------------------------------------------------------- processes


def test_spawn_logs_and_exit_codes(tmp_path):
    from netplane.sandbox import kubelet_process as proc

    log_path = tmp_path / "pods" / "c.log"
    h = proc.spawn(["sh", "-c", "echo out; echo err >&2; exit 7"], env={"PATH": "/usr/bin:/bin"},
                   cwd=str(tmp_path), log_path=str(log_path))
    assert h.start_time == proc.proc_start_time(h.pid) or h.start_time is None
    for _ in range(200):
        if h.poll() is not None:
            break
        threading.Event().wait(0.01)
    assert h.poll() == 7 and h.exit_known
    assert sorted(log_path.read_text().split()) == ["err", "out"]
    h2 = proc.spawn(["sleep", "5"], env={"PATH": "/usr/bin:/bin"}, cwd=None,
                    log_path=str(log_path))
    assert proc.adopt(h2.pid, h2.start_time) is not None  # found through the registry
    h2.signal_group(15)
    for _ in range(200):
        if h2.poll() is not None:
            break
        threading.Event().wait(0.01)
    assert h2.poll() == 143  # 128 + SIGTERM, as container runtimes report it
    assert proc.adopt(h2.pid, h2.start_time) is None


def test_adopt_a_process_that_is_not_our_child():
    import subprocess

    from netplane.sandbox import kubelet_process as proc

    # a grandchild in its own session: after its parent exits it belongs to someone else
    out = subprocess.run(["setsid", "sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, timeout=10).stdout
    pid = int(out.strip())
    start = proc.proc_start_time(pid)
    assert start is not None
    assert proc.adopt(pid, start + 1) is None  # pid reuse guard
    h = proc.adopt(pid, start)
    assert h is not None and h.poll() is None
    proc.kill_recorded(pid, start)
    assert h.poll() == proc.ProcessHandle.UNKNOWN_EXIT and not h.exit_known


# ------------------------------------------------------------------------------- api writer


class _FakeClient:
    def __init__(self, fail_first: int = 0):
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_first = fail_first
        self.gate = threading.Event()

    def _maybe_fail(self):
        from netplane.errors import ApiUnavailableError

        if self.fail_first > 0:
            self.fail_first -= 1
            raise ApiUnavailableError("down")

    def update(self, path, body):
        self.gate.wait(5)
        self._maybe_fail()
        self.calls.append(("PUT", path, body["status"]))

    def request(self, method, path, **kw):
        self._maybe_fail()
        self.calls.append((method, path, kw.get("body")))

    def create(self, path, body):
        self._maybe_fail()
        self.calls.append(("POST", path, body))


def test_api_writer_coalesces_orders_and_retries(monkeypatch):
    from netplane.sandbox import kubelet_api

    monkeypatch.setattr(kubelet_api, "RETRY_DELAY", 0.05)
    client = _FakeClient(fail_first=1)
    w = kubelet_api.ApiWriter(client, "test")
    w.start()
    try:
        # queued while the writer is held: only the newest status of a pod goes out, and
        # before the DELETE queued after it
        w.put_status("u1", "default", "p", {"phase": "Pending"})
        w.put_status("u1", "default", "p", {"phase": "Running"})
        w.delete_pod("u1", "default", "p")
        w.create("event", "/api/v1/namespaces/default/events", {"reason": "X"})
        client.gate.set()
        assert w.flush(5)
    finally:
        w.stop()
    assert [c[0] for c in client.calls] == ["PUT", "DELETE", "POST"]
    assert client.calls[0] == ("PUT", "/api/v1/namespaces/default/pods/p/status",
                               {"phase": "Running"})
    assert client.calls[1][2]["preconditions"] == {"uid": "u1"}
