"""netplane's exception tree. Every error names the object it is about.

    NetplaneError
    ├── ConfigError            bad command line, kubeconfig, topology or plugin configuration
    ├── ApiError               the apiserver answered with a Status failure (has .code, .reason)
    │   ├── NotFoundError      404
    │   ├── ConflictError      409 (AlreadyExists or stale resourceVersion)
    │   └── GoneError          410 (resourceVersion older than the server keeps)
    └── ApiUnavailableError    could not reach the apiserver at all

Components add their own subclasses next to their code (e.g. CNI errors carrying a spec code).
"""

from __future__ import annotations

from typing import Any


class NetplaneError(Exception):
    """Base of every error netplane raises on purpose."""


class ConfigError(NetplaneError):
    """Invalid configuration: the message names the file/field and what is wrong."""


class ApiUnavailableError(NetplaneError):
    """The apiserver could not be reached (connection refused, reset, timeout, TLS failure)."""


class ApiError(NetplaneError):
    """The apiserver answered with a failure Status."""

    def __init__(self, code: int, reason: str, message: str, status: dict[str, Any] | None = None):
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status or {}


class NotFoundError(ApiError):
    pass


class ConflictError(ApiError):
    pass


class GoneError(ApiError):
    pass


def api_error_from_status(code: int, status: dict[str, Any]) -> ApiError:
    """Build the most specific ApiError for an HTTP code and a (possibly empty) Status body."""
    reason = str(status.get("reason") or "Unknown")
    message = str(status.get("message") or "")
    cls = {404: NotFoundError, 409: ConflictError, 410: GoneError}.get(code, ApiError)
    return cls(code, reason, message, status)
