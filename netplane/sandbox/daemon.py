"""One sandbox cluster as one process: the network, the embedded apiserver (on 127.0.0.1 for the
host and on the underlay gateway address for the nodes), control-plane-lite controllers, and a
kubelet-lite per node. SIGTERM/SIGINT tears it all down in reverse order.

Progress is published in state.json (`phase`: creating → ready | failed → stopping), which is
what `netplane up` waits on.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from netplane import __version__, signals
from netplane.apiserver.main import ApiServer
from netplane.apiserver.resources import by_kind
from netplane.errors import ApiError, ConflictError, NetplaneError
from netplane.k8s import Client, Informer, load_kubeconfig, resource_path, write_kubeconfig
from netplane.sandbox import network
from netplane.sandbox.names import ClusterNames
from netplane.sandbox.node_proxy import HEALTHZ_PORT as PROXY_HEALTHZ_PORT
from netplane.sandbox.node_proxy import METRICS_PORT as PROXY_METRICS_PORT
from netplane.sandbox.nsutil import listening_socket_in
from netplane.sandbox.state import write_state
from netplane.sandbox.topology import Topology

log = logging.getLogger(__name__)

APISERVER_UNDERLAY_PORT = 6443
BRIDGE_CNI_BIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]


class Cluster:
    def __init__(self, topology: Topology, name: str | None = None, *, ready_timeout: float = 90.0):
        self.topology = topology
        # One budget for the whole bring-up, so the daemon reports what was not ready before
        # `netplane up` (which waits a little longer) gives up.
        self.deadline = time.monotonic() + ready_timeout
        # Set by SIGTERM/SIGINT; bring-up waits check it so a stop never waits for their timeouts.
        self.stopping = threading.Event()
        self.names = ClusterNames(name or topology.name)
        self.plan = topology.underlay_plan
        self.state: dict[str, Any] = {}
        self.apiserver: ApiServer | None = None
        self.client: Client | None = None
        # Teardown steps in the order they were set up; down() runs them in reverse.
        self._teardown: list[Callable[[], None]] = []
        self._node_informer: Informer | None = None
        self.proxies: list[SupervisedAgent] = []  # `proxy: iptables`: one per node

    # -- state ------------------------------------------------------------------------------------

    def _publish(self, phase: str, **extra: Any) -> None:
        n = self.names
        self.state.update(
            name=n.cluster, pid=os.getpid(), phase=phase, topology=self.topology.source,
            kubeconfig=n.kubeconfig, state_dir=n.state_dir, underlay=self.plan.subnet,
            apiserver_underlay=f"http://{self.plan.gateway}:{APISERVER_UNDERLAY_PORT}",
            nodes={node: {"netns": n.node(node), "ip": ip, "cgroup": n.node_cgroup(node)}
                   for node, ip in self.plan.nodes.items()},
            hosts={h: {"netns": n.host(h), "ip": ip} for h, ip in self.plan.hosts.items()},
            **extra,
        )
        write_state(n, self.state)

    # -- bring-up ---------------------------------------------------------------------------------

    def up(self) -> None:
        n, topo = self.names, self.topology
        if network.netns_list() and any(ns.startswith(n.prefix) for ns in network.netns_list()):
            raise NetplaneError(f"cluster {n.cluster!r} already has namespaces ({n.prefix}*): "
                                f"run 'netplane down --name {n.cluster}' first")
        self._publish("creating")
        log.info("building the network: underlay %s, nodes %s, hosts %s", self.plan.subnet,
                 dict(self.plan.nodes), dict(self.plan.hosts))
        network.build(n, self.plan, node_names=topo.node_names, host_names=[h.name for h in topo.hosts])
        for node in topo.node_names:
            os.makedirs(n.node_dir(node), exist_ok=True)
        self._start_apiserver()
        self._register_nodes()
        self._start_controllers()
        pod_cidrs = self._wait_pod_cidrs(timeout=30)
        if topo.cni == "netplane":
            self._start_cni_agents()
        else:
            self._write_cni_configs(pod_cidrs)
            self._start_node_routes()
        proxies = self._start_proxies()
        self._start_kubelets()
        self._wait_proxies_healthy(proxies)
        self._start_cluster_dns()
        self._apply_manifests()
        self._wait_manifest_pods_ready(timeout=max(1.0, self.deadline - time.monotonic()))
        self._publish("ready")
        log.info("cluster %s ready", n.cluster)

    def _start_apiserver(self) -> None:
        n = self.names
        data_dir = os.path.join(n.state_dir, "apiserver")
        sock = listening_socket_in(n.underlay, self.plan.gateway, APISERVER_UNDERLAY_PORT)
        self.apiserver = ApiServer(
            listen=[("127.0.0.1", 0)], sockets=[sock], data_dir=data_dir,
            service_cidr=self.topology.service_cidr,
        ).start()
        write_kubeconfig(n.kubeconfig, self.apiserver.url, name=f"netplane-{n.cluster}")
        # The nodes' view: the same server on the underlay (what agents inside nodes use).
        write_kubeconfig(os.path.join(n.state_dir, "kubeconfig.underlay"),
                         self.state.get("apiserver_underlay") or f"http://{self.plan.gateway}:{APISERVER_UNDERLAY_PORT}",
                         name=f"netplane-{n.cluster}")
        self.client = Client(load_kubeconfig(n.kubeconfig))
        self._publish("creating", apiserver=self.apiserver.url)
        log.info("apiserver on %s and %s", self.apiserver.url, self.state["apiserver_underlay"])

    def _register_nodes(self) -> None:
        assert self.client is not None
        for spec in self.topology.nodes:
            labels = {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux",
                      "kubernetes.io/arch": "amd64", **dict(spec.labels)}
            if spec.zone:
                labels["topology.kubernetes.io/zone"] = spec.zone
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": spec.name, "labels": labels}}
            try:
                self.client.create("/api/v1/nodes", node)
            except ConflictError:
                pass  # restarted on the same data dir
            self.client.patch(f"/api/v1/nodes/{spec.name}/status", {"status": self._node_status(spec.name)},
                              patch_type="merge")

    def _node_status(self, node: str) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {
            "addresses": [{"type": "InternalIP", "address": self.plan.nodes[node]},
                          {"type": "Hostname", "address": node}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "netplane kubelet-lite is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": f"v1.32.0-netplane.{__version__}", "osImage": "netplane sandbox",
                         "kernelVersion": platform.release(), "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": f"netplane://{__version__}",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }

    def _start_controllers(self) -> None:
        from netplane.sandbox.controllers import ControlPlane

        assert self.client is not None
        plane = ControlPlane(self.client, cluster_cidr=self.topology.cluster_cidr,
                             node_cidr_mask=self.topology.node_cidr_mask).start()
        self._teardown.append(plane.stop)
        if not plane.wait_for_sync(30):
            raise NetplaneError("control-plane controllers did not sync with the apiserver within 30s")

    def _wait_pod_cidrs(self, timeout: float) -> dict[str, str]:
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.client.list("/api/v1/nodes")["items"]
            cidrs = {nd["metadata"]["name"]: (nd.get("spec") or {}).get("podCIDR") for nd in nodes}
            if all(cidrs.get(name) for name in self.topology.node_names):
                return {k: v for k, v in cidrs.items() if v}
            if time.monotonic() > deadline:
                raise NetplaneError(f"nodes got no podCIDR within {timeout:.0f}s: {cidrs}")
            self._pause(0.1)

    def _write_cni_configs(self, pod_cidrs: dict[str, str]) -> None:
        """The interim default CNI (until netplane's own): the reference bridge + host-local."""
        for node in self.topology.node_names:
            conf_dir = os.path.join(self.names.node_dir(node), "net.d")
            os.makedirs(conf_dir, exist_ok=True)
            conflist = {
                "cniVersion": "1.0.0",
                "name": "netplane-bridge",
                "plugins": [
                    {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                     "hairpinMode": True, "mtu": self.topology.underlay_mtu,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidrs[node]}]],
                              "routes": [{"dst": "0.0.0.0/0"}],
                              "dataDir": os.path.join(self.names.node_dir(node), "ipam")}},
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }
            with open(os.path.join(conf_dir, "10-bridge.conflist"), "w") as f:
                json.dump(conflist, f, indent=2)
            # Pod traffic leaving the cluster is masqueraded to the node IP; pod-to-pod is not.
            rules = ("*nat\n:NETPLANE-MASQ - [0:0]\n-A POSTROUTING -j NETPLANE-MASQ\n"
                     f"-A NETPLANE-MASQ -s {pod_cidrs[node]} -d {self.topology.cluster_cidr} -j RETURN\n"
                     f"-A NETPLANE-MASQ -s {pod_cidrs[node]} -j MASQUERADE\nCOMMIT\n")
            rules += self._no_dns_rules()
            network.run(["ip", "netns", "exec", self.names.node(node), "iptables-restore", "--noflush"], input=rules)

    def _no_dns_rules(self) -> str:
        """No cluster DNS runs: refuse queries to its address at once, so resolvers in pods
        (e.g. http.server's reverse lookup at start) fail fast instead of timing out (10-20 s)."""
        if self.topology.dns:
            return ""
        dns = self.topology.dns_ip
        return ("*filter\n:NETPLANE-NODNS - [0:0]\n-A FORWARD -j NETPLANE-NODNS\n"
                f"-A NETPLANE-NODNS -d {dns} -p udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n"
                f"-A NETPLANE-NODNS -d {dns} -p tcp --dport 53 -j REJECT --reject-with tcp-reset\nCOMMIT\n")

    def _start_cni_agents(self) -> None:
        """netplane's CNI: per node the shim + a conflist in the node's CNI dirs, and `netplane
        agent` running inside the node namespace (in the node cgroup), as the DaemonSet does on kind."""
        import netplane.cni

        shim = netplane.cni.shim_path()  # the compiled shim when built, else the bash one
        agents = []
        self._teardown.append(lambda: _in_parallel([a.stop for a in agents]))
        for node in self.topology.node_names:
            node_dir = self.names.node_dir(node)
            bin_dir, conf_dir = os.path.join(node_dir, "bin"), os.path.join(node_dir, "net.d")
            os.makedirs(bin_dir, exist_ok=True)
            os.makedirs(conf_dir, exist_ok=True)
            tmp = os.path.join(bin_dir, ".netplane.tmp")  # temp file + rename, as the kind installer
            shutil.copyfile(shim, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, os.path.join(bin_dir, "netplane"))
            socket_path = os.path.join(node_dir, "agent.sock")
            conflist = {
                "cniVersion": "1.0.0",
                "name": "netplane",
                "plugins": [
                    {"type": "netplane", "socket": socket_path},
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }
            with open(os.path.join(conf_dir, "10-netplane.conflist"), "w") as f:
                json.dump(conflist, f, indent=2)
            if no_dns := self._no_dns_rules():
                network.run(["ip", "netns", "exec", self.names.node(node), "iptables-restore", "--noflush"],
                            input=no_dns)
            cmd = agent_command(node, kubeconfig=os.path.join(self.names.state_dir, "kubeconfig.underlay"),
                                socket=socket_path, state_dir=os.path.join(node_dir, "cni-state"),
                                conf_dir=conf_dir, bin_dir=bin_dir,
                                metrics_addr=f"{self.plan.nodes[node]}:9650",
                                cluster_cidr=self.topology.cluster_cidr,
                                proxy_metrics_addr=(f"{self.plan.nodes[node]}:{PROXY_METRICS_PORT}"
                                                    if self.topology.proxy == "agent" else None))
            agent = SupervisedAgent(node, ["ip", "netns", "exec", self.names.node(node), *cmd],
                                    log_path=os.path.join(node_dir, "agent.log"),
                                    cgroup=self.names.node_cgroup(node),
                                    pid_file=os.path.join(node_dir, "agent.pid"))
            agents.append(agent)
            agent.start()
        for agent in agents:
            self._wait_agent_ready(agent.node, agent.proc, timeout=30)
        self.agents = {a.node: a for a in agents}

    def _wait_agent_ready(self, node: str, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.plan.nodes[node]}:9650/readyz"
        while True:
            if proc.poll() is not None:
                raise NetplaneError(f"netplane agent on {node} exited ({proc.returncode}); see "
                                    f"{os.path.join(self.names.node_dir(node), 'agent.log')}")
            ok = subprocess.run(["ip", "netns", "exec", self.names.node(node), "curl", "-sf", "-m", "1", url],
                                capture_output=True).returncode == 0
            if ok:
                return
            if time.monotonic() > deadline:
                raise NetplaneError(f"netplane agent on {node} not ready after {timeout:.0f}s")
            self._pause(0.2)

    def _start_proxies(self) -> list[SupervisedAgent]:
        """`proxy: iptables`: a supervised `netplane proxy` per node (node_proxy.py). With
        `proxy: agent` the agents already run it: they are the processes to wait for."""
        if self.topology.proxy == "none":
            return []
        if self.topology.proxy == "agent":
            return list(self.agents.values())
        from netplane.sandbox.node_proxy import start_node_proxies

        self.proxies = start_node_proxies(self.names, backend=self.topology.proxy, node_ips=dict(self.plan.nodes),
                                          cluster_cidr=self.topology.cluster_cidr,
                                          on_stop=self._teardown.append)
        return self.proxies

    def _wait_proxies_healthy(self, proxies: list[SupervisedAgent]) -> None:
        if not proxies:
            return
        from netplane.sandbox.node_proxy import wait_proxies_healthy

        from netplane.sandbox.node_proxy import LOG_FILE

        wait_proxies_healthy(self.names, proxies, dict(self.plan.nodes),
                             timeout=max(1.0, min(30.0, self.deadline - time.monotonic())), pause=self._pause,
                             log_file="agent.log" if self.topology.proxy == "agent" else LOG_FILE)

    def _start_cluster_dns(self) -> None:
        """`dns: true`: kube-dns Service + DNS pods (+ the upstream test host), Ready before the
        topology's own pods start resolving (cluster_dns.py)."""
        if not self.topology.dns:
            return
        from netplane.sandbox.cluster_dns import ClusterDns

        dns = ClusterDns(self.topology, self.names, self.client, on_stop=self._teardown.append, pause=self._pause)
        self._publish("creating", dns=dns.start(timeout=max(1.0, self.deadline - time.monotonic())))

    def _start_node_routes(self) -> None:
        """kindnet's job: each node routes the other nodes' pod CIDRs via their underlay IPs."""
        from netplane.k8s import Node

        assert self.client is not None
        informer = Informer(self.client, "/api/v1/nodes", Node.from_dict, name="sandbox-node-routes")

        def sync(*_: Any) -> None:
            nodes = informer.list()
            for me in nodes:
                if me.name not in self.plan.nodes:
                    continue
                routes = {cidr: self.plan.nodes[other.name] for other in nodes
                          if other.name != me.name and other.name in self.plan.nodes
                          for cidr in other.pod_cidrs}
                try:
                    network.set_node_routes(self.names.node(me.name), routes)
                except NetplaneError as e:
                    log.warning("node routes on %s: %s", me.name, e)

        informer.add_handler(on_add=lambda o: sync(), on_update=lambda a, b: sync(), on_delete=lambda o: sync())
        informer.start()
        informer.wait_for_sync(10)
        sync()
        self._node_informer = informer
        self._teardown.append(informer.stop)

    def _start_kubelets(self) -> None:
        from netplane.sandbox.cni_runner import CniRunner
        from netplane.sandbox.kubelet import Kubelet

        assert self.client is not None
        kubelets: list[Any] = []
        # Registered before the loop, so kubelets started before a failure are stopped too.
        # Nodes are independent: tear their pods down at the same time (8 nodes: 7 s → 1 s).
        self._teardown.append(lambda: _in_parallel([lambda k=k: k.stop(kill_pods=True) for k in kubelets]))
        for node in self.topology.node_names:
            node_dir = self.names.node_dir(node)
            bin_dirs = [os.path.join(node_dir, "bin"), *BRIDGE_CNI_BIN_DIRS]
            cni = CniRunner(os.path.join(node_dir, "net.d"), bin_dirs,
                            os.path.join(node_dir, "cni-cache"),
                            exec_prefix=["ip", "netns", "exec", self.names.node(node)])
            kubelet = Kubelet(
                node_name=node, client=Client(load_kubeconfig(self.names.kubeconfig)),
                node_netns=self.names.node(node), cluster=self.names.cluster, cni=cni,
                cgroup_dir=self.names.node_cgroup(node), dns_ip=self.topology.dns_ip,
                cluster_domain=self.topology.cluster_domain, state_dir=node_dir,
                node_ip=self.plan.nodes[node],
            )
            kubelets.append(kubelet)
            kubelet.start()

    def _apply_manifests(self) -> None:
        assert self.client is not None
        for obj in self.topology.manifests:
            rt = by_kind(obj["apiVersion"], obj["kind"])
            if rt is None:
                raise NetplaneError(f"{self.topology.source}: manifest {obj['kind']} {obj['metadata']['name']}: "
                                    f"kind {obj['apiVersion']}/{obj['kind']} is not served by the sandbox")
            ns = (obj["metadata"].get("namespace") or "default") if rt.namespaced else None
            path = resource_path(rt.api_version, rt.plural, ns)
            try:
                self.client.create(path, obj)
            except ConflictError:
                name = obj["metadata"]["name"]
                current = self.client.get(resource_path(rt.api_version, rt.plural, ns, name))
                body = {**obj, "metadata": {**obj["metadata"],
                                            "resourceVersion": current["metadata"]["resourceVersion"]}}
                self.client.update(resource_path(rt.api_version, rt.plural, ns, name), body)

    def _wait_manifest_pods_ready(self, timeout: float) -> None:
        assert self.client is not None
        wanted = [((o["metadata"].get("namespace") or "default"), o["metadata"]["name"])
                  for o in self.topology.manifests if o.get("kind") == "Pod"]
        deadline = time.monotonic() + timeout
        while wanted:
            pending = []
            for ns, name in wanted:
                try:
                    pod = self.client.get(f"/api/v1/namespaces/{ns}/pods/{name}")
                except ApiError:
                    pending.append(f"{ns}/{name} (missing)")
                    continue
                conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
                if conds.get("Ready") != "True":
                    pending.append(f"{ns}/{name} ({(pod.get('status') or {}).get('phase', '?')})")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise NetplaneError(f"pods not ready after {timeout:.0f}s: {', '.join(pending)}")
            self._pause(0.2)

    def _pause(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise NetplaneError("stopped (SIGTERM) while the cluster was coming up")

    # -- teardown ---------------------------------------------------------------------------------

    def down(self, keep_failure_report: bool = False) -> None:
        """Undo everything up() did, in reverse; with keep_failure_report, state.json and the
        daemon log stay for `netplane up` to show (it removes them)."""
        if self.state and not keep_failure_report:
            self._publish("stopping")
        while self._teardown:
            step = self._teardown.pop()
            try:
                step()
            except Exception:  # keep tearing down whatever else there is
                log.exception("teardown step %r failed", step)
        if self.apiserver is not None:
            self.apiserver.stop()
            self.apiserver = None
        removed = network.teardown(self.names)
        log.info("removed: %s", ", ".join(removed) or "nothing")
        if keep_failure_report:
            keep = {os.path.basename(self.names.state_file), os.path.basename(self.names.log_file)}
            for entry in os.listdir(self.names.state_dir) if os.path.isdir(self.names.state_dir) else ():
                if entry not in keep:
                    path = os.path.join(self.names.state_dir, entry)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        else:
            shutil.rmtree(self.names.state_dir, ignore_errors=True)


def agent_command(node: str, *, kubeconfig: str, socket: str, state_dir: str, conf_dir: str,
                  bin_dir: str, metrics_addr: str, cluster_cidr: str,
                  proxy_metrics_addr: str | None = None) -> list[str]:
    """The `netplane agent` command line: the same flags the kind DaemonSet uses; with
    `proxy_metrics_addr` the agent also hosts the service proxy (topology `proxy: agent`), on
    kube-proxy's ports as node_proxy.py runs it."""
    cmd = [sys.executable, "-m", "netplane", "agent", "--node-name", node, "--kubeconfig", kubeconfig,
           "--socket", socket, "--state-dir", state_dir, "--cni-conf-dir", conf_dir,
           "--cni-bin-dir", bin_dir, "--metrics-addr", metrics_addr, "--cluster-cidr", cluster_cidr]
    if proxy_metrics_addr is not None:
        cmd += ["--proxy", "iptables", "--proxy-metrics-addr", proxy_metrics_addr,
                "--healthz-addr", f"0.0.0.0:{PROXY_HEALTHZ_PORT}"]
    return cmd


def _in_parallel(steps: list[Callable[[], None]]) -> None:
    """Run teardown steps concurrently; a failing one is logged and does not stop the others."""
    def guarded(step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            log.exception("teardown step %r failed", step)

    threads = [threading.Thread(target=guarded, args=(step,), daemon=True) for step in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


class SupervisedAgent:
    """A node's `netplane agent` (or `netplane proxy`), restarted with backoff when it exits, as
    the kubelet restarts a DaemonSet's pod on kind. The datapath survives the gap; the shim
    spools DELs meanwhile, and the proxy's rules stay in place.

    `cmd` may be a function: it is called before every (re)start, so a restart picks up a changed
    configuration (the proxy's per-node extra flags, see node_proxy.py). With `pid_file`, the
    current pid is written there, for tests and operators that need to signal this process."""

    def __init__(self, node: str, cmd: list[str] | Callable[[], list[str]], *, log_path: str, cgroup: str,
                 what: str = "netplane agent", pid_file: str | None = None):
        self.node, self.cmd, self.log_path, self.cgroup = node, cmd, log_path, cgroup
        self.what, self.pid_file = what, pid_file
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=f"{what.split()[-1]}-{node}", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self._started_at = time.monotonic()
        cmd = self.cmd() if callable(self.cmd) else self.cmd
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                         start_new_session=True)
        try:
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(self.proc.pid))
        except OSError as e:
            log.warning("%s on %s: cannot join cgroup %s: %s", self.what, self.node, self.cgroup, e)
        if self.pid_file:
            tmp = self.pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{self.proc.pid}\n")
            os.replace(tmp, self.pid_file)

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            assert self.proc is not None
            code = self.proc.poll()
            if code is None:
                if self._stop.wait(0.5):
                    return
                continue
            if time.monotonic() - self._started_at > 60:
                backoff = 1.0  # it ran fine for a while: this is a new failure, not a crash loop
            log.warning("%s on %s exited (%s); restarting in %.0fs", self.what, self.node, code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self.restarts += 1
            self._spawn()

    def stop(self, grace: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def run_foreground(topology: Topology, name: str | None, *, detached: bool = False,
                   ready_timeout: float = 90.0) -> int:
    """Build the cluster, serve until SIGTERM/SIGINT, tear down. `netplane up` runs this in a
    detached child (detached=True keeps a failure report for it); `up --foreground` directly."""
    cluster = Cluster(topology, name, ready_timeout=ready_timeout)
    stop = cluster.stopping
    signals.stop_on_signals(stop)
    try:
        cluster.up()
    except BaseException as e:
        log.error("cluster %s failed to come up: %s", cluster.names.cluster, e)
        if not isinstance(e, NetplaneError):
            log.exception("details")
        cluster.down(keep_failure_report=detached)
        if detached:
            cluster._publish("failed", error=str(e))
        return 1
    signals.wait(stop)
    log.info("stopping cluster %s", cluster.names.cluster)
    cluster.down()
    return 0
