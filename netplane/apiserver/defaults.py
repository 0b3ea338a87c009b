"""Defaulting applied to objects before validation, as the real server's defaulters do for the
fields clients (and netplane's own components) rely on being present."""

from __future__ import annotations

from typing import Any


def _dict(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        value = {}
        parent[key] = value
    return value


def _service(obj: dict[str, Any]) -> None:
    spec = _dict(obj, "spec")
    svc_type = spec.setdefault("type", "ClusterIP")
    if svc_type == "ExternalName":
        return
    spec.setdefault("sessionAffinity", "None")
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = _dict(_dict(spec, "sessionAffinityConfig"), "clientIP")
        cfg.setdefault("timeoutSeconds", 10800)
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if svc_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if not spec.get("ipFamilies"):
        # The family follows the requested ClusterIP; without one, the (IPv4) service CIDR's.
        requested = spec.get("clusterIP") or ((spec.get("clusterIPs") or [None])[0])
        spec["ipFamilies"] = ["IPv6" if isinstance(requested, str) and ":" in requested else "IPv4"]
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if svc_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    status = _dict(obj, "status")
    status.setdefault("loadBalancer", {})


def _pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("resources", {})
            for port in c.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _pod(obj: dict[str, Any]) -> None:
    _pod_spec(_dict(obj, "spec"))
    status = _dict(obj, "status")
    status.setdefault("phase", "Pending")


def _endpoint_slice(obj: dict[str, Any]) -> None:
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _namespace(obj: dict[str, Any]) -> None:
    status = _dict(obj, "status")
    status.setdefault("phase", "Active")


def _workload(obj: dict[str, Any]) -> None:
    spec = _dict(obj, "spec")
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        _pod_spec(template["spec"])


_BY_KIND = {
    "Service": _service,
    "Pod": _pod,
    "EndpointSlice": _endpoint_slice,
    "Namespace": _namespace,
    "Deployment": _workload,
    "DaemonSet": _workload,
}


def apply_defaults(kind: str, obj: dict[str, Any]) -> None:
    """Fill defaults in place. Called on a private copy; never raises on odd field types (the
    validator reports those)."""
    fn = _BY_KIND.get(kind)
    if fn is not None:
        try:
            fn(obj)
        except (AttributeError, TypeError):
            pass  # malformed input: leave it for validation to name the field
