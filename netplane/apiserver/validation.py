"""Validation of stored objects, kind by kind, as the real API server's 422 Invalid answers.

Input is the plain JSON dict a client sent (after the server's defaulting and, for creates,
name generation: upstream validates after both). Nothing here raises on bad input: a value of
the wrong type becomes a FieldValueTypeInvalid cause. Rules and message texts follow upstream
pkg/apis/{core,apps,discovery,networking,coordination}/validation; where netplane is stricter
the comment says so. Name/IP/label helpers live in validation_names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from netplane.apiserver.resources import ResourceType
from netplane.apiserver.validation_names import (
    Cause, Walk, child, cidr_errors, config_map_key_errors, dns1123_label_errors,
    dns1123_subdomain_errors, duplicate, forbidden, fqdn_errors, index, invalid, ip_errors,
    ip_family, is_type, label_value_errors, name_is_dns1035_label, name_is_dns_label,
    name_is_dns_subdomain, non_special_ip_errors, not_supported, parse_cidr, path_segment_errors,
    percent_errors, port_name_errors, qualified_name_errors, range_error, required,
    selector_is_empty, selector_matches, small_int, too_long, too_many, type_invalid,
    validate_annotations,
    validate_label_selector, validate_labels,
)

Rule = Callable[[Walk, dict, "dict | None", str], None]  # (walk, new, old, op)

IMMUTABLE = "field is immutable"
NONNEGATIVE = "must be greater than or equal to 0"
PROTOCOLS = ("SCTP", "TCP", "UDP")  # sorted, as upstream lists them
MAX_INT32 = 2**31 - 1


def validate_create(rt: ResourceType, obj: Any) -> list[Cause]:
    """Rules for POST. Status is not checked: upstream resets it on create for kinds that
    have one (the server should drop it too), except Node, whose status is checked."""
    return _run(rt, obj, None, "create")


def validate_update(rt: ResourceType, new: Any, old: Any) -> list[Cause]:
    """Rules for PUT/PATCH of the main resource: create rules plus immutability. Status is
    not checked: on the main resource the server keeps the stored status."""
    return _run(rt, new, old, "update")


def validate_status_update(rt: ResourceType, new: Any, old: Any) -> list[Cause]:
    """Rules for the status subresource: metadata immutability plus the status rules."""
    return _run(rt, new, old, "status")


def invalid_status(rt: ResourceType, name: str, causes: list[Cause]) -> dict:
    """The 422 Status body the real server sends for `causes` (apierrors.NewInvalid)."""
    qualified = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    texts = list(dict.fromkeys(str(c) for c in causes))  # the aggregate drops repeated texts
    agg = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details: dict[str, Any] = {"name": name, "kind": rt.kind,
                               "causes": [c.to_status_cause() for c in causes]}
    if rt.group:
        details["group"] = rt.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{qualified} "{name}" is invalid: {agg}', "reason": "Invalid",
            "details": details, "code": 422}


def _run(rt: ResourceType, obj: Any, old: Any, op: str) -> list[Cause]:
    if not isinstance(obj, dict):
        return [type_invalid("", obj, "object")]
    old_obj = old if isinstance(old, dict) else ({} if op != "create" else None)
    w = Walk()
    _metadata(w, rt, obj)
    if old_obj is not None:
        _metadata_update(w, obj, old_obj)
    rule = _RULES.get(rt.kind)
    if rule is not None:
        rule(w, obj, old_obj, op)
    return list(dict.fromkeys(w.errs))  # one cause per distinct (field, message, reason)


# --- metadata (api/validation/objectmeta.go) ---------------------------------------------------

def _rbac_name(name: str, prefix: bool) -> list[str]:
    """minimalNameRequirements: role and binding names need only be valid path segments
    (so `system:node-proxier` is fine); a generateName prefix gets the same check."""
    return path_segment_errors(name)


_NAME_RULES = {"Namespace": name_is_dns_label, "Service": name_is_dns1035_label,
               **dict.fromkeys(("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"),
                               _rbac_name)}
_STANDARD_FINALIZERS = ("kubernetes", "orphan", "foregroundDeletion")


def _metadata(w: Walk, rt: ResourceType, obj: dict) -> None:
    meta = w.obj(obj, "metadata", "metadata") or {}
    name = w.str(meta, "name", "metadata.name") or ""
    generate = w.str(meta, "generateName", "metadata.generateName") or ""
    if rt.kind == "Event":
        # core/v1 Events skip ObjectMeta validation for compatibility (ValidateEventCreate);
        # only the storage key's demands on the name apply.
        if not name and not generate:
            w.add(required("metadata.name", "name or generateName is required"))
        w.add(*[invalid("metadata.name", name, m) for m in path_segment_errors(name) if name])
        w.obj(meta, "labels", "metadata.labels")
        w.obj(meta, "annotations", "metadata.annotations")
        return
    name_rule = _NAME_RULES.get(rt.kind, name_is_dns_subdomain)
    if generate:
        w.add(*[invalid("metadata.generateName", generate, m) for m in name_rule(generate, True)])
    if name:
        w.add(*[invalid("metadata.name", name, m) for m in name_rule(name, False)])
    elif not generate:  # with generateName the server fills the name before storing
        w.add(required("metadata.name", "name or generateName is required"))
    namespace = w.str(meta, "namespace", "metadata.namespace") or ""
    if rt.namespaced and not namespace:
        w.add(required("metadata.namespace"))
    elif rt.namespaced:
        w.add(*[invalid("metadata.namespace", namespace, m)
                for m in name_is_dns_label(namespace, False)])
    elif namespace:  # upstream's BeforeCreate clears it first; a server that does not gets this
        w.add(forbidden("metadata.namespace", "not allowed on this type"))
    generation = w.int(meta, "generation", "metadata.generation")
    if generation is not None and generation < 0:
        w.add(invalid("metadata.generation", generation, NONNEGATIVE))
    w.add(*validate_labels(meta.get("labels"), "metadata.labels"))
    w.add(*validate_annotations(meta.get("annotations"), "metadata.annotations"))
    _owner_references(w, meta)
    _finalizers(w, meta, kube_names=rt.kind != "Lease")


def _owner_references(w: Walk, meta: dict) -> None:
    path = "metadata.ownerReferences"  # upstream reports these on the list, not the item
    controllers: list[str] = []
    for _, ref, p in w.items(w.arr(meta, "ownerReferences", path), path, "object"):
        api_version = w.str(ref, "apiVersion", child(p, "apiVersion")) or ""
        kind = w.str(ref, "kind", child(p, "kind")) or ""
        name = w.str(ref, "name", child(p, "name")) or ""
        uid = w.str(ref, "uid", child(p, "uid")) or ""
        parts = api_version.split("/")
        version = parts[-1] if len(parts) <= 2 else ""
        if not version:
            w.add(invalid(child(path, "apiVersion"), api_version, "version must not be empty"))
        for field, value in (("kind", kind), ("name", name), ("uid", uid)):
            if not value:
                w.add(invalid(child(path, field), value, f"{field} must not be empty"))
        if api_version == "v1" and kind == "Event":
            w.add(invalid(path, ref, "/v1, Kind=Event is disallowed from being an owner"))
        if w.bool(ref, "controller", child(p, "controller")):
            controllers.append(f"{kind}/{name}")
    if len(controllers) > 1:
        w.add(invalid(path, meta.get("ownerReferences"),
                      "Only one reference can have Controller set to true. Found \"true\" in "
                      f"references for {controllers[0]} and {controllers[1]}"))


def _finalizers(w: Walk, meta: dict, *, kube_names: bool) -> None:
    path = "metadata.finalizers"
    names = w.strings(meta, "finalizers", path)
    for i, f in enumerate(names):
        w.add(*[invalid(path, f, m) for m in qualified_name_errors(f)])
        if kube_names and "/" not in f and f not in _STANDARD_FINALIZERS:
            w.add(invalid(index(path, i), f,
                          "name is neither a standard finalizer name nor is it fully qualified"))
    if "orphan" in names and "foregroundDeletion" in names:
        w.add(invalid(path, names, "finalizer orphan and foregroundDeletion cannot be both set"))


def _metadata_update(w: Walk, obj: dict, old: dict) -> None:
    new_meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    old_meta = old.get("metadata") if isinstance(old.get("metadata"), dict) else {}
    # Upstream's BeforeUpdate copies these system fields from the stored object when the
    # request leaves them out, so only a differing non-empty value is an error here.
    system = ("uid", "creationTimestamp", "deletionTimestamp")
    for field in ("name", "namespace") + system:
        new_v, old_v = new_meta.get(field) or "", old_meta.get(field) or ""
        if field in system and not new_v:
            continue
        if new_v != old_v:
            w.add(invalid(child("metadata", field), new_v, IMMUTABLE))
    grace_new, grace_old = new_meta.get("deletionGracePeriodSeconds"), \
        old_meta.get("deletionGracePeriodSeconds")
    if grace_new is not None and grace_new != grace_old:
        w.add(invalid("metadata.deletionGracePeriodSeconds", grace_new, IMMUTABLE))
    gen_new, gen_old = new_meta.get("generation"), old_meta.get("generation")
    if is_type(gen_new, "integer") and is_type(gen_old, "integer") and gen_new < gen_old:
        w.add(invalid("metadata.generation", gen_new, "must not be decremented"))
    if old_meta.get("deletionTimestamp"):
        old_f = old_meta.get("finalizers") if isinstance(old_meta.get("finalizers"), list) else []
        new_f = new_meta.get("finalizers") if isinstance(new_meta.get("finalizers"), list) else []
        extra = sorted({f for f in new_f if isinstance(f, str)} - set(map(str, old_f)))
        if extra:
            listed = ", ".join(f'"{f}"' for f in extra)
            w.add(forbidden("metadata.finalizers", "no new finalizers can be added if the object "
                            f"is being deleted, found new finalizers []string{{{listed}}}"))


# --- shared pieces -----------------------------------------------------------------------------


def _port_num(w: Walk, value: int | None, path: str) -> None:
    if value is not None and not 1 <= value <= 65535:
        w.add(invalid(path, value, range_error(1, 65535)))


def _protocol(w: Walk, parent: dict, path: str) -> str:
    """A port's protocol; absent or "" is what the server defaults to TCP."""
    proto = w.str(parent, "protocol", path) or "TCP"
    if proto not in PROTOCOLS:
        w.add(not_supported(path, proto, PROTOCOLS))
    return proto


