"""kubelet-lite: runs the pods bound to one sandbox node as processes in network namespaces.

Like the real kubelet, for processes instead of containers:

- watches the pods with `spec.nodeName=<node>` (an Informer) and hands each pod uid to its own
  worker thread (`kubelet_pod.PodWorker`), which converges the node to the pod: a network
  namespace `np-<cluster>-p-<hash8(uid)>` plumbed by the node's CNI config (CniRunner, container
  id = pod uid, ifname eth0, K8S_* CNI_ARGS), /etc/netns/<netns>/{resolv.conf,hosts}, init
  containers in order, then every container's command as a process (`ip netns exec`, the
  container's env and workingDir, its own session, the node's cgroup, output in
  <state_dir>/pods/<uid>/<container>.log), restarts per restartPolicy with crash-loop backoff,
  exec/tcpSocket/httpGet probes, and the pod status;
- graceful deletion: SIGTERM, deletionGracePeriodSeconds, SIGKILL, CNI DEL, netns and files
  removed, then DELETE with gracePeriodSeconds=0 and a uid precondition; a pod deleted outright
  gets the same teardown;
- a restarted kubelet adopts pods whose processes (state.json) still run and recreates the rest;
  state left for pods that no longer exist is torn down.

`stop(kill_pods=True)` tears down every pod it runs (the cluster `down` path);
`stop(kill_pods=False)` leaves them running for a later `start()` to adopt.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from netplane.k8s.client import Client, resource_path
from netplane.k8s.informer import Informer
from netplane.sandbox import kubelet_process as proc
from netplane.sandbox.kubelet_api import ApiWriter
from netplane.sandbox.kubelet_pod import PodWorker
from netplane.sandbox.kubelet_sandbox import teardown_sandbox
from netplane.sandbox.kubelet_spec import DEFAULT_PATH, pod_netns_name
from netplane.sandbox.kubelet_status import ContainerRuntime, rfc3339
from netplane.sandbox.names import ETC_NETNS

log = logging.getLogger(__name__)


def _slim(raw: dict[str, Any]) -> dict[str, Any]:
    """The cached pod: everything but managedFields."""
    meta = raw.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        raw = dict(raw)
        raw["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return raw


def _uid(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata")
    return meta.get("uid") or "" if isinstance(meta, dict) else ""


class Kubelet:
    def __init__(
        self,
        *,
        node_name: str,
        client: Client,
        node_netns: str,
        cluster: str,
        cni: Any,
        cgroup_dir: str,
        dns_ip: str,
        cluster_domain: str,
        state_dir: str,
        node_ip: str = "",
        restart_backoff: tuple[float, float] = (10.0, 300.0),
        sandbox_backoff: tuple[float, float] = (1.0, 30.0),
        sync_interval: float = 0.2,
        stop_grace: float = 5.0,
        base_env: Mapping[str, str] | None = None,
        events: bool = True,
    ) -> None:
        """node_netns: the node's named netns ("" = this process's); cni: a CniRunner whose
        plugins run in the node (exec_prefix); cgroup_dir: where container processes go
        ("" = none); state_dir: per-node directory (pods/<uid>/ for state.json and logs);
        node_ip: the node's underlay IP (hostIP, hostNetwork pods' podIP).
        restart_backoff: crash-loop backoff (initial, max) seconds; sandbox_backoff: retry
        backoff after a failed CNI ADD; stop_grace: SIGTERM→SIGKILL wait in stop(kill_pods);
        base_env: the "image" environment of every process (default: PATH of this process)."""
        self.node_name = node_name
        self.client = client
        self.node_netns = node_netns
        self.cluster = cluster
        self.cni = cni
        self.cgroup_dir = cgroup_dir
        self.dns_ip = dns_ip
        self.cluster_domain = cluster_domain
        self.state_dir = state_dir
        self.node_ip = node_ip
        self.restart_backoff = restart_backoff
        self.sandbox_backoff = sandbox_backoff
        self.sync_interval = sync_interval
        self.stop_grace = stop_grace
        self.base_env = dict(base_env) if base_env is not None else {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH}
        self.events = events
        self.pods_dir = os.path.join(state_dir, "pods")
        self.cgroup_procs = os.path.join(cgroup_dir, "cgroup.procs") if cgroup_dir else None
        self.stopping = threading.Event()
        self.kill_pods = True
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self.api = ApiWriter(client, f"kubelet {node_name}")
        self._informer: Informer[dict[str, Any]] | None = None
        self._housekeeper: threading.Thread | None = None

    # ------------------------------------------------------------------------------ control

    def start(self) -> None:
        os.makedirs(self.pods_dir, exist_ok=True)
        self.stopping.clear()
        self.api.start()
        informer: Informer[dict[str, Any]] = Informer(
            self.client, "/api/v1/pods", _slim,
            field_selector=f"spec.nodeName={self.node_name}",
            name=f"kubelet {self.node_name} pods",
        )
        self._informer = informer
        # Handlers of this informer only: an earlier one still winding down is not heard.
        informer.add_handler(lambda pod: self._on_update(informer, None, pod),
                             lambda old, pod: self._on_update(informer, old, pod),
                             lambda pod: self._on_delete(informer, pod))
        informer.start()
        self._housekeeper = threading.Thread(target=self._clean_orphans, daemon=True,
                                             name=f"kubelet {self.node_name} housekeeping")
        self._housekeeper.start()
        log.info("kubelet %s started (netns %s, cgroup %s)", self.node_name,
                 self.node_netns or "-", self.cgroup_dir or "-")

    def stop(self, kill_pods: bool = True) -> None:
        """Stop watching and the workers; with kill_pods, tear down every pod this kubelet runs
        (processes, CNI DEL, netns, files) without touching the pods in the apiserver."""
        self.kill_pods = kill_pods
        self.stopping.set()
        if self._informer is not None:
            # Bounded: closing a watch whose reader is blocked can take until the server next
            # writes; the informer's thread ends by itself then, and its events are ignored.
            closer = threading.Thread(target=self._informer.stop, daemon=True,
                                      name=f"kubelet {self.node_name} informer stop")
            closer.start()
            closer.join(2.0)
        if self._housekeeper is not None:
            self._housekeeper.join(30)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.wake.set()
        for w in workers:
            w.thread.join(self.stop_grace + 60.0)
            if w.thread.is_alive():
                log.warning("kubelet %s: worker for %s did not stop", self.node_name, w.key)
        self.api.stop()
        log.info("kubelet %s stopped (%s)", self.node_name,
                 "pods torn down" if kill_pods else "pods left running")

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._informer is not None and self._informer.wait_for_sync(timeout)

    def pod_worker(self, uid: str) -> PodWorker | None:
        with self._lock:
            return self._workers.get(uid)

    # ------------------------------------------------------------------------ informer side

    def _on_update(self, informer: Informer[dict[str, Any]], old: dict[str, Any] | None,
                   pod: dict[str, Any]) -> None:
        uid = _uid(pod)
        if not uid:
            return
        with self._lock:
            if self.stopping.is_set() or informer is not self._informer or uid in self._finished:
                return
            worker = self._workers.get(uid)
            if worker is None:
                worker = PodWorker(self, pod)
                self._workers[uid] = worker
                worker.thread.start()
                return
            worker.pod = pod
        worker.wake.set()

    def _on_delete(self, informer: Informer[dict[str, Any]], pod: dict[str, Any]) -> None:
        uid = _uid(pod)
        with self._lock:
            if self.stopping.is_set() or informer is not self._informer:
                return
            self._finished.discard(uid)
            worker = self._workers.get(uid)
        if worker is not None:
            worker.pod = pod
            worker.gone = True
            worker.wake.set()

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            if worker.finished and not worker.gone:
                self._finished.add(worker.uid)  # ignore its last events until DELETED

    # ------------------------------------------------------------------------------- helpers

    def host_resolv_conf(self) -> str:
        """The node's resolv.conf (for dnsPolicy Default)."""
        for path in (os.path.join(ETC_NETNS, self.node_netns, "resolv.conf") if self.node_netns
                     else "", "/etc/resolv.conf"):
            if path and os.path.exists(path):
                try:
                    with open(path) as f:
                        return f.read()
                except OSError:
                    pass
        return ""

    def record_event(self, pod: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        """A core/v1 Event about the pod (best effort)."""
        if not self.events:
            return
        meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
        ns = meta.get("namespace") or "default"
        now = rfc3339()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'pod')}.", "namespace": ns},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns,
                               "name": meta.get("name", ""), "uid": meta.get("uid", "")},
            "type": etype, "reason": reason, "message": message[:1000],
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        self.api.create(f"event {reason} for pod {ns}/{meta.get('name')}",
                        resource_path("v1", "events", ns), event)

    def _clean_orphans(self) -> None:
        """After the first list: tear down state left for pods that no longer exist."""
        informer = self._informer
        assert informer is not None
        while not self.stopping.is_set() and not informer.wait_for_sync(1.0):
            pass
        if self.stopping.is_set():
            return
        try:
            uids = set(os.listdir(self.pods_dir))
        except OSError:
            return
        known = {_uid(p) for p in informer.list()}
        for uid in sorted(uids):
            with self._lock:
                if uid in known or uid in self._workers or self.stopping.is_set():
                    continue
            try:
                self._teardown_orphan(uid)
            except Exception:
                log.exception("kubelet %s: cleaning up orphaned pod %s failed",
                              self.node_name, uid)

    def _teardown_orphan(self, uid: str) -> None:
        pod_dir = os.path.join(self.pods_dir, uid)
        state = proc.read_json(os.path.join(pod_dir, "state.json"))
        state = state if isinstance(state, dict) else {}
        log.info("kubelet %s: tearing down orphaned pod %s (%s/%s)", self.node_name, uid,
                 state.get("namespace", "?"), state.get("name", "?"))
        for c in list(state.get("init") or []) + list(state.get("containers") or []):
            try:
                rt = ContainerRuntime.from_json(c)
            except TypeError:
                continue
            if rt.state == "running":
                proc.kill_recorded(rt.pid, rt.pid_start)
        if not state.get("hostNetwork"):
            netns = state.get("netns") or pod_netns_name(self.cluster, uid)
            teardown_sandbox(self.cni, uid, netns, f"{uid} (orphaned)")
        proc.remove_tree(pod_dir)
