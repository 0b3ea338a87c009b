"""A pod's sandbox (what a CRI runtime's RunPodSandbox/StopPodSandbox do for the network): the
network namespace, the CNI attachment, and the per-pod /etc files that `ip netns exec` mounts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from netplane.errors import NetplaneError
from netplane.sandbox import kubelet_process as proc
from netplane.sandbox.cni_runner import CODE_INVALID_CONFIG, result_ips
from netplane.sandbox.kubelet_spec import cni_capability_args, pod_hosts_file, pod_resolv_conf
from netplane.sandbox.names import ETC_NETNS, NETNS_DIR

log = logging.getLogger("netplane.sandbox.kubelet")


def netns_path(netns: str) -> str:
    return os.path.join(NETNS_DIR, netns)


def cni_delete(cni: Any, uid: str, path: str, what: str, attempts: int = 3) -> bool:
    """CNI DEL, retried; a DEL that cannot work (no config and nothing cached: ADD never
    happened) is not retried. True when it succeeded."""
    for attempt in range(1, attempts + 1):
        try:
            cni.delete(uid, path, "eth0")
            return True
        except (NetplaneError, OSError) as e:
            if getattr(e, "code", None) == CODE_INVALID_CONFIG and cni.cached_result(uid) is None:
                log.info("pod %s: no CNI DEL needed (%s)", what, e)
                return False
            log.warning("pod %s: CNI DEL failed (attempt %d/%d): %s", what, attempt, attempts, e)
            if attempt < attempts:
                time.sleep(0.5 * attempt)
    return False


def teardown_sandbox(cni: Any, uid: str, netns: str, what: str, *, cni_del: bool = True) -> None:
    """CNI DEL, delete the namespace and /etc/netns/<netns>. Idempotent."""
    if cni_del:
        cni_delete(cni, uid, netns_path(netns), what)
    if os.path.exists(netns_path(netns)):
        proc.run(["ip", "netns", "del", netns], check=False)
    proc.remove_tree(os.path.join(ETC_NETNS, netns))


def create_sandbox(cni: Any, pod: Mapping[str, Any], netns: str, *, dns_ip: str,
                   cluster_domain: str, host_resolv: str) -> list[str]:
    """Namespace (lo up), resolv.conf, CNI ADD, hosts; returns the pod IPs. On failure
    everything made is removed again and the error raised."""
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    uid, name = meta.get("uid", ""), meta.get("name", "")
    namespace = meta.get("namespace") or "default"
    what = f"{namespace}/{name}"
    path = netns_path(netns)
    added = False
    try:
        if os.path.exists(path):
            teardown_sandbox(cni, uid, netns, what)
        proc.run(["ip", "netns", "add", netns])
        proc.run(["ip", "-n", netns, "link", "set", "lo", "up"])
        etc = os.path.join(ETC_NETNS, netns)
        os.makedirs(etc, exist_ok=True)
        # Written in place, not renamed over: `ip netns exec` bind-mounts the files themselves.
        resolv = pod_resolv_conf(pod, dns_ip=dns_ip, cluster_domain=cluster_domain,
                                 host_resolv=host_resolv)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(resolv.render())
        capability_args, problems = cni_capability_args(pod)
        for problem in problems:
            log.warning("pod %s: %s", what, problem)
        result = cni.add(uid, path, "eth0", cni_args={
            "K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
            "K8S_POD_INFRA_CONTAINER_ID": uid, "K8S_POD_UID": uid,
        }, capability_args=capability_args or None)
        added = True  # from here on a failure needs a DEL (a failed ADD rolled itself back)
        ips = result_ips(result)
        if not ips:
            raise NetplaneError(f"CNI ADD returned no IP addresses: {result}")
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write(pod_hosts_file(pod, ips, cluster_domain))
        return ips
    except BaseException:
        try:
            teardown_sandbox(cni, uid, netns, what, cni_del=added)
        except Exception:
            log.exception("pod %s: cleaning up the failed sandbox", what)
        raise
