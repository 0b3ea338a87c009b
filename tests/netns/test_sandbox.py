"""Sandbox clusters end to end, driven like a user drives them: `netplane up/exec/down` and
kubectl. Real packets between pods; nothing left behind; the root namespace untouched."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netplane.sandbox.names import ClusterNames

pytestmark = pytest.mark.netns

NETPLANE = os.path.join(os.path.dirname(sys.executable), "netplane")


def http_code(sb, pod: str, url: str) -> str:
    return sb.exec(pod, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url,
                   check=False).stdout


def test_default_cluster_end_to_end(sandbox_factory, root_netns_snapshot):
    before = root_netns_snapshot()
    sb = sandbox_factory()

    nodes = json.loads(sb.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    cidrs = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in nodes}
    assert sorted(cidrs) == ["node1", "node2"]
    assert all(c["status"] == "True" for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready")

    pods = {name: sb.wait_ready(name) for name in ("web-1", "web-2", "client")}
    for pod in pods.values():
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in ipaddress.ip_network(cidrs[pod["spec"]["nodeName"]])

    # Real packets: same node, across nodes (underlay routes), and pod -> external host.
    assert pods["client"]["spec"]["nodeName"] == pods["web-1"]["spec"]["nodeName"]
    assert http_code(sb, "client", f"http://{pods['web-1']['status']['podIP']}:8080/") == "200"
    assert http_code(sb, "client", f"http://{pods['web-2']['status']['podIP']}:8080/") == "200"
    host_ip = sb.state["hosts"]["client"]["ip"]
    assert sb.exec("client", "ping", "-c1", "-W2", host_ip, check=False).returncode == 0

    # Each pod sees its own resolv.conf (ClusterFirst) and hosts file.
    resolv = sb.exec("client", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 10.96.0.10" in resolv
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "ndots:5" in resolv
    hosts = sb.exec("web-1", "cat", "/etc/hosts").stdout
    assert f"{pods['web-1']['status']['podIP']}\tweb-1" in hosts or f"{pods['web-1']['status']['podIP']} web-1" in hosts

    # The default cluster runs netplane's proxy and DNS: the client reaches the Service by name
    # (search path → kube-dns → ClusterIP → a web pod).
    assert http_code(sb, "client", "http://web/") == "200"

    # The Service's EndpointSlice lists both web pods as ready.
    slices = json.loads(sb.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                                   "-o", "json").stdout)["items"]
    ready = {e["addresses"][0] for s in slices for e in s["endpoints"] if e["conditions"]["ready"]}
    assert ready == {pods["web-1"]["status"]["podIP"], pods["web-2"]["status"]["podIP"]}

    # A pod created with kubectl is realised; its readiness flips its EndpointSlice conditions.
    flag = f"/tmp/np-ready-{sb.name}"
    try:
        sb.kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: Pod
metadata: {{name: gated, labels: {{app: web}}}}
spec:
  nodeName: node2
  containers:
  - name: srv
    image: netplane/host
    command: [python3, -m, http.server, "8080"]
    readinessProbe:
      exec: {{command: [test, -f, {flag}]}}
      periodSeconds: 1
""")
        deadline = time.monotonic() + 30
        gated_ip = None
        while time.monotonic() < deadline and not gated_ip:
            gated_ip = sb.pod_json("gated").get("status", {}).get("podIP")
            time.sleep(0.2)
        assert gated_ip, "kubectl-created pod got no IP"

        def slice_condition(ip: str) -> bool | None:
            items = json.loads(sb.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                                          "-o", "json").stdout)["items"]
            for s in items:
                for e in s["endpoints"]:
                    if e["addresses"][0] == ip:
                        return e["conditions"]["ready"]
            return None

        def wait_condition(ip: str, want: bool) -> None:
            deadline = time.monotonic() + 20
            while slice_condition(ip) is not want:
                assert time.monotonic() < deadline, f"endpoint {ip} never became ready={want}"
                time.sleep(0.2)

        wait_condition(gated_ip, False)
        open(flag, "w").close()
        wait_condition(gated_ip, True)
        os.remove(flag)
        wait_condition(gated_ip, False)
    finally:
        if os.path.exists(flag):
            os.remove(flag)

    # Deleting a pod runs CNI DEL and leaves nothing of it behind.
    uid = sb.pod_json("gated")["metadata"]["uid"]
    netns = ClusterNames(sb.name).pod(uid)
    sb.kubectl("delete", "pod", "gated", "--timeout=60s")
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not os.path.exists(f"/etc/netns/{netns}")
    # IPAM state (whichever CNI) lives under the node's state dir, one file per reserved IP.
    # netplane's agent answers a DEL once it is recorded and releases the IP right after the veth
    # is deleted (netplane.cni.teardown): allow it a moment.
    node_dir = ClusterNames(sb.name).node_dir("node2")
    deadline = time.monotonic() + 10
    while True:
        reserved = {f for d, _, fs in os.walk(node_dir) for f in fs}
        if gated_ip not in reserved or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sb.pod_json("web-2")["status"]["podIP"] in reserved, "IPAM state not where this test looks"
    assert gated_ip not in reserved, "the deleted pod's IP is still reserved"
    assert root_netns_snapshot() == before


