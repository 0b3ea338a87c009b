"""The resource types the embedded apiserver serves: one table, read by routing, discovery,
validation, tables and storage. Adding a resource is adding a row here (plus validation rules).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # e.g. ("status",)
    # Fields the pod/status split applies to: on the main resource, changes to `status` are ignored;
    # on the status subresource, only `status` changes (as the real server's strategies do).
    has_status: bool = False
    # Extra field-selector labels this resource supports besides metadata.name/metadata.namespace.
    field_labels: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Status writes also take labels/annotations from the request (the real node status strategy
    # resets only the spec): flannel-style agents publish their VTEP through nodes/status.
    status_keeps_metadata: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def key(self) -> str:
        """Storage prefix: unique per resource across groups."""
        return f"{self.group or 'core'}/{self.plural}"


_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",), True,
                 ("status.phase",)),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), ("status",), True,
                 ("spec.unschedulable",), status_keeps_metadata=True),
    ResourceType("", "v1", "pods", "Pod", True, ("po",), ("status", "binding"), True,
                 ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                  "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                  "status.podIP", "status.nominatedNodeName"), ("all",)),
    ResourceType("", "v1", "services", "Service", True, ("svc",), ("status",), True,
                 ("spec.clusterIP", "spec.type"), ("all",)),
    ResourceType("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("", "v1", "events", "Event", True, ("ev",), (), False,
                 ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                  "involvedObject.uid", "involvedObject.apiVersion",
                  "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                  "reportingComponent", "source", "type")),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("status",), True, (),
                 ("all",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status",), True,
                 (), ("all",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    # Storage only (nothing here enforces RBAC): enough for `kubectl apply -f deploy/`.
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
                 False),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
)

VERBS = _VERBS


def by_group_version() -> dict[tuple[str, str], list[ResourceType]]:
    out: dict[tuple[str, str], list[ResourceType]] = {}
    for rt in RESOURCES:
        out.setdefault((rt.group, rt.version), []).append(rt)
    return out


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    for rt in RESOURCES:
        if rt.group == group and rt.version == version and rt.plural == plural:
            return rt
    return None


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    for rt in RESOURCES:
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None
