"""A sandbox cluster per test module running `netplane proxy --backend <backend>` on every node,
plus helpers to create Services/EndpointSlices/Pods with kubectl and to send real packets from a
pod, a node or an external host (tests/netns/proxy_servers.py on both ends).

Cluster: node1 (zone-a), node2 (zone-b), external hosts `client` and `sink` on the underlay.
Everything kernel-side happens inside the cluster's own namespaces (`netplane up` made them;
`netplane down` removes them at module teardown, which must leave nothing behind). Processes
signalled here are the cluster's own proxies, found by the pid file the sandbox writes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from netplane.sandbox.names import ClusterNames
from netplane.sandbox.network import leftovers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SERVERS = os.path.join(os.path.dirname(HERE), "proxy_servers.py")
PY = sys.executable
NETPLANE = os.path.join(os.path.dirname(sys.executable), "netplane")
BACKENDS = ["iptables"]  # the eBPF backend joins here when it exists

TOPOLOGY = """\
nodes:
  - {{name: node1, zone: zone-a}}
  - {{name: node2, zone: zone-b}}
hosts:
  - {{name: client, role: client}}
  - {{name: sink, role: sink}}
proxy: {backend}
"""

# Every server pod listens on the same ports, so tests can mix pods freely.
TCP_PORT, TCP_ALT_PORT, UDP_PORT = 8080, 8090, 8081


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "proxy sandbox tests need root (network namespaces)"
    for tool in ("ip", "kubectl", "iptables-save", "curl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"proxy sandbox tests need {tool}"
    return None


def eventually(check: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.3,
               what: str = "condition") -> Any:
    """Poll `check` until it returns a truthy value (returned) or raise with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def server_pod(name: str, node: str, *, labels: dict[str, str] | None = None,
               tcp_port_name: str = "web", tcp_port: int = TCP_PORT, extra_tcp: Iterable[int] = (),
               extra_udp: Iterable[int] = (), sctp: Iterable[int] = (), grace: int = 2) -> dict:
    """A pod running proxy_servers.py serve on TCP 8080 ("web") + 8090 ("alt") + UDP 8081 ("echo-udp")
    (tcp_port/tcp_port_name move the first one, for named-port tests)."""
    tcp = [tcp_port, TCP_ALT_PORT, *extra_tcp]
    udp = [UDP_PORT, *extra_udp]
    cmd = [PY, SERVERS, "serve"] + [a for p in tcp for a in ("--tcp", str(p))] + \
          [a for p in udp for a in ("--udp", str(p))] + [a for p in sctp for a in ("--sctp", str(p))]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "srv", "image": "netplane/host", "command": cmd,
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"name": tcp_port_name, "containerPort": tcp_port, "protocol": "TCP"},
                          {"name": "alt", "containerPort": TCP_ALT_PORT, "protocol": "TCP"},
                          {"name": "echo-udp", "containerPort": UDP_PORT, "protocol": "UDP"}],
                "readinessProbe": {"tcpSocket": {"port": tcp_port}, "periodSeconds": 1},
            }],
        },
    }


def client_pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"role": "client"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "netplane/host", "command": ["sleep", "infinity"]}]}}


