"""kubelet-lite on a minimal node made of real namespaces (needs root).

The "node" of each test: a namespace ``nptest-…-node`` (lo up) in which the CNI plugins run
(Debian's bridge + host-local, conf and IPAM data in the test's tmp dir, subnet 10.251.x.0/24),
a cgroup ``/sys/fs/cgroup/unified/nptest-<unique>/`` for the pod processes, and an in-process
ApiServer on 127.0.0.1 that the kubelet reaches from the root namespace (a socket, nothing
changed there). Pods are ordinary Pod objects created through the client; their processes run in
namespaces ``np-<cluster>-p-<hash>`` with a cluster name unique to the test.

Teardown runs even when a test fails: the kubelet's stop(kill_pods=True), then a safety net that
kills the test cgroup (cgroup.kill), deletes any namespace and /etc/netns dir of the test cluster,
removes the cgroup, and stops the apiserver; a leak check then fails the test if anything of the
test cluster survived.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netplane.apiserver.main import ApiServer
from netplane.errors import NotFoundError
from netplane.k8s.client import Client, resource_path
from netplane.k8s.config import ClusterConfig
from netplane.sandbox.cni_runner import CniRunner
from netplane.sandbox.kubelet import Kubelet
from netplane.sandbox.kubelet_spec import pod_netns_name

PLUGIN_DIR = "/usr/lib/cni"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
DNS_IP = "10.96.0.10"
NODE_IP = "192.0.2.10"  # reported as hostIP only; the test node has no underlay


def _missing() -> list[str]:
    missing = [p for p in ("bridge", "host-local") if not os.access(f"{PLUGIN_DIR}/{p}", os.X_OK)]
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        missing.append(f"cgroup v2 at {CGROUP_ROOT}")
    for tool in ("ip", "curl", "python3"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(bool(_missing()), reason=f"missing: {_missing()}"),
]

_subnets = iter(range(10, 250))


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except NotFoundError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def ns_exec(ns: str, *cmd: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=15)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip netns exec {ns} {' '.join(cmd)}: {proc.returncode} "
                             f"{proc.stderr.strip()}")
    return proc.stdout


def root_network() -> dict[str, str]:
    """What the root namespace looks like: must be identical before and after every test."""
    return {what: subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10).stdout
            for what, args in (("links", ["-br", "link"]), ("addrs", ["-br", "addr"]),
                               ("routes", ["route", "show", "table", "all"]),
                               ("rules", ["rule"]))}


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@dataclass
class Env:
    node_ns: str
    cluster: str
    subnet: ipaddress.IPv4Network
    tmp: Path
    cgroup: Path
    ipam_dir: Path
    conf_dir: Path
    server: ApiServer
    client: Client
    cni: CniRunner
    kubelets: list[Kubelet]

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def kubelet(self, **kw: Any) -> Kubelet:
        k = Kubelet(node_name="node1", client=self.client, node_netns=self.node_ns,
                    cluster=self.cluster, cni=self.cni, cgroup_dir=str(self.cgroup),
                    dns_ip=DNS_IP, cluster_domain="cluster.local",
                    state_dir=str(self.state_dir), node_ip=NODE_IP,
                    restart_backoff=(0.5, 2.0), sandbox_backoff=(0.2, 1.0),
                    sync_interval=0.1, stop_grace=3.0, **kw)
        self.kubelets.append(k)
        k.start()
        return k

    def write_conf(self) -> None:
        conf = {"cniVersion": "1.0.0", "name": f"{self.cluster}-net", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.ipam_dir)}}]}
        (self.conf_dir / "10-kubelet-test.conflist").write_text(json.dumps(conf))

    # --- API helpers

    def create_pod(self, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                "spec": {"nodeName": "node1", "containers": containers, **spec}}
        return self.client.create(resource_path("v1", "pods", "default"), body)

    def get_pod(self, name: str) -> dict[str, Any]:
        return self.client.get(resource_path("v1", "pods", "default", name))

    def pod_exists(self, name: str) -> bool:
        try:
            self.get_pod(name)
            return True
        except NotFoundError:
            return False

    def wait_pod(self, name: str, cond: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 15.0) -> dict[str, Any]:
        return wait_for(f"pod {name} {what}",
                        lambda: (lambda p: p if cond(p) else None)(self.get_pod(name)), timeout)

    def ipam_reservations(self) -> set[str]:
        d = self.ipam_dir / f"{self.cluster}-net"
        if not d.is_dir():
            return set()
        return {f.name for f in d.iterdir()
                if f.name != "lock" and not f.name.startswith("last_reserved_ip")}

    def node_veths(self) -> list[str]:
        out = ns_exec(self.node_ns, "ip", "-br", "link", "show", "type", "veth")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def cgroup_pids(self) -> set[int]:
        return {int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()}

    def leftovers(self) -> list[str]:
        prefix = f"np-{self.cluster}-"
        found = [f"netns {n}" for n in netns_list() if n.startswith(prefix)]
        if Path("/etc/netns").is_dir():
            found += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if n.startswith(prefix)]
        if self.cgroup.exists() and self.cgroup_pids():
            found.append(f"processes {sorted(self.cgroup_pids())} in {self.cgroup}")
        pods = self.state_dir / "pods"
        if pods.is_dir() and list(pods.iterdir()):
            found.append(f"pod state {sorted(os.listdir(pods))}")
        return found


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def ready_condition(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")


def phase(pod: dict[str, Any]) -> str:
    return pod.get("status", {}).get("phase", "")


def container_pid(pod: dict[str, Any], name: str, key: str = "containerStatuses") -> int:
    cs = next(c for c in pod["status"][key] if c["name"] == name)
    return int(cs["containerID"].removeprefix("netplane://"))


def _cleanup_cluster(cluster: str, cgroup: Path) -> list[str]:
    """Remove whatever the test cluster left, by name (never raises)."""
    errors = []
    procs = cgroup / "cgroup.procs"
    if procs.exists():
        try:
            (cgroup / "cgroup.kill").write_text("1")
            deadline = time.monotonic() + 5
            while procs.read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
        except OSError as e:
            errors.append(f"killing {cgroup}: {e}")
    prefix = f"np-{cluster}-"
    for name in netns_list():
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    if Path("/etc/netns").is_dir():
        for name in os.listdir("/etc/netns"):
            if name.startswith(prefix):
                shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    if cgroup.exists():
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            errors.append(f"cannot remove {cgroup}")
    return errors


@pytest.fixture
def env(netns_factory: Callable[[str], str], tmp_path: Path) -> Iterator[Env]:
    token = secrets.token_hex(3)
    cluster = f"t{token}"  # unique: the kubelet names pod namespaces np-<cluster>-p-<hash>
    cgroup = CGROUP_ROOT / f"nptest-{token}"
    server: ApiServer | None = None
    kubelets: list[Kubelet] = []
    root_before = root_network()
    try:
        node_ns = netns_factory("node")
        cgroup.mkdir()
        conf_dir = tmp_path / "net.d"
        conf_dir.mkdir()
        ipam_dir = tmp_path / "ipam"
        cni = CniRunner(str(conf_dir), [PLUGIN_DIR], str(tmp_path / "cni-cache"),
                        exec_prefix=["ip", "netns", "exec", node_ns], timeout=20)
        server = ApiServer(listen=[("127.0.0.1", 0)]).start()
        client = Client(ClusterConfig(server=server.url))
        client.create(resource_path("v1", "nodes"), {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}})
        e = Env(node_ns, cluster, ipaddress.ip_network(f"10.251.{next(_subnets)}.0/24"),
                tmp_path, cgroup, ipam_dir, conf_dir, server, client, cni, kubelets)
        e.write_conf()
        yield e
    finally:
        errors = []
        for k in kubelets:
            try:
                k.stop(kill_pods=True)
            except Exception as exc:  # noqa: BLE001 - the safety net below still runs
                errors.append(f"kubelet stop: {exc!r}")
        leftovers = Env.leftovers(e) if "e" in locals() else []
        errors += _cleanup_cluster(cluster, cgroup)
        if server is not None:
            server.stop()
        if leftovers:
            errors.append(f"left behind by stop(kill_pods=True): {leftovers}")
        root_after = root_network()
        changed = [k for k in root_before if root_before[k] != root_after[k]]
        if changed:
            errors.append(f"the root network namespace changed: {changed}")
        if errors:
            pytest.fail("; ".join(errors))


# --------------------------------------------------------------------------------------- tests


def test_pod_runs_ready_serves_real_http(env: Env) -> None:
    k = env.kubelet()
    www = env.tmp / "www"
    www.mkdir()
    env.create_pod("web", initContainers=[{
        "name": "init", "image": "busybox",
        "command": ["sh", "-c", 'echo "$MY_NAME" > init.txt'],
        "workingDir": str(www),
        "env": [{"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    }], containers=[{
        "name": "web", "image": "python:3",
        # fails (and would restart) if the init container had not run first. Bound to the pod
        # IP, http.server's getfqdn() finds it in /etc/hosts instead of asking the cluster DNS
        # (not running in this test) and waiting for its timeouts.
        "command": ["sh", "-c", 'test -f init.txt && exec python3 -m http.server "$@"', "sh"],
        "args": ["--bind", "$(POD_IP)", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "workingDir": str(www),
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }], terminationGracePeriodSeconds=2)
    pod = env.wait_pod("web", lambda p: phase(p) == "Running" and is_ready(p), "Running+Ready")
    st = pod["status"]
    ip = st["podIP"]
    assert ipaddress.ip_address(ip) in env.subnet and st["podIPs"] == [{"ip": ip}]
    assert st["hostIP"] == NODE_IP and st["startTime"]
    web = st["containerStatuses"][0]
    assert web["ready"] and web["started"] and web["restartCount"] == 0
    assert web["image"] == "python:3" and "running" in web["state"]
    init = st["initContainerStatuses"][0]["state"]["terminated"]
    assert init["exitCode"] == 0 and init["reason"] == "Completed"
    assert init["finishedAt"] <= web["state"]["running"]["startedAt"]
    assert (www / "init.txt").read_text() == "web\n"
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"PodReadyToStartContainers": "True", "Initialized": "True",
                     "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}

    # the pod's own resolv.conf and hosts, bind-mounted by `ip netns exec`
    podns = pod_netns_name(env.cluster, pod["metadata"]["uid"])
    resolv = ns_exec(podns, "cat", "/etc/resolv.conf")
    assert resolv == (f"nameserver {DNS_IP}\n"
                      "search default.svc.cluster.local svc.cluster.local cluster.local\n"
                      "options ndots:5\n")
    assert f"{ip}\tweb\n" in ns_exec(podns, "cat", "/etc/hosts")
    assert ip in ns_exec(podns, "ip", "-4", "-br", "addr", "show", "dev", "eth0")

    # the process is in the node's cgroup and in the pod's namespace
    pid = container_pid(pod, "web")
    assert pid in env.cgroup_pids()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{podns}").st_ino

    # a second pod fetches a page from the first over the bridge: real packets
    env.create_pod("client", restartPolicy="Never", containers=[{
        "name": "curl", "image": "curl",
        "command": ["curl", "-sS", "--max-time", "5", f"http://{ip}:8080/init.txt"]}])
    client = env.wait_pod("client", lambda p: phase(p) in ("Succeeded", "Failed"), "finished")
    client_log = env.state_dir / "pods" / client["metadata"]["uid"] / "curl.log"
    assert phase(client) == "Succeeded", client_log.read_text()
    assert client_log.read_text() == "web\n"
    client_ip = client["status"]["podIP"]
    assert client_ip != ip and ipaddress.ip_address(client_ip) in env.subnet
    web_log = (env.state_dir / "pods" / pod["metadata"]["uid"] / "web.log").read_text()
    assert f'{client_ip} - - ' in web_log and "GET /init.txt" in web_log
    # a finished pod gives its network back (as the kubelet stops a finished sandbox)
    client_ns = pod_netns_name(env.cluster, client["metadata"]["uid"])
    wait_for("the finished pod's netns to go", lambda: client_ns not in netns_list())
    assert client_ip not in env.ipam_reservations() and ip in env.ipam_reservations()
    assert {"Ready": "False"}.items() <= {c["type"]: c["status"] for c in
                                          client["status"]["conditions"]}.items()
    assert len(k._workers) == 2


def test_failing_container_with_restart_never_fails(env: Env) -> None:
    env.kubelet()
    env.create_pod("fail", restartPolicy="Never", containers=[
        {"name": "bad", "image": "x", "command": ["sh", "-c", "echo oops; exit 3"]},
        {"name": "nocmd", "image": "x"}])
    pod = env.wait_pod("fail", lambda p: phase(p) == "Failed", "Failed")
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    bad = statuses["bad"]["state"]["terminated"]
    assert bad["exitCode"] == 3 and bad["reason"] == "Error" and statuses["bad"]["restartCount"] == 0
    nocmd = statuses["nocmd"]["state"]["terminated"]
    assert nocmd["reason"] == "StartError" and "command" in nocmd["message"]
    uid = pod["metadata"]["uid"]
    assert (env.state_dir / "pods" / uid / "bad.log").read_text() == "oops\n"
    wait_for("a Failed event", lambda: any(
        e["involvedObject"]["uid"] == uid and e["reason"] == "Failed"
        for e in env.client.list(resource_path("v1", "events", "default"))["items"]))


def test_graceful_delete_cleans_everything(env: Env) -> None:
    env.kubelet()
    marker = env.tmp / "term"
    env.create_pod("victim", containers=[{
        "name": "main", "image": "x",
        "command": ["sh", "-c", f'trap "echo TERM > {marker}; exit 0" TERM; '
                                 "while true; do sleep 0.1; done"]}])
    pod = env.wait_pod("victim", lambda p: phase(p) == "Running" and is_ready(p), "Ready")
    uid, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
    podns = pod_netns_name(env.cluster, uid)
    pid = container_pid(pod, "main")
    assert podns in netns_list() and Path(f"/etc/netns/{podns}/resolv.conf").exists()
    assert len(env.node_veths()) == 1 and ip in env.ipam_reservations()

    started = time.monotonic()
    env.client.delete(resource_path("v1", "pods", "default", "victim"), grace_period_seconds=5)
    wait_for("the pod to disappear", lambda: not env.pod_exists("victim"))
    assert time.monotonic() - started < 5, "SIGTERM should have ended it well before the grace"
    assert marker.read_text() == "TERM\n"
    assert not Path(f"/proc/{pid}").exists()
    assert podns not in netns_list()
    assert not Path(f"/etc/netns/{podns}").exists()
    assert env.node_veths() == []
    assert env.ipam_reservations() == set()
    assert not (env.state_dir / "pods" / uid).exists()
    assert env.cni.cached_result(uid) is None


def test_sigterm_ignored_gets_sigkill_after_grace(env: Env) -> None:
    env.kubelet()
    env.create_pod("stubborn", terminationGracePeriodSeconds=1, containers=[{
        "name": "main", "image": "x",
        "command": ["python3", "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                     "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"]}])
    pod = env.wait_pod("stubborn", lambda p: phase(p) == "Running", "Running")
    pid = container_pid(pod, "main")
    wait_for("the process to ignore SIGTERM", lambda: "up" in (
        env.state_dir / "pods" / pod["metadata"]["uid"] / "main.log").read_text())
    started = time.monotonic()
    env.client.delete(resource_path("v1", "pods", "default", "stubborn"))
    # terminating, still there while the process lives
    time.sleep(0.5)
    terminating = env.get_pod("stubborn")
    assert terminating["metadata"].get("deletionTimestamp") and Path(f"/proc/{pid}").exists()
    wait_for("the pod to disappear", lambda: not env.pod_exists("stubborn"))
    assert 1.0 <= time.monotonic() - started < 6
    assert not Path(f"/proc/{pid}").exists()


def test_probes_readiness_flips_and_liveness_restarts(env: Env) -> None:
    env.kubelet()
    www = env.tmp / "www"
    www.mkdir()
    (www / "alive").write_text("yes")
    env.create_pod("probed", containers=[{
        "name": "srv", "image": "x", "workingDir": str(www),
        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8081"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8081}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["test", "-f", "alive"]}, "periodSeconds": 1,
                          "failureThreshold": 1},
    }], terminationGracePeriodSeconds=1)
    pod = env.wait_pod("probed", lambda p: phase(p) == "Running", "Running")
    time.sleep(1.5)
    pod = env.get_pod("probed")
    assert not is_ready(pod), "404 on /ready must keep the pod unready"
    (www / "ready").write_text("ok")
    pod = env.wait_pod("probed", is_ready, "Ready")
    first_pid = container_pid(pod, "srv")
    (www / "alive").unlink()
    (www / "ready").unlink()
    pod = env.wait_pod("probed", lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1,
                       "restarted by the liveness probe")
    (www / "alive").write_text("yes")  # let the restarted one live
    pod = env.wait_pod("probed", lambda p: "running" in p["status"]["containerStatuses"][0]["state"],
                       "running again")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM from the kubelet
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert container_pid(pod, "srv") != first_pid and not Path(f"/proc/{first_pid}").exists()
    assert not is_ready(pod) and not cs["ready"]


def test_cni_failure_is_retried(env: Env) -> None:
    for f in env.conf_dir.iterdir():
        f.unlink()  # no network config yet: CNI ADD fails
    env.kubelet()
    pod = env.create_pod("late", containers=[{"name": "c", "image": "x",
                                              "command": ["sleep", "60"]}],
                         terminationGracePeriodSeconds=1)
    uid = pod["metadata"]["uid"]
    wait_for("a FailedCreatePodSandBox event", lambda: any(
        e["involvedObject"]["uid"] == uid and e["reason"] == "FailedCreatePodSandBox"
        for e in env.client.list(resource_path("v1", "events", "default"))["items"]))
    pod = env.wait_pod("late", lambda p: "containerStatuses" in p["status"], "a status")
    assert phase(pod) == "Pending" and "podIP" not in pod["status"]
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert pod_netns_name(env.cluster, uid) not in netns_list()  # the failed attempt was cleaned
    env.write_conf()
    env.wait_pod("late", lambda p: phase(p) == "Running", "Running after the retry")


def test_restart_adopts_and_cleans_orphans_then_stop_kills_all(env: Env) -> None:
    k1 = env.kubelet()
    sleeper = {"name": "c", "image": "x", "command": ["sleep", "300"]}
    env.create_pod("keep", containers=[{**sleeper, "readinessProbe": {
        "exec": {"command": ["true"]}, "periodSeconds": 1}}], terminationGracePeriodSeconds=1)
    env.create_pod("orphan", containers=[sleeper], terminationGracePeriodSeconds=1)
    env.create_pod("hostnet", hostNetwork=True, containers=[sleeper],
                   terminationGracePeriodSeconds=1)
    pods = {n: env.wait_pod(n, lambda p: phase(p) == "Running" and is_ready(p), "Ready")
            for n in ("keep", "orphan", "hostnet")}
    ready_since = ready_condition(pods["keep"])["lastTransitionTime"]
    assert pods["hostnet"]["status"]["podIP"] == NODE_IP
    hostnet_pid = container_pid(pods["hostnet"], "c")
    assert os.stat(f"/proc/{hostnet_pid}/ns/net").st_ino == \
        os.stat(f"/run/netns/{env.node_ns}").st_ino
    pids = {n: container_pid(p, "c") for n, p in pods.items()}

    k1.stop(kill_pods=False)
    env.kubelets.remove(k1)
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
    # deleted outright while no kubelet runs: the next one finds only its leftovers
    env.client.delete(resource_path("v1", "pods", "default", "orphan"), grace_period_seconds=0)
    orphan_uid = pods["orphan"]["metadata"]["uid"]

    k2 = env.kubelet()
    wait_for("the orphan's teardown",
             lambda: pod_netns_name(env.cluster, orphan_uid) not in netns_list()
             and not Path(f"/proc/{pids['orphan']}").exists()
             and not (env.state_dir / "pods" / orphan_uid).exists())
    time.sleep(0.5)
    for name in ("keep", "hostnet"):
        pod = env.get_pod(name)
        assert phase(pod) == "Running" and container_pid(pod, "c") == pids[name], "adopted"
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    # readiness carried over: no Ready flap (its transition time did not move)
    assert ready_condition(env.get_pod("keep")) == {
        "type": "Ready", "status": "True", "lastProbeTime": None,
        "lastTransitionTime": ready_since}
    assert len(env.ipam_reservations()) == 1

    k2.stop(kill_pods=True)
    env.kubelets.remove(k2)
    assert env.leftovers() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())
    assert env.node_veths() == [] and env.ipam_reservations() == set()