def _check(w: Walk, value: str | None, path: str, rule: Callable[[str], list[str]]) -> None:
    if value:
        w.add(*[invalid(path, value, m) for m in rule(value)])


def _nonnegative(w: Walk, parent: dict, names: tuple[str, ...], path: str) -> dict[str, int]:
    out = {}
    for name in names:
        value = w.int(parent, name, child(path, name))
        if value is not None and value < 0:
            w.add(invalid(child(path, name), value, NONNEGATIVE))
        out[name] = value or 0
    return out


def _ip_list(w: Walk, ips: list[str], path: str, what: str) -> None:
    """A dual-stack list (podIPs, hostIPs): valid IPs, at most one per family, no repeats."""
    for i, ip in enumerate(ips):
        w.add(*[invalid(index(path, i), ip, m) for m in ip_errors(ip)])
    if len(ips) > 1 and all(ip_family(ip) for ip in ips):
        if len(ips) > 2 or ip_family(ips[0]) == ip_family(ips[1]):
            w.add(invalid(path, [{"ip": ip} for ip in ips],
                          f"may specify no more than one {what} for each IP family"))
        seen: set[str] = set()
        for i, ip in enumerate(ips):
            if ip in seen:
                w.add(duplicate(index(path, i), {"ip": ip}))
            seen.add(ip)


def _typed(w: Walk, parent: Any, path: str, strings: tuple[str, ...] = (),
           ints: tuple[str, ...] = ()) -> None:
    """Type checks alone, for fields no rule reads: upstream's decoder refuses a wrong type in any
    field, so a value that is not a string/integer must not be stored either."""
    for name in strings:
        w.str(parent, name, child(path, name))
    for name in ints:
        w.int(parent, name, child(path, name))


_OBJECT_REF = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")