def service(name: str, *, ports: list[dict] | None = None, selector: dict | None = None,
            **spec: Any) -> dict:
    """A Service; ports default to TCP 80→web; selector None = selector-less."""
    body: dict[str, Any] = {"ports": ports or [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}
    if selector is not None:
        body["selector"] = selector
    body.update(spec)
    meta: dict[str, Any] = {"name": name}
    if "annotations" in body:
        meta["annotations"] = body.pop("annotations")
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def endpoint_slice(name: str, service_name: str, endpoints: list[dict], ports: list[dict]) -> dict:
    """A hand-written slice (managed by the test, not the sandbox's controller)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service_name,
                                                  "endpointslice.kubernetes.io/managed-by": "netplane-tests"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def endpoint(ip: str, *, node: str | None = None, ready: bool = True, serving: bool | None = None,
             terminating: bool = False, zone: str | None = None, hints: list[str] | None = None) -> dict:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": {
        "ready": ready, "serving": ready if serving is None else serving, "terminating": terminating}}
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    if hints is not None:
        ep["hints"] = {"forZones": [{"name": z} for z in hints]}
    return ep


class Summary(dict):
    """A client summary whose repr leads with the failure counts (assertion messages get cut)."""

    def __repr__(self) -> str:
        keys = ("ok", "refused", "timeout", "errors", "endpoints", "peers", "local_ports", "elapsed")
        return "Summary(" + ", ".join(f"{k}={self.get(k)!r}" for k in keys) + ")"


@dataclass
class ProxyCluster:
    """One running sandbox with proxies; helpers drive it like a user (kubectl, exec)."""

    name: str
    backend: str
    state: dict
    names: ClusterNames = field(init=False)
    _uids: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = ClusterNames(self.name)

    # -- API -------------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", self.names.kubeconfig, *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def apply(self, *objects: dict) -> None:
        self.kubectl("apply", "-f", "-", input="\n".join(json.dumps(o) for o in objects))

    def delete(self, kind: str, *names: str, wait: bool = True) -> None:
        self.kubectl("delete", kind, *names, "--ignore-not-found", f"--wait={'true' if wait else 'false'}",
                     timeout=90)

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.kubectl("get", kind, name, "-o", "json").stdout)

    def patch_status(self, kind: str, name: str, status: dict) -> None:
        self.kubectl("patch", kind, name, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": status}))

    def run_pods(self, *pods: dict, timeout: float = 40) -> None:
        """Create pods and wait until every one is Ready."""
        self.apply(*pods)
        for pod in pods:
            name = pod["metadata"]["name"]
            eventually(lambda name=name: self._ready(name), timeout=timeout, interval=0.3,
                       what=f"pod {name} Ready")

    def run_nodeport_across_nodes(self, app: str) -> str:
        """Server pods `<app>1` on node1 and `<app>2` on node2 behind NodePort Service `<app>`,
        client pods cli1 and cli2 on the same nodes; returns the ClusterIP once every node serves it."""
        self.run_pods(
            server_pod(f"{app}1", "node1", labels={"app": app}),
            server_pod(f"{app}2", "node2", labels={"app": app}),
            client_pod("cli1", "node1"),
            client_pod("cli2", "node2"),
        )
        self.apply(service(app, selector={"app": app}, type="NodePort"))
        ip = self.cluster_ip(app)
        self.wait_everywhere(ip, 80)
        return ip

    def _ready(self, pod: str) -> bool:
        obj = self.get("pod", pod)
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            self._uids[pod] = obj["metadata"]["uid"]
            return True
        return False

    def pod_ip(self, pod: str) -> str:
        return self.get("pod", pod)["status"]["podIP"]

    def cluster_ip(self, svc: str) -> str:
        return self.get("svc", svc)["spec"]["clusterIP"]

    def node_port(self, svc: str, index: int = 0) -> int:
        return int(self.get("svc", svc)["spec"]["ports"][index]["nodePort"])

    # -- places ----------------------------------------------------------------------------------

    def node_ip(self, node: str) -> str:
        return self.state["nodes"][node]["ip"]

    def host_ip(self, host: str) -> str:
        return self.state["hosts"][host]["ip"]

    def node_ns(self, node: str) -> str:
        return self.names.node(node)

    def host_ns(self, host: str) -> str:
        return self.names.host(host)

    def pod_ns(self, pod: str) -> str:
        if pod not in self._uids:
            self._uids[pod] = self.get("pod", pod)["metadata"]["uid"]
        return self.names.pod(self._uids[pod])

    def netns_of(self, where: str) -> str:
        """`pod/NAME`, `node/NAME`, `host/NAME` or `underlay/` → its network namespace."""
        kind, _, name = where.partition("/")
        if kind == "underlay":
            return self.names.underlay
        return {"pod": self.pod_ns, "node": self.node_ns, "host": self.host_ns}[kind](name)

    def run(self, where: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command in a pod's, node's or host's namespace (`ip netns exec`, as `netplane exec`
        does, including the pod's /etc/netns files)."""
        proc = subprocess.run(["ip", "netns", "exec", self.netns_of(where), *cmd], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{where}: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, where: str, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.netns_of(where), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # -- traffic ---------------------------------------------------------------------------------

    def connect(self, where: str, ip: str, port: int, *, proto: str = "tcp", n: int = 60,
                timeout: float = 1.0) -> dict:
        """n new connections from `where` to ip:port; the JSON summary of proxy_servers.py."""
        out = self.run(where, PY, SERVERS, "connect", "--to", f"{ip}:{port}", "--proto", proto,
                       "-n", str(n), "--timeout", str(timeout), timeout=n * timeout + 30).stdout
        return Summary(json.loads(out))

    def wait_answers(self, where: str, ip: str, port: int, *, proto: str = "tcp",
                     expect: Callable[[dict], bool] | None = None, timeout: float = 15.0) -> dict:
        """Poll with a few connections until they all succeed (and `expect` holds): rules take
        up to the proxy's min sync period to appear."""
        def probe() -> dict | None:
            s = self.connect(where, ip, port, proto=proto, n=3, timeout=0.5)
            ok = s["ok"] == 3 and (expect is None or expect(s))
            return s if ok else None
        return eventually(probe, timeout=timeout, what=f"{where} -> {ip}:{port}/{proto} answers")

    def wait_everywhere(self, ip: str, port: int, *, proto: str = "tcp", nodes: Iterable[str] = ("node1", "node2"),
                        timeout: float = 15.0) -> None:
        """Wait until every node's proxy has programmed ip:port (tried from each node itself:
        nodes program their own rules, each at its own pace)."""
        for node in nodes:
            self.wait_answers(f"node/{node}", ip, port, proto=proto, timeout=timeout)

    def wait_fails(self, where: str, ip: str, port: int, *, how: str, proto: str = "tcp",
                   timeout: float = 15.0) -> dict:
        """Poll until every connection fails with `how` ("refused" or "timeout")."""
        def probe() -> dict | None:
            s = self.connect(where, ip, port, proto=proto, n=2, timeout=0.5)
            return s if s[how] == 2 else None
        return eventually(probe, timeout=timeout, what=f"{where} -> {ip}:{port}/{proto} {how}")

    def http(self, where: str, url: str, timeout: float = 2.0) -> dict:
        return json.loads(self.run(where, PY, SERVERS, "http", url, "--timeout", str(timeout)).stdout)

    # -- the proxy -------------------------------------------------------------------------------

    def iptables_save(self, node: str, table: str | None = None) -> str:
        args = ["iptables-save"] + (["-t", table] if table else [])
        return self.run(f"node/{node}", *args).stdout

    def np_rules(self, node: str, *, counters: bool = False) -> list[str]:
        """netplane's rules on a node (NP- chains and rules jumping to them), without counters."""
        text = self.iptables_save(node)
        out = []
        for line in text.splitlines():
            if line.startswith("#") or "NP-" not in line:
                continue
            out.append(line if counters else re.sub(r"\[\d+:\d+\]", "[0:0]", line))
        return out

    def metrics(self, node: str) -> str:
        res = self.http(f"node/{node}", f"http://{self.node_ip(node)}:10249/metrics")
        assert res["status"] == 200, res
        return res["body"]

    def proxy_pid(self, node: str) -> int:
        with open(os.path.join(self.names.node_dir(node), "proxy.pid")) as f:
            return int(f.read())

    def proxy_log(self, node: str) -> str:
        try:
            with open(os.path.join(self.names.node_dir(node), "proxy.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def set_proxy_args(self, node: str, args: Iterable[str]) -> None:
        path = os.path.join(self.names.node_dir(node), "proxy.args")
        with open(path, "w") as f:
            f.write("".join(f"{a}\n" for a in args))

    def restart_proxy(self, node: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the node's proxy (the sandbox supervisor starts it again); wait until the new
        process is healthy; returns its pid."""
        old = self.proxy_pid(node)
        os.kill(old, sig)
        new = eventually(lambda: (p := self.proxy_pid(node)) != old and p, timeout=timeout,
                         what=f"proxy on {node} restarted")
        self.wait_proxy_healthy(node, timeout=timeout)
        return new

    def wait_proxy_healthy(self, node: str, timeout: float = 30) -> None:
        """/healthz is 200 and this process has synced once (its last-sync gauge is set)."""
        base = f"http://{self.node_ip(node)}:"

        def synced() -> bool:
            if self.http(f"node/{node}", base + "10256/healthz", timeout=1)["status"] != 200:
                return False
            res = self.http(f"node/{node}", base + "10249/metrics", timeout=1)
            return bool(metric_value(res["body"], "kubeproxy_sync_proxy_rules_last_timestamp_seconds"))

        eventually(synced, timeout=timeout, what=f"proxy on {node} healthy and synced")


def spread(summary: dict, names: set[str], at_least: int = 10) -> None:
    """Every connection answered, by exactly `names`, each at least `at_least` times."""
    assert summary["ok"] == sum(summary["endpoints"].values()) and not summary["errors"], summary
    assert set(summary["endpoints"]) == names and min(summary["endpoints"].values()) >= at_least, summary


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one Prometheus sample (labels must match exactly those given, in any order)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if got == (labels or {}):
            return float(m.group(4))
    return None


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def cluster(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    """A fresh 2-node cluster with the proxy for this module; always `netplane down` after."""
    if reason := _unavailable():
        pytest.skip(reason)
    name = "x" + secrets.token_hex(3)
    topo = tmp_path_factory.mktemp("topo") / f"proxy-{backend}.yaml"
    topo.write_text(TOPOLOGY.format(backend=backend))
    try:
        proc = subprocess.run([NETPLANE, "up", str(topo), "--name", name, "--timeout", "90"],
                              capture_output=True, text=True, timeout=150)
        if proc.returncode != 0:
            raise AssertionError(f"netplane up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        names = ClusterNames(name)
        with open(names.state_file) as f:
            state = json.load(f)
        yield ProxyCluster(name, backend, state)
    finally:
        down = subprocess.run([NETPLANE, "down", "--name", name], capture_output=True, text=True, timeout=120)
        left = leftovers(ClusterNames(name))
        assert down.returncode == 0 and not left, f"netplane down --name {name}: {down.stderr}; left: {left}"


@pytest.fixture(scope="session")
def kit() -> Any:
    """The builders and helpers above for test modules (importlib mode: conftest is not importable)."""
    import types

    return types.SimpleNamespace(
        server_pod=server_pod, client_pod=client_pod, service=service, endpoint_slice=endpoint_slice,
        endpoint=endpoint, eventually=eventually, metric_value=metric_value, spread=spread,
        PY=PY, SERVERS=SERVERS,
        TCP_PORT=TCP_PORT, TCP_ALT_PORT=TCP_ALT_PORT, UDP_PORT=UDP_PORT,
    )
