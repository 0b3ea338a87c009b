"""Pure computations of the EndpointSlice controller (upstream's, simplified): the slices and the
legacy Endpoints object a Service should have, and the writes that get there from what exists.

Inputs and outputs are API-shaped dicts. Nothing here is mutated; outputs are fresh objects.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netplane.sandbox.controllers_base import (
    HEADLESS_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    ZONE_LABEL,
    Obj,
    get_in,
    is_terminating,
    labels_of,
    name_of,
    namespace_of,
    pod_ips,
    pod_is_ready,
    pod_is_terminated,
    prune,
    selector_matches,
)

MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager's --max-endpoints-per-slice default


# --------------------------------------------------------------------------- selection


def service_is_managed(service: Obj) -> bool:
    """Services with a selector get slices from us; ExternalName and selector-less ones
    (whose endpoints a user or another controller writes) do not."""
    spec = service.get("spec") if isinstance(service.get("spec"), Mapping) else {}
    return spec.get("type") != "ExternalName" and bool(spec.get("selector"))


def _is_headless(service: Obj) -> bool:
    return get_in(service, "spec", "clusterIP") == "None"


def selected_pods(service: Obj, pods: Iterable[Obj], *, include_terminating: bool = True
                  ) -> list[Obj]:
    """Pods of the service's namespace matching its selector, with an IP, not finished."""
    if not service_is_managed(service):
        return []
    ns = namespace_of(service)
    selector = get_in(service, "spec", "selector", default={})
    out = []
    for pod in pods:
        if namespace_of(pod) != ns or not selector_matches(selector, labels_of(pod)):
            continue
        if not pod_ips(pod) or pod_is_terminated(pod):
            continue
        if is_terminating(pod) and not include_terminating:
            continue
        out.append(pod)
    return out


def _family(ip: str) -> str | None:
    try:
        return f"IPv{ipaddress.ip_address(ip).version}"
    except ValueError:
        return None


def service_address_types(service: Obj) -> list[str]:
    """upstream getAddressTypesForService: spec.ipFamilies; else the ClusterIP's family; else
    (headless, not yet defaulted) both."""
    families = [f for f in get_in(service, "spec", "ipFamilies", default=()) or ()
                if f in ("IPv4", "IPv6")]
    if families:
        return sorted(set(families))
    cluster_ip = get_in(service, "spec", "clusterIP")
    if isinstance(cluster_ip, str) and cluster_ip and cluster_ip != "None":
        return [_family(cluster_ip) or "IPv4"]
    return ["IPv4", "IPv6"]


# -------------------------------------------------------------------------------- ports


def resolve_target_port(service_port: Obj, pod: Obj) -> int | None:
    """upstream FindPort: a number as is; a name looked up in the pod's containers (and
    restartable init containers, i.e. sidecars) with the service port's protocol."""
    target = service_port.get("targetPort")
    if target in (None, 0, ""):
        target = service_port.get("port")
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if not isinstance(target, str):
        return None
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    containers = list(spec.get("containers") or ()) + [
        c for c in spec.get("initContainers") or ()
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in (container.get("ports") if isinstance(container, Mapping) else None) or ():
            if (isinstance(port, Mapping) and port.get("name") == target
                    and (port.get("protocol") or "TCP") == protocol
                    and isinstance(port.get("containerPort"), int)):
                return port["containerPort"]
    return None


def endpoint_ports(service: Obj, pod: Obj) -> list[dict[str, Any]]:
    """The slice ports for this pod: one per service port whose target the pod has."""
    out = []
    for sp in get_in(service, "spec", "ports", default=()) or ():
        if not isinstance(sp, Mapping):
            continue
        number = resolve_target_port(sp, pod)
        if number is None:
            continue  # upstream skips a port the pod does not expose
        port: dict[str, Any] = {"name": sp.get("name") or "", "port": number,
                                "protocol": sp.get("protocol") or "TCP"}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        out.append(port)
    return out


def _port_key(port: Obj) -> tuple[str, int, str, str]:
    number = port.get("port")
    return (str(port.get("name") or ""), number if isinstance(number, int) else -1,
            str(port.get("protocol") or "TCP"), str(port.get("appProtocol") or ""))


# ---------------------------------------------------------------------------- endpoints


def _hostname(service: Obj, pod: Obj) -> str:
    """upstream ShouldSetHostname: the pod's hostname when its subdomain is this service."""
    hostname = get_in(pod, "spec", "hostname", default="")
    if (hostname and get_in(pod, "spec", "subdomain") == name_of(service)
            and namespace_of(pod) == namespace_of(service)):
        return str(hostname)
    return ""


def pod_endpoint(service: Obj, pod: Obj, node: Obj | None, address_type: str
                 ) -> dict[str, Any] | None:
    """upstream podToEndpoint, or None when the pod has no IP of this family."""
    ips = [ip for ip in pod_ips(pod) if _family(ip) == address_type]
    if not ips:
        return None
    serving = pod_is_ready(pod)
    terminating = is_terminating(pod)
    # "ready" stays false while terminating (compatibility), unless the Service publishes
    # not-ready addresses; "serving" keeps the readiness so proxies can drain gracefully.
    ready = bool(get_in(service, "spec", "publishNotReadyAddresses")) or (serving and not terminating)
    ep: dict[str, Any] = {
        "addresses": ips[:1],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    }
    hostname = _hostname(service, pod)
    if hostname:
        ep["hostname"] = hostname
    ep["targetRef"] = {"kind": "Pod", "namespace": namespace_of(pod), "name": name_of(pod),
                       "uid": str(get_in(pod, "metadata", "uid", default=""))}
    node_name = get_in(pod, "spec", "nodeName")
    if node_name:
        ep["nodeName"] = node_name
    zone = labels_of(node).get(ZONE_LABEL) if node is not None else None
    if zone:
        ep["zone"] = zone
    return ep


def _ip_sort_key(ep: Obj) -> tuple[int, int, str]:
    addr = (ep.get("addresses") or [""])[0]
    try:
        ip = ipaddress.ip_address(addr)
        return (ip.version, int(ip), "")
    except ValueError:
        return (9, 0, str(addr))


def slice_labels(service: Obj) -> dict[str, str]:
    """upstream setEndpointSliceLabels: the service's labels plus ours."""
    labels = {k: v for k, v in labels_of(service).items()
              if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)}
    if _is_headless(service):
        labels[HEADLESS_LABEL] = ""
    labels[SERVICE_NAME_LABEL] = name_of(service)
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    return labels