def _zeroless(value: Any) -> Any:
    """Drop zero values, which Go decodes the same as absent fields, before comparing specs."""
    if isinstance(value, dict):
        kept = {k: _zeroless(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", 0, False, [], {})}
    if isinstance(value, list):
        return [_zeroless(v) for v in value]
    return value


# --- Pod (core/validation: ValidatePodSpec, ValidatePodUpdate, ValidatePodStatusUpdate) --------

_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
_UPDATABLE_POD_FIELDS = ",".join((
    "`spec.containers[*].image`", "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`", "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously "
    "negative)"))


def _pod_spec(w: Walk, spec: dict, path: str) -> None:
    host_network = bool(w.bool(spec, "hostNetwork", child(path, "hostNetwork")))
    names: set[str] = set()
    containers = w.arr(spec, "containers", child(path, "containers"))
    if not containers:
        w.add(required(child(path, "containers")))
    for field in ("initContainers", "containers"):
        fpath = child(path, field)
        for _, c, cp in w.items(w.arr(spec, field, fpath), fpath, "object"):
            _container(w, c, cp, names, host_network)
    policy = w.str(spec, "restartPolicy", child(path, "restartPolicy")) or "Always"
    if policy not in _RESTART_POLICIES:
        w.add(not_supported(child(path, "restartPolicy"), policy, _RESTART_POLICIES))
    dns = w.str(spec, "dnsPolicy", child(path, "dnsPolicy")) or "ClusterFirst"
    if dns not in _DNS_POLICIES:
        w.add(not_supported(child(path, "dnsPolicy"), dns, _DNS_POLICIES))
    _check(w, w.str(spec, "nodeName", child(path, "nodeName")), child(path, "nodeName"),
           dns1123_subdomain_errors)
    for field in ("hostname", "subdomain"):
        _check(w, w.str(spec, field, child(path, field)), child(path, field),
               dns1123_label_errors)
    deadline = w.int(spec, "activeDeadlineSeconds", child(path, "activeDeadlineSeconds"))
    if deadline is not None and not 1 <= deadline <= MAX_INT32:
        w.add(invalid(child(path, "activeDeadlineSeconds"), deadline, range_error(1, MAX_INT32)))
    w.int(spec, "terminationGracePeriodSeconds", child(path, "terminationGracePeriodSeconds"))
    tol_path = child(path, "tolerations")
    for _, tol, tp in w.items(w.arr(spec, "tolerations", tol_path), tol_path, "object"):
        _typed(w, tol, tp, ("key", "operator", "value", "effect"), ("tolerationSeconds",))
    w.add(*validate_labels(w.obj(spec, "nodeSelector", child(path, "nodeSelector")),
                           child(path, "nodeSelector")))


def _container(w: Walk, c: dict, path: str, names: set[str], host_network: bool) -> None:
    name = w.str(c, "name", child(path, "name"))
    if not name:
        w.add(required(child(path, "name")))
    else:
        w.add(*[invalid(child(path, "name"), name, m) for m in dns1123_label_errors(name)])
        if name in names:
            w.add(duplicate(child(path, "name"), name))
        names.add(name)
    if not w.str(c, "image", child(path, "image")):
        w.add(required(child(path, "image")))
    env_path = child(path, "env")
    for _, env, ep in w.items(w.arr(c, "env", env_path), env_path, "object"):
        if not w.str(env, "name", child(ep, "name")):
            w.add(required(child(ep, "name")))
        w.str(env, "value", child(ep, "value"))
        w.obj(env, "valueFrom", child(ep, "valueFrom"))
    port_names: set[str] = set()
    ports_path = child(path, "ports")
    for _, port, pp in w.items(w.arr(c, "ports", ports_path), ports_path, "object"):
        pname = w.str(port, "name", child(pp, "name"))
        if pname:
            if msgs := port_name_errors(pname):
                w.add(*[invalid(child(pp, "name"), pname, m) for m in msgs])
            elif pname in port_names:
                w.add(duplicate(child(pp, "name"), pname))
            port_names.add(pname)
        container_port = w.int(port, "containerPort", child(pp, "containerPort"))
        if not container_port:
            w.add(required(child(pp, "containerPort")))
        _port_num(w, container_port, child(pp, "containerPort"))
        host_port = w.int(port, "hostPort", child(pp, "hostPort"))
        _port_num(w, host_port or None, child(pp, "hostPort"))
        _protocol(w, port, child(pp, "protocol"))
        w.str(port, "hostIP", child(pp, "hostIP"))
        # The server defaults hostPort to containerPort under hostNetwork; a different one can't be.
        if host_network and host_port and container_port and host_port != container_port:
            w.add(invalid(child(pp, "containerPort"), container_port,
                          "must match `hostPort` when `hostNetwork` is true"))


def _pod(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    spec = w.obj(obj, "spec", "spec") or {}
    if op == "status":
        _pod_status(w, obj, old or {})
        return
    _pod_spec(w, spec, "spec")
    if op == "create":
        if w.arr(spec, "ephemeralContainers", "spec.ephemeralContainers"):
            w.add(forbidden("spec.ephemeralContainers", "cannot be set on create"))
        if spec.get("nodeName") and w.arr(spec, "schedulingGates", "spec.schedulingGates"):
            w.add(forbidden("spec.nodeName",
                            "cannot be set until all schedulingGates have been cleared"))
        return
    old_spec = (old or {}).get("spec") if isinstance((old or {}).get("spec"), dict) else {}
    _pod_spec_update(w, spec, old_spec)


def _pod_spec_update(w: Walk, spec: dict, old: dict) -> None:
    munged = copy.deepcopy(spec)
    for field in ("containers", "initContainers"):
        new_cs, old_cs = spec.get(field) or [], old.get(field) or []
        if not isinstance(new_cs, list) or not isinstance(old_cs, list):
            return  # already a type error
        if len(new_cs) != len(old_cs):
            w.add(forbidden(f"spec.{field}", "pod updates may not add or remove containers"))
            return
        for i, (c, o) in enumerate(zip(new_cs, old_cs)):
            image = c.get("image") if isinstance(c, dict) else None
            if isinstance(image, str) and image.strip() != image:
                w.add(invalid(f"spec.{field}[{i}].image", image,
                              "must not have leading or trailing whitespace"))
            if isinstance(c, dict) and isinstance(o, dict):
                munged[field][i]["image"] = o.get("image")
    new_deadline, old_deadline = spec.get("activeDeadlineSeconds"), old.get("activeDeadlineSeconds")
    if is_type(new_deadline, "integer"):
        if is_type(old_deadline, "integer") and old_deadline < new_deadline:
            w.add(invalid("spec.activeDeadlineSeconds", new_deadline,
                          "must be less than or equal to previous value"))
    elif new_deadline is None and old_deadline is not None:
        w.add(invalid("spec.activeDeadlineSeconds", None,
                      "must not update from a positive integer to nil value"))
    munged["activeDeadlineSeconds"] = old_deadline
    _only_added_tolerations(w, spec.get("tolerations"), old.get("tolerations"))
    munged["tolerations"] = old.get("tolerations")
    gates, old_gates = spec.get("schedulingGates"), old.get("schedulingGates")
    if isinstance(gates, list):
        old_names = [g.get("name") for g in old_gates or [] if isinstance(g, dict)]
        for g in gates:
            if isinstance(g, dict) and g.get("name") not in old_names:
                w.add(forbidden("spec.schedulingGates", "only deletion is allowed, but found new "
                                f"scheduling gate '{g.get('name')}'"))
    munged["schedulingGates"] = old_gates
    grace_old = old.get("terminationGracePeriodSeconds")
    if is_type(grace_old, "integer") and grace_old < 0 and \
            munged.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = grace_old
    a, b = _zeroless(munged), _zeroless(old)
    if a != b:
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        w.add(forbidden("spec", f"pod updates may not change fields other than "
                        f"{_UPDATABLE_POD_FIELDS}\nchanged: "
                        + ", ".join(f"spec.{k}" for k in changed)))


def _only_added_tolerations(w: Walk, new: Any, old: Any) -> None:
    """Every existing toleration must still be there; only its tolerationSeconds may change."""
    def key(t: Any) -> Any:
        return _zeroless({k: v for k, v in t.items() if k != "tolerationSeconds"}) \
            if isinstance(t, dict) else t
    new_keys = [key(t) for t in new] if isinstance(new, list) else []
    if isinstance(old, list) and any(key(t) not in new_keys for t in old):
        w.add(forbidden("spec.tolerations",
                        "existing toleration can not be modified except its tolerationSeconds"))


def _pod_status(w: Walk, obj: dict, old: dict) -> None:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    old_spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
    if (spec.get("nodeName") or "") != (old_spec.get("nodeName") or ""):
        w.add(forbidden("status.nodeName", "may not be changed directly"))
    status = w.obj(obj, "status", "status") or {}
    old_status = old.get("status") if isinstance(old.get("status"), dict) else {}
    nominated = w.str(status, "nominatedNodeName", "status.nominatedNodeName")
    if nominated and nominated != old_status.get("nominatedNodeName"):
        _check(w, nominated, "status.nominatedNodeName", dns1123_subdomain_errors)
    for single, plural in (("podIP", "podIPs"), ("hostIP", "hostIPs")):
        one = w.str(status, single, f"status.{single}") or ""
        entries = list(w.items(w.arr(status, plural, f"status.{plural}"), f"status.{plural}",
                               "object"))
        ips = [w.str(e, "ip", child(p, "ip")) or "" for _, e, p in entries]
        if ips and ips[0] != one:
            # netplane stores v1 JSON as sent, so both fields must agree (upstream converts
            # podIPs to the one internal field and checks hostIPs[0] == hostIP the same way).
            w.add(invalid(f"status.{plural}[0].ip", ips[0], f"must be equal to `{single}`"))
        elif one and not ips:
            w.add(*[invalid(f"status.{single}", one, m) for m in ip_errors(one)])
        _ip_list(w, ips, f"status.{plural}", "IP")


# --- Service (ValidateService, ValidateServiceUpdate, ValidateServiceStatusUpdate) -------------

_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
_IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
_TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameNode", "PreferSameZone")


def service_cluster_ips(spec: Any, old_spec: Any = None) -> tuple[str, list[str]]:
    """clusterIP and clusterIPs as the server's strategy reconciles them before validating
    (normalizeClusterIPs), for old clients that set only the singular field. Validation judges
    this pair, so the server should store it too."""
    spec = spec if isinstance(spec, dict) else {}
    ip = spec.get("clusterIP") if isinstance(spec.get("clusterIP"), str) else ""
    ips = spec.get("clusterIPs") if isinstance(spec.get("clusterIPs"), list) else []
    ips = [v for v in ips if isinstance(v, str)]
    if not isinstance(old_spec, dict):
        return ip, ips or ([ip] if ip else [])
    old_ip = old_spec.get("clusterIP") or ""
    old_ips = old_spec.get("clusterIPs") if isinstance(old_spec.get("clusterIPs"), list) else []
    if old_ips and not ips and old_ip == ip:
        ips = list(old_ips)  # a client that patched other fields and dropped clusterIPs
    if old_ip != ip and ips == old_ips:
        ips = [ip] if ip else []
    return ip, ips


def prepare_service_update(new: Any, old: Any) -> Any:
    """A copy of `new` as upstream's Service update path changes it before validating:
    allocated values the request left out are carried over (patchAllocatedValues), and values a
    type change leaves behind, unchanged from `old`, are dropped (dropTypeDependentFields), so
    that `kubectl replace` without clusterIP, or NodePort -> ClusterIP, is not a 422."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    out = copy.deepcopy(new)
    spec, old_spec = out.get("spec"), old.get("spec")
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return out
    typ, old_typ = spec.get("type") or "ClusterIP", old_spec.get("type") or "ClusterIP"
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)] \
        if isinstance(spec.get("ports"), list) else []
    old_ports = [p for p in old_spec.get("ports") or [] if isinstance(p, dict)] \
        if isinstance(old_spec.get("ports"), list) else []

    def node_ports(s: dict) -> bool:
        return s.get("type") == "NodePort" or (s.get("type") == "LoadBalancer"
                                                and s.get("allocateLoadBalancerNodePorts") in
                                                (None, True))

    def health(s: dict) -> bool:
        return s.get("type") == "LoadBalancer" and s.get("externalTrafficPolicy") == "Local"

    def same(field: str) -> bool:
        return spec.get(field) == old_spec.get(field)

    if "ExternalName" not in (typ, old_typ):  # patchAllocatedValues
        for field in ("clusterIP", "clusterIPs"):
            if not spec.get(field) and old_spec.get(field):
                spec[field] = copy.deepcopy(old_spec[field])
    if node_ports(spec) and node_ports(old_spec):
        used = {str(p.get("nodePort")) for p in ports} & {str(p.get("nodePort")) for p in old_ports}
        by_name = {str(p.get("name")): p.get("nodePort") for p in old_ports}
        for p in ports:
            was = by_name.get(str(p.get("name")))
            if not p.get("nodePort") and was and str(was) not in used:
                p["nodePort"] = was
    if health(spec) and health(old_spec) and not spec.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old_spec.get("healthCheckNodePort")
    if old_typ != "ExternalName" and typ == "ExternalName":  # dropTypeDependentFields
        for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if same(field) or (field == "clusterIPs" and same("clusterIP")):
                spec.pop(field, None)
    if node_ports(old_spec) and not node_ports(spec) and \
            [p.get("nodePort") for p in ports] == [p.get("nodePort") for p in old_ports]:
        for p in ports:
            p.pop("nodePort", None)
    if health(old_spec) and not health(spec) and same("healthCheckNodePort"):
        spec.pop("healthCheckNodePort", None)
    if old_typ == "LoadBalancer" and typ != "LoadBalancer":
        for field in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if same(field):
                spec.pop(field, None)
    if _externally_accessible(old_spec) and not _externally_accessible(spec) and \
            same("externalTrafficPolicy"):
        spec.pop("externalTrafficPolicy", None)
    return out


def _externally_accessible(spec: dict) -> bool:
    typ = spec.get("type") or "ClusterIP"
    return typ in ("LoadBalancer", "NodePort") or (typ == "ClusterIP"
                                                   and bool(spec.get("externalIPs")))


def _service(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    spec = w.obj(obj, "spec", "spec") or {}
    typ = w.str(spec, "type", "spec.type") or "ClusterIP"
    if op == "status":
        _service_status(w, obj, typ)
        return
    old_spec = (old or {}).get("spec") if isinstance((old or {}).get("spec"), dict) else None
    w.str(spec, "clusterIP", "spec.clusterIP")
    w.strings(spec, "clusterIPs", "spec.clusterIPs")
    cluster_ip, cluster_ips = service_cluster_ips(spec, old_spec if op == "update" else None)
    headless = cluster_ips == ["None"]
    ports = w.arr(spec, "ports", "spec.ports")
    if not ports and not headless and typ != "ExternalName":
        w.add(required("spec.ports"))
    if typ in ("LoadBalancer", "NodePort") and headless:
        w.add(invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {typ} services"))
    if typ == "ExternalName":
        _external_name(w, spec, cluster_ips)
    elif typ in _SERVICE_TYPES:
        _cluster_ips_related(w, spec, cluster_ip, cluster_ips, headless)
    else:
        w.add(not_supported("spec.type", typ, _SERVICE_TYPES))
    _service_ports(w, ports, typ)
    w.add(*validate_labels(w.obj(spec, "selector", "spec.selector"), "spec.selector"))
    _session_affinity(w, spec)
    external_ips = w.strings(spec, "externalIPs", "spec.externalIPs")
    for i, ip in enumerate(external_ips):
        msgs = ip_errors(ip) or non_special_ip_errors(ip)
        w.add(*[invalid(f"spec.externalIPs[{i}]", ip, m) for m in msgs])
    _load_balancer_fields(w, spec, typ)
    _traffic_policies(w, spec, typ, bool(external_ips))
    if op == "update" and old_spec is not None:
        _service_update(w, spec, old_spec, cluster_ips)


def _external_name(w: Walk, spec: dict, cluster_ips: list[str]) -> None:
    if cluster_ips:
        w.add(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
    if w.arr(spec, "ipFamilies", "spec.ipFamilies"):
        w.add(forbidden("spec.ipFamilies", "may not be set for ExternalName services"))
    if w.str(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy") is not None:
        w.add(forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services"))
    cname = (w.str(spec, "externalName", "spec.externalName") or "").removesuffix(".")
    if not cname:  # a trailing dot marks the CNAME fully qualified
        w.add(required("spec.externalName"))
    _check(w, cname, "spec.externalName", dns1123_subdomain_errors)


def _cluster_ips_related(w: Walk, spec: dict, ip: str, ips: list[str], headless: bool) -> None:
    path = "spec.clusterIPs"
    if ip and ips and ips[0] != ip:
        w.add(invalid(path, ips, "first value must match `clusterIP`"))
    elif not ip and ips:
        w.add(invalid(path, ips, "must be empty when `clusterIP` is not specified"))
    families = w.strings(spec, "ipFamilies", "spec.ipFamilies")
    for i, fam in enumerate(families):
        if fam not in ("IPv4", "IPv6"):
            w.add(not_supported(f"spec.ipFamilies[{i}]", fam, ("IPv4", "IPv6")))
        if fam in families[:i]:
            w.add(duplicate(f"spec.ipFamilies[{i}]", fam))
    policy = w.str(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy")
    if policy is not None and policy not in _IP_FAMILY_POLICIES:
        w.add(not_supported("spec.ipFamilyPolicy", policy, _IP_FAMILY_POLICIES))
    bad = False
    for i, v in enumerate(ips):
        if i == 0 and v == "None":
            if len(ips) > 1:
                bad = True
                w.add(invalid(path, ips, "'None' must be the first and only value"))
            continue
        bad = bad or bool(ip_errors(v))
        w.add(*[invalid(index(path, i), v, m) for m in ip_errors(v)])
    if len(ips) > 2:
        w.add(invalid(path, ips, "may only hold up to 2 values"))
    if bad:  # further checks would only restate the bad values
        return
    if len(ips) == 2 and ip_family(ips[0]) == ip_family(ips[1]):
        w.add(invalid(path, ips, "may specify no more than one IP for each IP family"))
    if not headless:
        for i, (v, fam) in enumerate(zip(ips, families)):
            if fam in ("IPv4", "IPv6") and ip_family(v) != int(fam[-1]):
                w.add(invalid(index(path, i), v,
                              f"expected an {fam} value as indicated by `ipFamilies[{i}]`"))


def _service_ports(w: Walk, ports: list | None, typ: str) -> None:
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    items = list(w.items(ports, "spec.ports", "object"))
    for _, port, p in items:
        name = w.str(port, "name", child(p, "name"))
        if len(items) > 1 and not name:
            w.add(required(child(p, "name")))
        elif name:
            w.add(*[invalid(child(p, "name"), name, m) for m in dns1123_label_errors(name)])
            if name in names:
                w.add(duplicate(child(p, "name"), name))
            names.add(name)
        number = w.int(port, "port", child(p, "port")) or 0
        _port_num(w, number, child(p, "port"))
        proto = _protocol(w, port, child(p, "protocol"))
        target = w.get(port, "targetPort", child(p, "targetPort"), "int-or-string")
        if isinstance(target, str):
            w.add(*[invalid(child(p, "targetPort"), target, m) for m in port_name_errors(target)])
        elif target:  # 0 or absent: the server defaults targetPort to port
            _port_num(w, target, child(p, "targetPort"))
        _check(w, w.str(port, "appProtocol", child(p, "appProtocol")),
               child(p, "appProtocol"), qualified_name_errors)
        node_port = w.int(port, "nodePort", child(p, "nodePort"))  # range: the allocator's job
        if node_port and typ == "ClusterIP":
            w.add(forbidden(child(p, "nodePort"), "may not be used when `type` is 'ClusterIP'"))
        if node_port and (node_port, proto) in node_ports:
            w.add(duplicate(child(p, "nodePort"), node_port))
        if node_port:
            node_ports.add((node_port, proto))
        if (number, proto) in seen:
            w.add(duplicate(p, {"port": number, "protocol": proto}))
        seen.add((number, proto))


def _session_affinity(w: Walk, spec: dict) -> None:
    affinity = w.str(spec, "sessionAffinity", "spec.sessionAffinity") or "None"
    config = w.obj(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig")
    if affinity not in ("ClientIP", "None"):
        w.add(not_supported("spec.sessionAffinity", affinity, ("ClientIP", "None")))
    elif affinity == "None" and config is not None:
        w.add(forbidden("spec.sessionAffinityConfig",
                        "must not be set when session affinity is None"))
    elif affinity == "ClientIP":  # a missing timeout is defaulted to 10800
        path = "spec.sessionAffinityConfig.clientIP"
        client = w.obj(config, "clientIP", path)
        timeout = w.int(client, "timeoutSeconds", child(path, "timeoutSeconds"))
        if timeout is not None and not 0 < timeout <= 86400:
            w.add(invalid(child(path, "timeoutSeconds"), timeout,
                          "must be greater than 0 and less than 86400"))


def _load_balancer_fields(w: Walk, spec: dict, typ: str) -> None:
    only_lb = "may only be used when `type` is 'LoadBalancer'"
    # upstream names this path with a capital L; kept so clients match the same text
    path = "spec.LoadBalancerSourceRanges"
    ranges = w.strings(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges")
    if ranges and typ != "LoadBalancer":
        w.add(forbidden(path, only_lb))
    for i, value in enumerate(ranges):  # space padding is tolerated, from the annotation days
        w.add(*[invalid(index(path, i), value.strip(), m) for m in cidr_errors(value.strip())])
    if w.bool(spec, "allocateLoadBalancerNodePorts", "spec.allocateLoadBalancerNodePorts") \
            is not None and typ != "LoadBalancer":
        w.add(forbidden("spec.allocateLoadBalancerNodePorts", only_lb))
    lb_class = w.str(spec, "loadBalancerClass", "spec.loadBalancerClass")
    if lb_class is not None and typ != "LoadBalancer":
        w.add(forbidden("spec.loadBalancerClass", only_lb))
    elif lb_class is not None:
        w.add(*[invalid("spec.loadBalancerClass", lb_class, m)
                for m in qualified_name_errors(lb_class)])
    w.str(spec, "loadBalancerIP", "spec.loadBalancerIP")


def _traffic_policies(w: Walk, spec: dict, typ: str, has_external_ips: bool) -> None:
    external = _externally_accessible({"type": typ, "externalIPs": has_external_ips})
    etp = w.str(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy") or ""
    if etp and not external:
        w.add(invalid("spec.externalTrafficPolicy", etp,
                      "may only be set for externally-accessible services"))
    elif etp and etp not in ("Cluster", "Local"):
        w.add(not_supported("spec.externalTrafficPolicy", etp, ("Cluster", "Local")))
    health = w.int(spec, "healthCheckNodePort", "spec.healthCheckNodePort")
    if health and not (typ == "LoadBalancer" and etp == "Local"):
        w.add(invalid("spec.healthCheckNodePort", health, "may only be set when `type` is "
                      "'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    elif health:  # absent is fine: the allocator assigns it
        _port_num(w, health, "spec.healthCheckNodePort")
    itp = w.str(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy")
    if itp is not None and itp not in ("Cluster", "Local"):
        w.add(not_supported("spec.internalTrafficPolicy", itp, ("Cluster", "Local")))
    dist = w.str(spec, "trafficDistribution", "spec.trafficDistribution")
    if dist is not None and dist not in _TRAFFIC_DISTRIBUTIONS:
        w.add(not_supported("spec.trafficDistribution", dist, _TRAFFIC_DISTRIBUTIONS))


def _service_update(w: Walk, spec: dict, old: dict, ips: list[str]) -> None:
    """validateUpgradeDowngradeClusterIPs: allocated IPs stay; only the secondary may come or
    go. Changes to or from ExternalName (which has no IPs) are free."""
    typ, old_typ = spec.get("type") or "ClusterIP", old.get("type") or "ClusterIP"
    if "ExternalName" in (typ, old_typ):
        return
    old_ips = [v for v in old.get("clusterIPs") or [] if isinstance(v, str)] \
        if isinstance(old.get("clusterIPs"), list) else []
    if ips == ["None"] and old_ips == ["None"]:
        return
    path = "spec.clusterIPs"
    if len(old_ips) == len(ips):
        for i, (o, n) in enumerate(zip(old_ips, ips)):
            if o != n:
                w.add(invalid(index(path, i), ips, "may not change once set"))
    elif len(old_ips) > len(ips):
        if not ips:
            w.add(invalid(index(path, 0), ips, "primary clusterIP can not be unset"))
        elif ips[0] != old_ips[0]:
            w.add(invalid(index(path, 0), ips, "may not change once set"))
        if len(ips) == 1 and spec.get("ipFamilyPolicy") != "SingleStack":
            w.add(invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                          "must be set to 'SingleStack' when releasing the secondary clusterIP"))
    elif old_ips and ips[0] != old_ips[0]:
        w.add(invalid(index(path, 0), ips, "may not change once set"))
    if typ == old_typ == "LoadBalancer" and spec.get("loadBalancerClass") != \
            old.get("loadBalancerClass"):
        w.add(invalid("spec.loadBalancerClass", spec.get("loadBalancerClass"),
                      "may not change once set"))


def _service_status(w: Walk, obj: dict, typ: str) -> None:
    path = "status.loadBalancer.ingress"
    lb = w.obj(w.obj(obj, "status", "status"), "loadBalancer", "status.loadBalancer")
    ingress = w.arr(lb, "ingress", path)
    if ingress and typ != "LoadBalancer":
        w.add(forbidden(path, "may only be used when `spec.type` is 'LoadBalancer'"))
        return
    for _, ing, p in w.items(ingress, path, "object"):
        ip = w.str(ing, "ip", child(p, "ip"))
        w.add(*[invalid(child(p, "ip"), ip, m) for m in ip_errors(ip)] if ip else [])
        mode = w.str(ing, "ipMode", child(p, "ipMode"))
        if mode is not None and not ip:
            w.add(forbidden(child(p, "ipMode"), "may not be specified when `ip` is not set"))
        elif mode is not None and mode not in ("Proxy", "VIP"):
            w.add(not_supported(child(p, "ipMode"), mode, ("Proxy", "VIP")))
        host = w.str(ing, "hostname", child(p, "hostname"))
        _check(w, host, child(p, "hostname"), dns1123_subdomain_errors)
        if host and not ip_errors(host):
            w.add(invalid(child(p, "hostname"), host, "must be a DNS name, not an IP address"))


# --- Endpoints and EndpointSlice (core ValidateEndpoints, discovery ValidateEndpointSlice) ------


def _endpoint_ip(w: Walk, ip: str | None, path: str) -> None:
    msgs = ip_errors(ip or "") or non_special_ip_errors(ip or "")
    w.add(*[invalid(path, ip or "", m) for m in msgs])


def _endpoints(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    for _, subset, sp in w.items(w.arr(obj, "subsets", "subsets"), "subsets", "object"):
        found = False
        for field in ("addresses", "notReadyAddresses"):
            fpath = child(sp, field)
            for _, addr, ap in w.items(w.arr(subset, field, fpath), fpath, "object"):
                found = True
                _endpoint_ip(w, w.str(addr, "ip", child(ap, "ip")), child(ap, "ip"))
                _check(w, w.str(addr, "hostname", child(ap, "hostname")),
                       child(ap, "hostname"), dns1123_label_errors)
                _check(w, w.str(addr, "nodeName", child(ap, "nodeName")),
                       child(ap, "nodeName"), dns1123_subdomain_errors)
                _typed(w, w.obj(addr, "targetRef", child(ap, "targetRef")), child(ap, "targetRef"),
                       _OBJECT_REF)
        if not found:
            w.add(required(sp, "must specify `addresses` or `notReadyAddresses`"))
        ports = list(w.items(w.arr(subset, "ports", child(sp, "ports")), child(sp, "ports"),
                             "object"))
        for _, port, pp in ports:
            name = w.str(port, "name", child(pp, "name"))
            if len(ports) > 1 and not name:
                w.add(required(child(pp, "name")))
            _check(w, name, child(pp, "name"), dns1123_label_errors)
            _port_num(w, w.int(port, "port", child(pp, "port")) or 0, child(pp, "port"))
            _protocol(w, port, child(pp, "protocol"))
            _check(w, w.str(port, "appProtocol", child(pp, "appProtocol")),
                   child(pp, "appProtocol"), qualified_name_errors)


_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
_MAX_SLICE_ENDPOINTS, _MAX_SLICE_ADDRESSES, _MAX_SLICE_PORTS = 1000, 100, 20000


def _slice_address(w: Walk, addr: str, kind: str, path: str) -> None:
    if kind == "FQDN":
        if not addr:
            w.add(required(path))
        w.add(*[invalid(path, addr, m) for m in fqdn_errors(addr) if addr])
    elif kind in ("IPv4", "IPv6"):
        if ip_family(addr) != int(kind[-1]):
            w.add(invalid(path, addr, f"must be a valid {kind} address"))
        else:
            w.add(*[invalid(path, addr, m) for m in non_special_ip_errors(addr)])


def _endpoint_slice(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    kind = w.str(obj, "addressType", "addressType") or ""
    if not kind:
        w.add(required("addressType"))
    elif kind not in _ADDRESS_TYPES:
        w.add(not_supported("addressType", kind, _ADDRESS_TYPES))
    if op != "create" and kind != ((old or {}).get("addressType") or ""):
        w.add(invalid("addressType", kind, IMMUTABLE))
    endpoints = w.arr(obj, "endpoints", "endpoints") or []
    if len(endpoints) > _MAX_SLICE_ENDPOINTS:
        w.add(too_many("endpoints", len(endpoints), _MAX_SLICE_ENDPOINTS))
        endpoints = []
    for _, ep, p in w.items(endpoints, "endpoints", "object"):
        ap = child(p, "addresses")
        addresses = w.strings(ep, "addresses", ap)
        if not addresses:
            w.add(required(ap, "must contain at least 1 address"))
        elif len(addresses) > _MAX_SLICE_ADDRESSES:
            w.add(too_many(ap, len(addresses), _MAX_SLICE_ADDRESSES))
        for i, addr in enumerate(addresses):
            _slice_address(w, addr, kind, index(ap, i))
        conditions = w.obj(ep, "conditions", child(p, "conditions"))
        for cond in ("ready", "serving", "terminating"):
            w.bool(conditions, cond, child(p, "conditions", cond))
        _check(w, w.str(ep, "nodeName", child(p, "nodeName")), child(p, "nodeName"),
               dns1123_subdomain_errors)
        _check(w, w.str(ep, "hostname", child(p, "hostname")), child(p, "hostname"),
               dns1123_label_errors)
        w.str(ep, "zone", child(p, "zone"))
        _typed(w, w.obj(ep, "targetRef", child(p, "targetRef")), child(p, "targetRef"), _OBJECT_REF)
        topology = w.obj(ep, "deprecatedTopology", child(p, "deprecatedTopology"))
        if topology and len(topology) > 16:
            w.add(too_many(child(p, "deprecatedTopology"), len(topology), 16))
        w.add(*validate_labels(topology, child(p, "deprecatedTopology")))
        zones_path = child(p, "hints", "forZones")
        zones = w.arr(w.obj(ep, "hints", child(p, "hints")), "forZones", zones_path) or []
        if len(zones) > 8:
            w.add(too_many(zones_path, len(zones), 8))
            zones = []
        seen: set[str] = set()
        for _, zone, zp in w.items(zones, zones_path, "object"):
            zname = w.str(zone, "name", child(zp, "name")) or ""
            if zname in seen:
                w.add(duplicate(child(zp, "name"), zname))
            seen.add(zname)
            w.add(*[invalid(child(zp, "name"), zname, m) for m in label_value_errors(zname)])
    _slice_ports(w, w.arr(obj, "ports", "ports") or [])


def _slice_ports(w: Walk, ports: list) -> None:
    if len(ports) > _MAX_SLICE_PORTS:  # upstream raised this cap from 100 to 20000
        w.add(too_many("ports", len(ports), _MAX_SLICE_PORTS))
        return
    names: set[str] = set()
    for _, port, p in w.items(ports, "ports", "object"):
        name = w.str(port, "name", child(p, "name")) or ""  # "" counts: one unnamed port only
        _check(w, name, child(p, "name"), dns1123_label_errors)
        if name in names:
            w.add(duplicate(child(p, "name"), name))
        names.add(name)
        _protocol(w, port, child(p, "protocol"))
        w.int(port, "port", child(p, "port"))  # no range rule upstream; null means all ports
        _check(w, w.str(port, "appProtocol", child(p, "appProtocol")),
               child(p, "appProtocol"), qualified_name_errors)


# --- Node and Namespace --------------------------------------------------------------------------

_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _node(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    spec = w.obj(obj, "spec", "spec") or {}
    single = w.str(spec, "podCIDR", "spec.podCIDR") or ""
    cidrs = w.strings(spec, "podCIDRs", "spec.podCIDRs")
    if single and cidrs and cidrs[0] != single:
        # netplane stores v1 JSON as sent, so consumers of either field must agree
        w.add(invalid("spec.podCIDRs", cidrs, "first value must match `podCIDR`"))
    elif single and not cidrs:
        w.add(*[invalid("spec.podCIDR", single, m) for m in cidr_errors(single)])
    for i, cidr in enumerate(cidrs):
        w.add(*[invalid(f"spec.podCIDRs[{i}]", cidr, m) for m in cidr_errors(cidr)])
    nets = [parse_cidr(c) for c in cidrs]
    if len(cidrs) > 1 and all(nets):
        if len(cidrs) > 2 or nets[0].version == nets[1].version:  # type: ignore[union-attr]
            w.add(invalid("spec.podCIDRs", cidrs,
                          "may specify no more than one CIDR for each IP family"))
        for i, cidr in enumerate(cidrs):
            if cidr in cidrs[:i]:
                w.add(duplicate(f"spec.podCIDRs[{i}]", cidr))
    keys: set[tuple[str, str]] = set()
    # upstream validates spec.taints under a "metadata.taints" path; kept for identical text
    for _, taint, p in w.items(w.arr(spec, "taints", "spec.taints"), "metadata.taints", "object"):
        key = w.str(taint, "key", child(p, "key")) or ""
        w.add(*[invalid(child(p, "key"), key, m) for m in qualified_name_errors(key)])
        value = w.str(taint, "value", child(p, "value")) or ""
        if msgs := label_value_errors(value):
            w.add(invalid(child(p, "value"), value, ";".join(msgs)))
        effect = w.str(taint, "effect", child(p, "effect")) or ""
        if not effect:
            w.add(required(child(p, "effect")))
        elif effect not in _TAINT_EFFECTS:
            w.add(not_supported(child(p, "effect"), effect, _TAINT_EFFECTS))
        if (key, effect) in keys:
            dup = duplicate(p, taint)
            w.add(Cause(p, dup.message + ": taints must be unique by key and effect pair",
                        dup.reason))
        keys.add((key, effect))
    w.bool(spec, "unschedulable", "spec.unschedulable")
    status = w.obj(obj, "status", "status") or {}
    addrs = [(w.str(a, "type", child(p, "type")) or "", w.str(a, "address", child(p, "address"))
              or "", p) for _, a, p in w.items(w.arr(status, "addresses", "status.addresses"),
                                               "status.addresses", "object")]
    for _, cond, cp in w.items(w.arr(status, "conditions", "status.conditions"),
                               "status.conditions", "object"):
        _typed(w, cond, cp, ("type", "status", "reason", "message", "lastHeartbeatTime",
                             "lastTransitionTime"))
    if op == "create" or old is None:
        return
    for i, (t, a, p) in enumerate(addrs):  # ValidateNodeUpdate: no repeated address
        if (t, a) in [(x, y) for x, y, _ in addrs[:i]]:
            w.add(duplicate(p, {"address": a, "type": t}))
    old_spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
    old_cidrs = old_spec.get("podCIDRs") or ([old_spec["podCIDR"]] if old_spec.get("podCIDR")
                                             else [])
    if old_cidrs and old_cidrs != (cidrs or ([single] if single else [])):
        w.add(forbidden("spec.podCIDRs",
                        'node updates may not change podCIDR except from "" to valid'))
    old_provider = old_spec.get("providerID") or ""
    if old_provider and old_provider != (spec.get("providerID") or ""):
        w.add(forbidden("spec.providerID",
                        'node updates may not change providerID except from "" to valid'))
    if (spec.get("externalID") or "") != (old_spec.get("externalID") or ""):
        w.add(forbidden("spec.externalID", "may not be updated"))


def _namespace(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    if op != "status":
        for f in w.strings(w.obj(obj, "spec", "spec"), "finalizers", "spec.finalizers"):
            w.add(*[invalid("spec.finalizers", f, m) for m in qualified_name_errors(f)])
            if "/" not in f and f not in _STANDARD_FINALIZERS:
                w.add(invalid("spec.finalizers", f, "name is neither a standard finalizer name "
                              "nor is it fully qualified"))
        return
    phase = w.str(w.obj(obj, "status", "status"), "phase", "status.phase") or "Active"
    deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp")) \
        if isinstance(obj.get("metadata"), dict) else False
    want = "Terminating" if deleting else "Active"
    if phase != want:  # upstream's path says "Phase", capitalised
        w.add(invalid("status.Phase", phase, f"may only be '{want}' if `deletionTimestamp` is "
                      + ("not empty" if deleting else "empty")))


# --- ConfigMap and Event -------------------------------------------------------------------------

_MAX_CONFIG_BYTES = 1024 * 1024


def _config_map(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    total = 0
    data = w.obj(obj, "data", "data") or {}
    binary = w.obj(obj, "binaryData", "binaryData") or {}
    for field, values in (("data", data), ("binaryData", binary)):
        for key, value in values.items():
            kpath = index(field, key)
            w.add(*[invalid(kpath, key, m) for m in config_map_key_errors(str(key))])
            if field == "data" and key in binary:
                w.add(invalid(kpath, key, "duplicate of key present in binaryData"))
            if not isinstance(value, str):
                w.add(type_invalid(kpath, value, "string"))
                continue
            # binaryData travels base64-encoded; its stored size is the decoded size
            total += len(value.encode()) if field == "data" else len(value) * 3 // 4
    if total > _MAX_CONFIG_BYTES:
        w.add(too_long("", _MAX_CONFIG_BYTES))  # "" is how upstream names the whole object
    w.bool(obj, "immutable", "immutable")
    if old is not None and old.get("immutable") is True:
        detail = "field is immutable when `immutable` is set"
        if obj.get("immutable") is not True:
            w.add(forbidden("immutable", detail))
        for field in ("data", "binaryData"):
            if (obj.get(field) or {}) != (old.get(field) or {}):
                w.add(forbidden(field, detail))


def _event(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    """legacyValidateEvent: all a core/v1 Event gets, on create and on update."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    involved = w.obj(obj, "involvedObject", "involvedObject") or {}
    for field in ("kind", "namespace", "name", "uid", "apiVersion", "fieldPath"):
        w.str(involved, field, child("involvedObject", field))
    io_ns = involved.get("namespace") or ""
    mismatch = invalid("involvedObject.namespace", io_ns, "does not match event.namespace")
    if not w.str(obj, "eventTime", "eventTime"):
        if (not io_ns and ns not in ("", "default")) or (io_ns and ns != io_ns):
            w.add(mismatch)
    else:
        if not io_ns and ns not in ("default", "kube-system"):
            w.add(mismatch)
        # the v1 field is reportingComponent; upstream reports it by its internal name
        controller = w.str(obj, "reportingComponent", "reportingComponent") or ""
        if not controller:
            w.add(required("reportingController"))
        w.add(*[invalid("reportingController", controller, m)
                for m in qualified_name_errors(controller)])
        for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
            value = w.str(obj, field, field) or ""
            if not value:
                w.add(required(field))
            if len(value) > limit:
                w.add(invalid(field, "", f"can have at most {limit} characters"))
        if len(w.str(obj, "message", "message") or "") > 1024:
            w.add(invalid("message", "", "can have at most 1024 characters"))
    _typed(w, obj, "", ("reason", "message", "type", "firstTimestamp", "lastTimestamp", "action",
                        "reportingInstance"), ("count",))
    _typed(w, w.obj(obj, "source", "source"), "source", ("component", "host"))
    w.add(*[invalid("namespace", ns, m) for m in dns1123_subdomain_errors(ns)])


# --- NetworkPolicy (networking ValidateNetworkPolicy) -------------------------------------------


def _network_policy(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    spec = w.obj(obj, "spec", "spec") or {}
    # podSelector is a struct upstream: absent decodes to {}, which selects every pod
    validate_label_selector(w, w.obj(spec, "podSelector", "spec.podSelector"), "spec.podSelector")
    for direction, peers_field in (("ingress", "from"), ("egress", "to")):
        dpath = child("spec", direction)
        for _, rule, rp in w.items(w.arr(spec, direction, dpath), dpath, "object"):
            ports_path = child(rp, "ports")
            for _, port, pp in w.items(w.arr(rule, "ports", ports_path), ports_path, "object"):
                _policy_port(w, port, pp)
            peers_path = child(rp, peers_field)
            for _, peer, pp in w.items(w.arr(rule, peers_field, peers_path), peers_path,
                                       "object"):
                _policy_peer(w, peer, pp)
    types = w.strings(spec, "policyTypes", "spec.policyTypes")
    if len(types) > 2:
        w.add(invalid("spec.policyTypes", types, "may not specify more than two policyTypes"))
        return
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            w.add(not_supported(f"spec.policyTypes[{i}]", t, ("Ingress", "Egress")))


def _policy_port(w: Walk, port: dict, path: str) -> None:
    proto = w.str(port, "protocol", child(path, "protocol"))
    if proto is not None and proto not in ("TCP", "UDP", "SCTP"):
        w.add(not_supported(child(path, "protocol"), proto, ("TCP", "UDP", "SCTP")))
    number = w.get(port, "port", child(path, "port"), "int-or-string")
    end = w.int(port, "endPort", child(path, "endPort"))
    if isinstance(number, str):
        if end is not None:
            w.add(invalid(child(path, "endPort"), end, "may not be specified when `port` is "
                          "non-numeric"))
        w.add(*[invalid(child(path, "port"), number, m) for m in port_name_errors(number)])
    elif number is not None:
        _port_num(w, number, child(path, "port"))
        if end is not None and end < number:
            w.add(invalid(child(path, "endPort"), end, "must be greater than or equal to `port`"))
        _port_num(w, end, child(path, "endPort"))
    elif end is not None:
        w.add(invalid(child(path, "endPort"), end, "may not be specified when `port` is not "
                      "specified"))


def _policy_peer(w: Walk, peer: dict, path: str) -> None:
    count = 0
    for field in ("podSelector", "namespaceSelector"):
        selector = w.obj(peer, field, child(path, field))
        if selector is not None:
            count += 1
            validate_label_selector(w, selector, child(path, field))
    block = w.obj(peer, "ipBlock", child(path, "ipBlock"))
    if block is not None:
        count += 1
        _ip_block(w, block, child(path, "ipBlock"))
    if count == 0:
        w.add(required(path, "must specify a peer"))
    elif count > 1 and block is not None:
        w.add(forbidden(path, "may not specify both ipBlock and another peer"))


def _ip_block(w: Walk, block: dict, path: str) -> None:
    cidr = w.str(block, "cidr", child(path, "cidr")) or ""
    if not cidr:
        w.add(required(child(path, "cidr")))
        return
    w.add(*[invalid(child(path, "cidr"), cidr, m) for m in cidr_errors(cidr)])
    net = parse_cidr(cidr)
    for i, exc in enumerate(w.strings(block, "except", child(path, "except"))):
        epath = index(child(path, "except"), i)
        w.add(*[invalid(epath, exc, m) for m in cidr_errors(exc)])
        sub = parse_cidr(exc)
        if net is not None and sub is not None and not (
                sub.version == net.version and sub.network_address in net
                and sub.prefixlen > net.prefixlen):
            w.add(invalid(epath, exc, "must be a strict subset of `cidr`"))


# --- Deployment and DaemonSet (apps ValidateDeployment, ValidateDaemonSet) ----------------------


def _deployment(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _workload(w, obj, old, op, "deployment")


def _daemon_set(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _workload(w, obj, old, op, "daemonset")


def _workload(w: Walk, obj: dict, old: dict | None, op: str, kind: str) -> None:
    if op == "status":
        _workload_status(w, obj, kind)
        return
    spec = w.obj(obj, "spec", "spec") or {}
    selector = w.obj(spec, "selector", "spec.selector")
    errs_before = len(w.errs)
    if selector is None and kind == "deployment":
        w.add(required("spec.selector"))
    validate_label_selector(w, selector, "spec.selector")
    selector_ok = len(w.errs) == errs_before or selector is None
    if kind == "deployment" and not selector_ok:
        w.add(invalid("spec.selector", selector, "invalid label selector"))
    if selector is not None and selector_is_empty(selector):
        w.add(invalid("spec.selector", selector, f"empty selector is invalid for {kind}"))
    template = w.obj(spec, "template", "spec.template") or {}
    tmeta = w.obj(template, "metadata", "spec.template.metadata") or {}
    labels = tmeta.get("labels") if isinstance(tmeta.get("labels"), dict) else {}
    # a missing selector selects nothing, so it never matches the template either
    if selector_ok and (selector is None or not selector_matches(selector, labels)):
        w.add(invalid("spec.template.metadata.labels", labels,
                      "`selector` does not match template `labels`"))
    # upstream validates template metadata at spec.template.labels (no "metadata")
    w.add(*validate_labels(tmeta.get("labels"), "spec.template.labels"))
    w.add(*validate_annotations(tmeta.get("annotations"), "spec.template.annotations"))
    tspec = w.obj(template, "spec", "spec.template.spec") or {}
    _pod_spec(w, tspec, "spec.template.spec")
    policy = tspec.get("restartPolicy") or "Always"
    if policy != "Always" and policy in _RESTART_POLICIES:
        w.add(not_supported("spec.template.spec.restartPolicy", policy, ("Always",)))
    deadline = tspec.get("activeDeadlineSeconds")
    if deadline is not None and kind == "deployment":
        w.add(forbidden("spec.template.spec.activeDeadlineSeconds",
                        "activeDeadlineSeconds in ReplicaSet is not Supported"))
    elif deadline is not None:
        w.add(invalid("spec.template.spec.activeDeadlineSeconds", deadline,
                      "activeDeadlineSeconds in DaemonSet is not Supported"))
    counts = ("replicas",) if kind == "deployment" else ()
    values = _nonnegative(w, spec, counts + ("minReadySeconds", "revisionHistoryLimit"), "spec")
    progress = w.int(spec, "progressDeadlineSeconds", "spec.progressDeadlineSeconds")
    if kind == "deployment" and progress is not None and progress <= values["minReadySeconds"]:
        w.add(invalid("spec.progressDeadlineSeconds", progress,
                      "must be greater than minReadySeconds"))
    strategy_field = "strategy" if kind == "deployment" else "updateStrategy"
    _rollout_strategy(w, w.obj(spec, strategy_field, f"spec.{strategy_field}"),
                      f"spec.{strategy_field}", kind)
    if op == "update" and isinstance((old or {}).get("spec"), dict):
        # apps/v1 selectors never change
        if _zeroless(selector) != _zeroless(old["spec"].get("selector")):
            w.add(invalid("spec.selector", selector, IMMUTABLE))


def _int_or_percent(w: Walk, parent: dict | None, name: str, path: str) -> int | None:
    """maxSurge/maxUnavailable: a non-negative int or "N%"; returns the number, None if absent."""
    value = w.get(parent, name, path, "int-or-string")
    if isinstance(value, str):
        if msgs := percent_errors(value):
            w.add(*[invalid(path, value, m) for m in msgs])
            return None
        number = small_int(value[:-1])
        if name == "maxUnavailable" and number > 100:
            w.add(invalid(path, value, "must not be greater than 100%"))
        return number
    if value is not None and value < 0:
        w.add(invalid(path, value, NONNEGATIVE))
    return value


def _rollout_strategy(w: Walk, strategy: dict | None, path: str, kind: str) -> None:
    strategy = strategy or {}
    typ = w.str(strategy, "type", child(path, "type")) or "RollingUpdate"
    choices = ("Recreate", "RollingUpdate") if kind == "deployment" else \
        ("RollingUpdate", "OnDelete")
    rolling = w.obj(strategy, "rollingUpdate", child(path, "rollingUpdate"))
    if typ not in choices:  # upstream reports this on the strategy object, not its type
        w.add(not_supported(path, strategy, choices))
        return
    if typ != "RollingUpdate":
        if rolling is not None and kind == "deployment":
            w.add(forbidden(child(path, "rollingUpdate"),
                            "may not be specified when strategy `type` is 'Recreate'"))
        return
    rpath = child(path, "rollingUpdate")
    unavailable = _int_or_percent(w, rolling, "maxUnavailable", child(rpath, "maxUnavailable"))
    surge = _int_or_percent(w, rolling, "maxSurge", child(rpath, "maxSurge"))
    # absent values default to 25% (Deployment) or 1 / 0 (DaemonSet), never both zero
    if kind == "deployment" and unavailable == 0 and surge == 0:
        w.add(invalid(child(rpath, "maxUnavailable"), rolling.get("maxUnavailable")
                      if rolling else 0, "may not be 0 when `maxSurge` is 0"))


def _workload_status(w: Walk, obj: dict, kind: str) -> None:
    status = w.obj(obj, "status", "status") or {}
    if kind == "daemonset":
        _nonnegative(w, status, ("currentNumberScheduled", "numberMisscheduled",
                                 "desiredNumberScheduled", "numberReady", "observedGeneration",
                                 "updatedNumberScheduled", "numberAvailable",
                                 "numberUnavailable", "collisionCount"), "status")
        return
    v = _nonnegative(w, status, ("observedGeneration", "replicas", "updatedReplicas",
                                 "readyReplicas", "availableReplicas", "unavailableReplicas",
                                 "collisionCount"), "status")
    for field in ("updatedReplicas", "readyReplicas", "availableReplicas"):
        if v[field] > v["replicas"]:
            w.add(invalid(f"status.{field}", v[field], "cannot be greater than status.replicas"))
    if v["availableReplicas"] > v["readyReplicas"]:
        w.add(invalid("status.availableReplicas", v["availableReplicas"],
                      "cannot be greater than readyReplicas"))


# --- Lease (coordination ValidateLease) ----------------------------------------------------------


def _lease(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    spec = w.obj(obj, "spec", "spec") or {}
    for field in ("holderIdentity", "acquireTime", "renewTime", "preferredHolder"):
        w.str(spec, field, child("spec", field))
    duration = w.int(spec, "leaseDurationSeconds", "spec.leaseDurationSeconds")
    if duration is not None and duration <= 0:
        w.add(invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = w.int(spec, "leaseTransitions", "spec.leaseTransitions")
    if transitions is not None and transitions < 0:
        w.add(invalid("spec.leaseTransitions", transitions, NONNEGATIVE))
    strategy = w.str(spec, "strategy", "spec.strategy")
    if strategy is not None:  # upstream appends "strategy" twice to this path
        spath = "spec.strategy.strategy"
        if "/" not in strategy and strategy != "OldestEmulationVersion":
            w.add(not_supported(spath, strategy, ("OldestEmulationVersion",)))
        elif "/" in strategy:
            w.add(*[invalid(spath, strategy, m) for m in qualified_name_errors(strategy)])
    if spec.get("preferredHolder") and not strategy:
        w.add(forbidden("spec.preferredHolder", "may only be specified if `strategy` is defined"))


# --- RBAC (rbac/validation): stored only, nothing here enforces the rules -------------------------

_RBAC_GROUP = "rbac.authorization.k8s.io"
_SUBJECT_KINDS = ("ServiceAccount", "User", "Group")


def _policy_rules(w: Walk, obj: dict, namespaced: bool) -> None:
    for _, rule, p in w.items(w.arr(obj, "rules", "rules"), "rules", "object"):
        verbs = w.strings(rule, "verbs", child(p, "verbs"))
        urls = w.strings(rule, "nonResourceURLs", child(p, "nonResourceURLs"))
        groups = w.strings(rule, "apiGroups", child(p, "apiGroups"))
        resources = w.strings(rule, "resources", child(p, "resources"))
        names = w.strings(rule, "resourceNames", child(p, "resourceNames"))
        if not verbs:
            w.add(required(child(p, "verbs"), "verbs must contain at least one value"))
        if urls:
            if namespaced:
                w.add(invalid(child(p, "nonResourceURLs"), urls,
                              "namespaced rules cannot apply to non-resource URLs"))
            if groups or resources or names:
                w.add(invalid(child(p, "nonResourceURLs"), urls,
                              "rules cannot apply to both regular resources and non-resource URLs"))
            continue
        if not groups:
            w.add(required(child(p, "apiGroups"),
                           "resource rules must supply at least one api group"))
        if not resources:
            w.add(required(child(p, "resources"),
                           "resource rules must supply at least one resource"))
        if names and len(resources) > 1:
            w.add(required(child(p, "resourceNames"),
                           "resource names cannot apply to multiple resources"))


def _role(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _policy_rules(w, obj, namespaced=True)


def _cluster_role(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _policy_rules(w, obj, namespaced=False)


def _role_ref(ref: Any) -> dict:
    """roleRef as stored: the server defaults an empty apiGroup to rbac's before validating."""
    ref = dict(ref) if isinstance(ref, dict) else {}
    ref["apiGroup"] = ref.get("apiGroup") or _RBAC_GROUP
    return ref


def _binding(w: Walk, obj: dict, old: dict | None, op: str, cluster: bool) -> None:
    w.obj(obj, "roleRef", "roleRef")
    ref = _role_ref(obj.get("roleRef"))
    group = w.str(ref, "apiGroup", "roleRef.apiGroup")
    if group is not None and group != _RBAC_GROUP:
        w.add(not_supported("roleRef.apiGroup", group, (_RBAC_GROUP,)))
    kinds = ("ClusterRole",) if cluster else ("Role", "ClusterRole")
    kind = w.str(ref, "kind", "roleRef.kind") or ""
    if kind not in kinds:
        w.add(not_supported("roleRef.kind", kind, kinds))
    name = w.str(ref, "name", "roleRef.name") or ""
    if not name:
        w.add(required("roleRef.name"))
    w.add(*[invalid("roleRef.name", name, m) for m in path_segment_errors(name) if name])
    for _, subject, p in w.items(w.arr(obj, "subjects", "subjects"), "subjects", "object"):
        sname = w.str(subject, "name", child(p, "name")) or ""
        skind = w.str(subject, "kind", child(p, "kind")) or ""
        sgroup = w.str(subject, "apiGroup", child(p, "apiGroup")) or ""
        namespace = w.str(subject, "namespace", child(p, "namespace")) or ""
        if not sname:
            w.add(required(child(p, "name")))
        if skind == "ServiceAccount":
            w.add(*[invalid(child(p, "name"), sname, m)
                    for m in dns1123_subdomain_errors(sname) if sname])
            if sgroup:
                w.add(not_supported(child(p, "apiGroup"), sgroup, ("",)))
            if cluster and not namespace:
                w.add(required(child(p, "namespace")))
        elif skind in ("User", "Group"):
            if not sname:
                w.add(invalid(child(p, "name"), sname, f"{skind.lower()} name cannot be empty"))
            if (sgroup or _RBAC_GROUP) != _RBAC_GROUP:  # an empty apiGroup is defaulted
                w.add(not_supported(child(p, "apiGroup"), sgroup, (_RBAC_GROUP,)))
        else:
            w.add(not_supported(child(p, "kind"), skind, _SUBJECT_KINDS))
    if op == "update" and isinstance(old, dict) and "roleRef" in old:
        if _zeroless(ref) != _zeroless(_role_ref(old.get("roleRef"))):
            w.add(invalid("roleRef", obj.get("roleRef"), "cannot change roleRef"))


def _role_binding(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _binding(w, obj, old, op, cluster=False)


def _cluster_role_binding(w: Walk, obj: dict, old: dict | None, op: str) -> None:
    _binding(w, obj, old, op, cluster=True)


_RULES: dict[str, Rule] = {
    "Pod": _pod, "Service": _service, "Endpoints": _endpoints, "EndpointSlice": _endpoint_slice,
    "Node": _node, "Namespace": _namespace, "ConfigMap": _config_map, "Event": _event,
    "NetworkPolicy": _network_policy, "Deployment": _deployment, "DaemonSet": _daemon_set,
    "Lease": _lease, "Role": _role, "ClusterRole": _cluster_role, "RoleBinding": _role_binding,
    "ClusterRoleBinding": _cluster_role_binding,
}
