"""Names of everything a sandbox cluster creates. One place, so `down` can find all of it by
name even when the daemon that made it is gone."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

RUN_ROOT = os.environ.get("NETPLANE_RUN_DIR", "/run/netplane")
CGROUP_ROOT = os.environ.get("NETPLANE_CGROUP_ROOT", "/sys/fs/cgroup/unified/netplane")
ETC_NETNS = "/etc/netns"
NETNS_DIR = "/var/run/netns"
CLUSTER_NAME = re.compile(r"^[a-z0-9]{1,8}$")
# Routes the sandbox programs in node namespaces (pod CIDRs of other nodes) carry this protocol
# number, so re-programming can find and replace exactly its own routes.
ROUTE_PROTO = 77


@dataclass(frozen=True, slots=True)
class ClusterNames:
    cluster: str

    @property
    def prefix(self) -> str:
        return f"np-{self.cluster}-"

    @property
    def underlay(self) -> str:
        return f"np-{self.cluster}-ul"

    def node(self, name: str) -> str:
        return f"np-{self.cluster}-n-{name}"

    def host(self, name: str) -> str:
        return f"np-{self.cluster}-h-{name}"

    def pod(self, uid: str) -> str:
        return f"np-{self.cluster}-p-{hashlib.sha256(uid.encode()).hexdigest()[:8]}"

    @staticmethod
    def underlay_port(name: str) -> str:
        """The underlay bridge's veth towards a node or host (≤ 15 chars: names are ≤ 12)."""
        return f"v-{name}"

    @property
    def state_dir(self) -> str:
        return os.path.join(RUN_ROOT, self.cluster)

    @property
    def cgroup_dir(self) -> str:
        return os.path.join(CGROUP_ROOT, self.cluster)

    def node_cgroup(self, node: str) -> str:
        return os.path.join(self.cgroup_dir, node)

    def node_dir(self, node: str) -> str:
        return os.path.join(self.state_dir, "nodes", node)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "state.json")

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.state_dir, "kubeconfig")

    @property
    def log_file(self) -> str:
        return os.path.join(self.state_dir, "daemon.log")