def owner_reference(service: Obj) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "name": name_of(service),
            "uid": str(get_in(service, "metadata", "uid", default="")),
            "controller": True, "blockOwnerDeletion": True}


def _slice(service: Obj, address_type: str, ports: list[dict[str, Any]],
           endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": f"{name_of(service)}-",
            "namespace": namespace_of(service),
            "labels": slice_labels(service),
            "ownerReferences": [owner_reference(service)],
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    }


def _nodes_by_name(nodes: Mapping[str, Obj] | Iterable[Obj]) -> Mapping[str, Obj]:
    if isinstance(nodes, Mapping):
        return nodes
    return {name_of(n): n for n in nodes}


def compute_endpoint_slices(
    service: Obj,
    pods: Iterable[Obj],
    nodes: Mapping[str, Obj] | Iterable[Obj],
    *,
    max_endpoints: int = MAX_ENDPOINTS_PER_SLICE,
) -> list[dict[str, Any]]:
    """The EndpointSlices `service` should have (without names: generateName is set).

    Endpoints are grouped by (address type, resolved ports): pods whose named target ports
    resolve to different numbers land in different slices, as upstream. Each group is split
    into slices of at most `max_endpoints`, ordered by address. An address type with no
    endpoints at all gets one empty placeholder slice, as upstream. A service we do not manage
    (no selector, ExternalName) gets none.
    """
    if not service_is_managed(service):
        return []
    by_name = _nodes_by_name(nodes)
    chosen = selected_pods(service, pods)
    out: list[dict[str, Any]] = []
    for address_type in service_address_types(service):
        groups: dict[tuple[Any, ...], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for pod in chosen:
            ep = pod_endpoint(service, pod, by_name.get(get_in(pod, "spec", "nodeName", default="")),
                              address_type)
            if ep is None:
                continue
            ports = endpoint_ports(service, pod)
            key = tuple(_port_key(p) for p in ports)
            groups.setdefault(key, (ports, []))[1].append(ep)
        if not groups:
            out.append(_slice(service, address_type, [], []))
            continue
        for key in sorted(groups):
            ports, endpoints = groups[key]
            endpoints.sort(key=_ip_sort_key)
            for i in range(0, len(endpoints), max_endpoints):
                out.append(_slice(service, address_type, ports, endpoints[i:i + max_endpoints]))
    return out


# --------------------------------------------------------------------------------- plan


def _canon(value: Any) -> str:
    return json.dumps(prune(value), sort_keys=True, separators=(",", ":"))


def slice_group_key(s: Obj) -> tuple[str, tuple[str, ...]]:
    """What makes two slices interchangeable: address type and (unordered) ports."""
    return (str(s.get("addressType") or ""),
            tuple(sorted(_canon(p) for p in s.get("ports") or () if isinstance(p, Mapping))))


def endpoint_identity(ep: Obj) -> tuple[Any, ...]:
    """upstream's endpoint hash: the same pod at the same addresses is the same endpoint (its
    conditions, node or zone may change in place)."""
    ref = ep.get("targetRef") if isinstance(ep.get("targetRef"), Mapping) else {}
    return (tuple(ep.get("addresses") or ()), str(ep.get("hostname") or ""),
            str(ref.get("namespace") or ""), str(ref.get("name") or ""))


def slice_content(s: Obj) -> tuple[Any, ...]:
    """The fields we own, normalized: equal content means no write is needed."""
    meta = s.get("metadata") if isinstance(s.get("metadata"), Mapping) else {}
    endpoints = sorted(_canon(ep) for ep in s.get("endpoints") or ())
    return (s.get("addressType"), tuple(endpoints), slice_group_key(s)[1],
            _canon(meta.get("labels") or {}), _canon(meta.get("ownerReferences") or []))


def _owner_uid(s: Obj) -> str | None:
    for ref in get_in(s, "metadata", "ownerReferences", default=()) or ():
        if isinstance(ref, Mapping) and ref.get("kind") == "Service":
            return str(ref.get("uid") or "")
    return None


def _with_content(base: Obj, template: Obj, endpoints: list[Any]) -> dict[str, Any]:
    """`base` (an existing slice: name, resourceVersion, annotations kept) carrying the
    template's labels, owner, address type and ports, and `endpoints`."""
    out = copy.deepcopy(dict(base))
    meta = out.setdefault("metadata", {})
    meta["labels"] = copy.deepcopy(get_in(template, "metadata", "labels", default={}))
    meta["ownerReferences"] = copy.deepcopy(get_in(template, "metadata", "ownerReferences",
                                                   default=[]))
    out["addressType"] = template.get("addressType")
    out["ports"] = copy.deepcopy(list(template.get("ports") or ()))
    out["endpoints"] = copy.deepcopy(endpoints)
    return out


@dataclass
class _Group:
    template: Obj
    endpoints: dict[tuple[Any, ...], Obj] = field(default_factory=dict)


def plan_slices(
    desired: Sequence[Obj],
    existing: Sequence[Obj],
    *,
    max_endpoints: int = MAX_ENDPOINTS_PER_SLICE,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(create, update, delete) turning the `existing` managed slices of one Service into
    `desired` (from `compute_endpoint_slices`), with as few writes as possible:

    - an endpoint stays in the existing slice it is in (updated in place if it changed);
    - new endpoints fill existing slices with room (fullest first), then new slices;
    - slices left empty are deleted, except one placeholder where the desired state is one;
    - a create and a delete of the same address type become one update (upstream finalize);
    - slices whose content is already right are not written at all (a resync of an
      unchanged Service issues no writes; proxies watch these).

    Updates are existing objects (with name and resourceVersion) carrying the new content;
    creates are desired objects (generateName); deletes are existing objects.
    """
    groups: dict[tuple[str, tuple[str, ...]], _Group] = {}
    for d in desired:
        group = groups.setdefault(slice_group_key(d), _Group(d))
        for ep in d.get("endpoints") or ():
            group.endpoints.setdefault(endpoint_identity(ep), ep)
    owner = _owner_uid(desired[0]) if desired else None

    creates: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    by_group: dict[tuple[str, tuple[str, ...]], list[Obj]] = {}
    for s in sorted(existing, key=name_of):
        key = slice_group_key(s)
        if key in groups and (owner is None or _owner_uid(s) == owner):
            by_group.setdefault(key, []).append(s)
        else:
            deletes.append(copy.deepcopy(dict(s)))

    for key, group in groups.items():
        remaining = dict(group.endpoints)
        kept: list[tuple[Obj, list[Obj]]] = []
        for s in by_group.get(key, ()):
            eps = []
            for ep in s.get("endpoints") or ():
                ident = endpoint_identity(ep)
                if ident in remaining:  # still wanted: keep it here, with its new value
                    eps.append(remaining.pop(ident))
            kept.append((s, eps))
        leftover = list(remaining.values())
        leftover.sort(key=_ip_sort_key)
        for s, eps in sorted(kept, key=lambda e: -len(e[1])):
            room = max_endpoints - len(eps)
            if room > 0 and leftover:
                eps.extend(leftover[:room])
                del leftover[:room]
        for i in range(0, len(leftover), max_endpoints):
            creates.append(_with_content(group.template, group.template,
                                         leftover[i:i + max_endpoints]))
        placeholder = not group.endpoints
        for i, (s, eps) in enumerate(kept):
            if not eps and not (placeholder and i == 0):
                deletes.append(copy.deepcopy(dict(s)))
                continue
            new = _with_content(s, group.template, eps)
            if slice_content(new) != slice_content(s):
                updates.append(new)
        if placeholder and not kept:
            creates.append(_with_content(group.template, group.template, []))

    # Rather than create one slice and delete another of the same address type, rewrite the
    # doomed one (only our own Service's: one of a deleted namesake is for the collector).
    for doomed in list(deletes):
        if owner is None or _owner_uid(doomed) != owner:
            continue
        match = next((c for c in creates if c.get("addressType") == doomed.get("addressType")),
                     None)
        if match is None:
            continue
        creates.remove(match)
        deletes.remove(doomed)
        updates.append(_with_content(doomed, match, list(match.get("endpoints") or ())))
    return creates, updates, deletes


# ---------------------------------------------------------------------- legacy Endpoints


def compute_endpoints(service: Obj, pods: Iterable[Obj]) -> dict[str, Any] | None:
    """The legacy core/v1 Endpoints of `service` (upstream endpoints controller), or None for
    a service we do not manage. Ready pods (or all, with publishNotReadyAddresses) are
    `addresses`, others `notReadyAddresses`; terminating pods only with
    publishNotReadyAddresses. Addresses sharing the same ports share a subset (RepackSubsets).
    """
    if not service_is_managed(service):
        return None
    tolerate = bool(get_in(service, "spec", "publishNotReadyAddresses"))
    families = [f for f in get_in(service, "spec", "ipFamilies", default=()) or ()
                if f in ("IPv4", "IPv6")]
    family = families[0] if families else None
    service_ports = [p for p in get_in(service, "spec", "ports", default=()) or ()
                     if isinstance(p, Mapping)]
    # ports key -> (ports, {ip: address}, {ip: address}) for ready / not-ready addresses
    subsets: dict[tuple[Any, ...], tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]] = {}
    for pod in selected_pods(service, pods, include_terminating=tolerate):
        ips = [ip for ip in pod_ips(pod) if family is None or _family(ip) == family]
        if not ips:
            continue
        address: dict[str, Any] = {"ip": ips[0]}
        hostname = _hostname(service, pod)
        if hostname:
            address["hostname"] = hostname
        if get_in(pod, "spec", "nodeName"):
            address["nodeName"] = get_in(pod, "spec", "nodeName")
        address["targetRef"] = {"kind": "Pod", "namespace": namespace_of(pod),
                                "name": name_of(pod),
                                "uid": str(get_in(pod, "metadata", "uid", default=""))}
        # core/v1 EndpointPort omits an empty name (the slice API keeps it as "").
        ports = [{k: v for k, v in p.items() if not (k == "name" and v == "")}
                 for p in endpoint_ports(service, pod)]
        if service_ports and not ports:
            continue  # the pod exposes none of the service's ports
        key = tuple(sorted(_port_key(p) for p in ports))
        entry = subsets.setdefault(key, (sorted(ports, key=_port_key), {}, {}))
        ready = tolerate or pod_is_ready(pod)
        entry[1 if ready else 2][ips[0]] = address
    out_subsets = []
    for key in sorted(subsets):
        ports, ready_addrs, not_ready = subsets[key]
        subset: dict[str, Any] = {}
        if ready_addrs:
            subset["addresses"] = [ready_addrs[ip] for ip in sorted(ready_addrs, key=_ip_key)]
        if not_ready:
            subset["notReadyAddresses"] = [not_ready[ip] for ip in sorted(not_ready, key=_ip_key)]
        if ports:
            subset["ports"] = ports
        out_subsets.append(subset)
    labels = {k: v for k, v in labels_of(service).items() if k != HEADLESS_LABEL}
    if _is_headless(service):
        labels[HEADLESS_LABEL] = ""
    # Marks the object as ours (and tells an EndpointSlice mirroring controller to skip it).
    labels[SKIP_MIRROR_LABEL] = "true"
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name_of(service), "namespace": namespace_of(service),
                     "labels": labels},
    }
    if out_subsets:
        obj["subsets"] = out_subsets
    return obj


def _ip_key(ip: str) -> tuple[int, int, str]:
    return _ip_sort_key({"addresses": [ip]})


def endpoints_content(ep: Obj) -> tuple[str, str]:
    """The fields we own of an Endpoints object, normalized for comparison."""
    return (_canon(get_in(ep, "metadata", "labels", default={})),
            _canon(ep.get("subsets") or []))