def test_two_sandboxes_side_by_side(sandbox_factory):
    a = sandbox_factory()
    b = sandbox_factory()
    # The same addresses live in both clusters, each in its own namespaces.
    for sb in (a, b):
        web2 = sb.wait_ready("web-2")["status"]["podIP"]
        assert http_code(sb, "client", f"http://{web2}:8080/") == "200"
    a.kubectl("delete", "pod", "web-2", "--timeout=60s")
    web2_b = b.pod_json("web-2")["status"]["podIP"]
    assert http_code(b, "client", f"http://{web2_b}:8080/") == "200"
    assert b.netplane("status", "--name", b.name).returncode == 0


def test_down_after_killed_up_removes_everything(tmp_path):
    from netplane.sandbox.names import ClusterNames

    name = "k" + os.urandom(3).hex()
    names = ClusterNames(name)
    up = subprocess.Popen([NETPLANE, "up", "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        daemon_pid = None
        while time.monotonic() < deadline:
            try:
                state = json.loads(open(names.state_file).read())
            except (OSError, ValueError):
                state = {}
            # Kill it once pods are being started: namespaces, cgroups and processes exist.
            if state.get("apiserver") and any("-p-" in ns for ns in subprocess.run(
                    ["ip", "netns", "list"], capture_output=True, text=True).stdout.split()):
                daemon_pid = state["pid"]
                break
            time.sleep(0.1)
        assert daemon_pid, "the cluster never got as far as starting pods"
        os.kill(daemon_pid, signal.SIGKILL)
        up.kill()
    finally:
        up.wait(30)
    down = subprocess.run([NETPLANE, "down", "--name", name], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    from netplane.sandbox.network import leftovers

    assert leftovers(names) == []


def test_bad_topology_is_rejected_before_anything_is_created(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - name: n1\n  - name: n1\nnetwork:\n  clusterCIDR: 10.96.0.0/12\n")
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run([NETPLANE, "up", str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"{bad}:4" in proc.stderr and "duplicate" in proc.stderr, proc.stderr
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
    assert not os.path.exists(ClusterNames("bad").state_dir)


def test_failed_up_cleans_up_after_itself(tmp_path):
    """A cluster whose pod never gets Ready: `up` gives up at its timeout, reports the pod, and
    leaves nothing behind (namespaces, cgroups, processes, files)."""
    from netplane.sandbox.network import leftovers

    topo = tmp_path / "never-ready.yaml"
    topo.write_text("""
name: fail
nodes: 1
manifests:
  - apiVersion: v1
    kind: Pod
    metadata: {name: never}
    spec:
      containers:
      - name: c
        image: netplane/host
        command: [sleep, infinity]
        readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
""")
    name = "f" + os.urandom(3).hex()
    proc = subprocess.run([NETPLANE, "up", str(topo), "--name", name, "--timeout", "20"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "never" in proc.stderr, proc.stderr
    assert leftovers(ClusterNames(name)) == []


@pytest.mark.parametrize("setting", ["proxy: ebpf"])
def test_settings_not_available_yet_are_refused(tmp_path, setting):
    topo = tmp_path / "future.yaml"
    topo.write_text(f"name: fut\nnodes: 1\n{setting}\n")
    proc = subprocess.run([NETPLANE, "up", str(topo)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert setting.split(":")[0] in proc.stderr and "not available yet" in proc.stderr, proc.stderr
    assert not os.path.exists(ClusterNames("fut").state_dir)
