"""The sandbox's cluster DNS (`dns: true` in the topology): what kubeadm's CoreDNS addon is on a
real cluster, built from netplane's own pieces.

- a Corefile the daemon writes to `<state>/dns/Corefile`;
- the `kube-dns` Service in kube-system on the topology's dnsIP (ports dns 53/UDP, dns-tcp
  53/TCP, metrics 9153/TCP) and one DNS pod per node on the first two nodes
  (`kube-dns-<node>`, label k8s-app=kube-dns), each running `netplane dns` as a host process
  in its pod namespace, reaching the apiserver through the underlay kubeconfig (pod → node →
  masquerade → gateway), with CoreDNS's probes (/ready :8181, /health :8080);
- an upstream for names outside the cluster: the first topology host with `role: upstream-dns`
  runs dnsmasq on its underlay address, answering only from a hosts file (UPSTREAM_RECORDS) and
  NXDOMAIN for the rest of `example.test`. Never a real resolver: without such a host the
  Corefile has no `forward`, and names outside the cluster get REFUSED;
- with `proxy: none` nothing implements the Service, so every node gets a static DNAT of
  dnsIP:53 (UDP and TCP) to the DNS pods (nat PREROUTING and OUTPUT → chain NETPLANE-DNS, one
  pod picked at random per flow). With a proxy, the Service does that.

The objects and texts are pure functions of the topology; `start_cluster_dns` does the work.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from netplane.errors import ApiError, ConflictError, NetplaneError
from netplane.sandbox import network
from netplane.sandbox.names import ClusterNames
from netplane.sandbox.topology import Topology

log = logging.getLogger(__name__)

NAMESPACE = "kube-system"
SERVICE = "kube-dns"
LABELS = {"k8s-app": "kube-dns"}
UPSTREAM_ROLE = "upstream-dns"
MAX_DNS_PODS = 2
READY_PORT, HEALTH_PORT, METRICS_PORT = 8181, 8080, 9153
DNAT_CHAIN = "NETPLANE-DNS"
# What the upstream test server knows (TEST-NET-1 addresses: nothing real behind them).
UPSTREAM_DOMAIN = "example.test"
UPSTREAM_RECORDS: Mapping[str, str] = {
    "example.test": "192.0.2.10",
    "www.example.test": "192.0.2.11",
    "api.example.test": "192.0.2.12",
}


class ClusterDnsError(NetplaneError):
    """The cluster DNS of a sandbox could not be set up (names the pod, node or host)."""


# -- pure --------------------------------------------------------------------------------------------


def upstream_host(topology: Topology) -> tuple[str, str] | None:
    """(host name, underlay IP) of the first host with role upstream-dns, or None."""
    for host in topology.hosts:
        if host.role == UPSTREAM_ROLE:
            return host.name, topology.underlay_plan.hosts[host.name]
    return None


def dns_nodes(topology: Topology) -> list[str]:
    """Where the DNS pods run: the first MAX_DNS_PODS nodes (two replicas, as kubeadm)."""
    return list(topology.node_names[:MAX_DNS_PODS])


def corefile(topology: Topology, upstream_ip: str | None) -> str:
    """kubeadm's Corefile for this cluster (docs/dns.md). Cluster names are never cached; `pods
    insecure` as kubeadm; without an upstream, no forward/cache/loop: outside names → REFUSED."""
    zone = topology.cluster_domain
    lines = [
        ".:53 {",
        "    errors",
        "    health {",
        "        lameduck 2s",
        "    }",
        "    ready",
        f"    kubernetes {zone} in-addr.arpa ip6.arpa {{",
        "        pods insecure",
        "        fallthrough in-addr.arpa ip6.arpa",
        "        ttl 30",
        "    }",
        "    prometheus :9153",
    ]
    if upstream_ip:
        lines += [
            f"    forward . {upstream_ip} {{",
            "        max_concurrent 1000",
            "    }",
            "    cache 30 {",
            f"        disable success {zone}",
            f"        disable denial {zone}",
            "    }",
            "    loop",
        ]
    lines += ["    reload", "}"]
    return "\n".join(lines) + "\n"


def dns_command(netplane_bin: str, *, kubeconfig: str, config: str) -> list[str]:
    """Listening on the pod IP (from the POD_IP env, expanded by the kubelet) rather than 0.0.0.0
    lets the server name itself: the apex NS is then kube-dns.kube-system.svc with A glue, as
    CoreDNS answers when it finds its own address among the kube-dns endpoints."""
    return [netplane_bin, "dns", "--kubeconfig", kubeconfig, "--config", config, "--listen", "$(POD_IP):53"]


def service_manifest(topology: Topology) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                     "labels": {**LABELS, "kubernetes.io/name": "CoreDNS"}},
        "spec": {
            "clusterIP": topology.dns_ip,
            "selector": dict(LABELS),
            "ports": [
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }


def pod_manifest(node: str, command: Sequence[str], upstream_ip: str | None) -> dict[str, Any]:
    """One DNS pod pinned to `node`. dnsPolicy None: the pod's own resolv.conf names only the test
    upstream (the host's resolver must never be reachable from the sandbox). Without one it names
    127.0.0.1, where nothing listens in the pod: a lookup by the server process itself (Python's
    HTTPServer does a reverse lookup of its address when it binds) then fails at once, where the
    cluster DNS address would not answer before this very pod is up (5 s per lookup)."""
    dns_config = {"nameservers": [upstream_ip or "127.0.0.1"]}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"kube-dns-{node}", "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "nodeName": node,
            "dnsPolicy": "None",
            "dnsConfig": dns_config,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "dns",
                "image": "netplane/host",
                "command": list(command),
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/health", "port": HEALTH_PORT},
                                  "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 5},
            }],
        },
    }


def dnat_rules(dns_ip: str, pod_ips: Sequence[str]) -> str:
    """iptables-restore input (--noflush) sending dns_ip:53 to the DNS pods: a flow picks pod i
    with probability 1/(n-i), so each of n pods gets 1/n (kube-proxy's statistic chain)."""
    if not pod_ips:
        raise ValueError("no DNS pod IPs")
    out = ["*nat", f":{DNAT_CHAIN} - [0:0]", f"-A PREROUTING -d {dns_ip}/32 -j {DNAT_CHAIN}",
           f"-A OUTPUT -d {dns_ip}/32 -j {DNAT_CHAIN}"]
    for proto in ("udp", "tcp"):
        for i, ip in enumerate(pod_ips):
            left = len(pod_ips) - i
            pick = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            out.append(f"-A {DNAT_CHAIN} -p {proto} --dport 53 {pick}-j DNAT --to-destination {ip}:53")
    return "\n".join(out + ["COMMIT"]) + "\n"


def upstream_hosts_file() -> str:
    return "".join(f"{ip} {name}\n" for name, ip in UPSTREAM_RECORDS.items())


def dnsmasq_command(address: str, hosts_file: str, pid_file: str) -> list[str]:
    """dnsmasq as a tiny authoritative test server: no resolv.conf, no /etc/hosts, no config file,
    only `hosts_file`; the rest of UPSTREAM_DOMAIN is NXDOMAIN, everything else REFUSED."""
    return ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--addn-hosts={hosts_file}", f"--local=/{UPSTREAM_DOMAIN}/", f"--listen-address={address}",
            "--bind-interfaces", "--port=53", "--user=root", "--cache-size=0", f"--pid-file={pid_file}",
            "--local-ttl=10", "--log-facility=-"]


# -- side effects ---------------------------------------------------------------------------------------


class ClusterDns:
    """Brings the cluster DNS up for one sandbox (called by daemon.Cluster.up)."""

    def __init__(self, topology: Topology, names: ClusterNames, client: Any, *,
                 on_stop: Callable[[Callable[[], None]], None], pause: Callable[[float], None]):
        self.topology, self.names, self.client = topology, names, client
        self.on_stop, self.pause = on_stop, pause
        self.dir = os.path.join(names.state_dir, "dns")
        self.upstream = upstream_host(topology)
        self.pod_ips: dict[str, str] = {}

    def start(self, *, timeout: float) -> dict[str, Any]:
        """Upstream, Corefile, Service and pods; waits for the pods to be Ready, then (proxy:
        none) installs the DNAT. Returns what state.json publishes under "dns"."""
        os.makedirs(self.dir, exist_ok=True)
        upstream_ip = self.upstream[1] if self.upstream else None
        if self.upstream:
            self._start_upstream(*self.upstream)
        config = os.path.join(self.dir, "Corefile")
        _write(config, corefile(self.topology, upstream_ip))
        # The venv's console script next to this interpreter (pods run host binaries).
        netplane_bin = os.path.join(os.path.dirname(sys.executable), "netplane")
        command = dns_command(netplane_bin, kubeconfig=os.path.join(self.names.state_dir, "kubeconfig.underlay"),
                              config=config)
        self._ensure_namespace()
        self._create(f"/api/v1/namespaces/{NAMESPACE}/services", service_manifest(self.topology))
        pods = [pod_manifest(node, command, upstream_ip) for node in dns_nodes(self.topology)]
        for pod in pods:
            self._create(f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        self.pod_ips = self._wait_ready([p["metadata"]["name"] for p in pods], timeout)
        if self.topology.proxy == "none":
            rules = dnat_rules(self.topology.dns_ip, list(self.pod_ips.values()))
            for node in self.topology.node_names:
                network.run(["ip", "netns", "exec", self.names.node(node), "iptables-restore", "--noflush"],
                            input=rules)
        log.info("cluster DNS on %s: pods %s, upstream %s", self.topology.dns_ip, self.pod_ips,
                 upstream_ip or "none (outside names are REFUSED)")
        return {"ip": self.topology.dns_ip, "corefile": config, "pods": self.pod_ips,
                "upstream": {"host": self.upstream[0], "ip": upstream_ip,
                             "pid_file": os.path.join(self.dir, "upstream.pid")} if self.upstream else None}

    def _start_upstream(self, host: str, address: str) -> None:
        hosts_file = os.path.join(self.dir, "upstream.hosts")
        pid_file = os.path.join(self.dir, "upstream.pid")
        _write(hosts_file, upstream_hosts_file())
        log_path = os.path.join(self.dir, "upstream.log")
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(["ip", "netns", "exec", self.names.host(host),
                                     *dnsmasq_command(address, hosts_file, pid_file)],
                                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    start_new_session=True)
        self.on_stop(lambda: _stop(proc))
        deadline = time.monotonic() + 10
        while not os.path.exists(pid_file):  # dnsmasq writes it once it is bound
            if proc.poll() is not None:
                raise ClusterDnsError(f"upstream DNS on host {host} ({address}) exited ({proc.returncode}): "
                                      f"{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ClusterDnsError(f"upstream DNS on host {host} ({address}) did not start within 10s")
            self.pause(0.05)

    def _ensure_namespace(self) -> None:
        self._create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": NAMESPACE}})

    def _create(self, path: str, obj: dict[str, Any]) -> None:
        try:
            self.client.create(path, obj)
        except ConflictError:
            pass  # already there (a restarted daemon on the same data dir, or kube-system)

    def _wait_ready(self, pods: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            ips, pending = {}, []
            for name in pods:
                try:
                    pod = self.client.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
                except ApiError as e:
                    pending.append(f"{name} ({e})")
                    continue
                status = pod.get("status") or {}
                conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
                if conds.get("Ready") == "True" and status.get("podIP"):
                    ips[name] = status["podIP"]
                else:
                    pending.append(f"{name} ({status.get('phase', '?')})")
            if not pending:
                return ips
            if time.monotonic() > deadline:
                raise ClusterDnsError(f"DNS pods not ready after {timeout:.0f}s: {NAMESPACE}/"
                                      + f", {NAMESPACE}/".join(pending))
            self.pause(0.2)


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""
