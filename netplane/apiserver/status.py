"""`Status` failures, built with the real server's codes, reasons and message wording so that
kubectl and client libraries react to them exactly as they do on a real cluster."""

from __future__ import annotations

from typing import Any

from netplane.apiserver.resources import ResourceType


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            out["details"] = self.details
        return out


def _details(rt: ResourceType | None, name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if rt is not None:
        if rt.group:
            d["group"] = rt.group
        d["kind"] = rt.plural
    return d


def _qualified(rt: ResourceType) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def not_found(rt: ResourceType, name: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", f'{_qualified(rt)} "{name}" not found', _details(rt, name))


def namespace_not_found(name: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"})


def already_exists(rt: ResourceType, name: str) -> ApiStatus:
    return ApiStatus(409, "AlreadyExists", f'{_qualified(rt)} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiStatus:
    return ApiStatus(
        409, "Conflict", f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": {why}', _details(rt, name)
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(rt: ResourceType, name: str, causes: list[dict[str, Any]]) -> ApiStatus:
    parts = [f"{c.get('field')}: {c.get('message')}" if c.get("field") else str(c.get("message")) for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = {**_details(rt, name), "kind": rt.kind, "causes": causes}
    return ApiStatus(422, "Invalid", f'{rt.kind} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message)


def gone(message: str) -> ApiStatus:
    return ApiStatus(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiStatus:
    return ApiStatus(405, "MethodNotAllowed", message)


def not_found_path(path: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", "the server could not find the requested resource", {"path": path})


def unsupported_media_type(message: str) -> ApiStatus:
    return ApiStatus(415, "UnsupportedMediaType", message)


def too_large(message: str) -> ApiStatus:
    return ApiStatus(413, "RequestEntityTooLarge", message)


def not_acceptable(message: str) -> ApiStatus:
    return ApiStatus(406, "NotAcceptable", message)
