"""Discovery documents (/version, /api, /api/v1, /apis, /apis/G, /apis/G/V) built from the
resource table. kubectl reads these to map `kubectl get svc` to a URL; it falls back from
aggregated discovery to these legacy documents on its own."""

from __future__ import annotations

from typing import Any

from netplane import __version__
from netplane.apiserver.resources import RESOURCES, VERBS, ResourceType, by_group_version

# The Kubernetes API level the served subset follows (kubectl warns beyond ±1 minor version skew).
KUBE_MAJOR, KUBE_MINOR = "1", "32"


def version_info() -> dict[str, Any]:
    return {
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": f"v{KUBE_MAJOR}.{KUBE_MINOR}.0-netplane.{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "python",
        "compiler": "netplane",
        "platform": "linux/amd64",
    }


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(VERBS),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    out = [entry]
    for sub in rt.subresources:
        out.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["create"] if sub == "binding" else ["get", "patch", "update"]})
    return out


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    rts = by_group_version().get((group, version))
    if rts is None:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [e for rt in rts for e in _resource_entries(rt)],
    }


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str) -> dict[str, Any]:
    versions = sorted({rt.version for rt in RESOURCES if rt.group == name})
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def group_list() -> dict[str, Any]:
    names = sorted({rt.group for rt in RESOURCES if rt.group})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(n) for n in names]}


def group(name: str) -> dict[str, Any] | None:
    if not any(rt.group == name for rt in RESOURCES if rt.group):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}
