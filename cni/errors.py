"""CNI errors: a `CniError` carries a spec error code and renders the spec's error JSON.

The runtime reads the error JSON from the plugin's **stdout** (libcni falls back to stderr only
when stdout is empty), so every failure the agent or the shim reports goes through `to_json`.
Codes 0-99 are reserved by the spec; netplane's own failures use 101-103 (Antrea's numbering).
"""

from __future__ import annotations

from typing import Any

from netplane.errors import NetplaneError

# Spec error codes (SPEC.md "Error" table; 8 is libcni's ErrInvalidNetNS).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50            # STATUS: the plugin cannot serve ADD right now
NOT_AVAILABLE_DEGRADED = 51   # STATUS: cannot ADD, and existing pods may be degraded
INTERNAL = 999                # libcni's code for errors that carry none

# netplane-specific (100+ is the plugin's own range).
IPAM_FAILURE = 101
WIRING_FAILURE = 102
CHECK_FAILURE = 103


class CniError(NetplaneError):
    """A CNI failure with its spec code; `msg` is short, `details` says which field/value."""

    def __init__(self, code: int, msg: str, details: str = ""):
        self.code = int(code)
        self.msg = msg
        self.details = details
        super().__init__(f"{msg}: {details} (CNI code {code})" if details
                         else f"{msg} (CNI code {code})")

    def to_json(self, cni_version: str) -> dict[str, Any]:
        """The spec's error object; `details` is omitted when empty, as libcni does."""
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __eq__(self, other: object) -> bool:
        # Value equality so tests and callers can compare errors (e.g. from the agent's reply).
        if not isinstance(other, CniError):
            return NotImplemented
        return (self.code, self.msg, self.details) == (other.code, other.msg, other.details)

    def __hash__(self) -> int:
        return hash((self.code, self.msg, self.details))

    def __repr__(self) -> str:
        return f"CniError({self.code!r}, {self.msg!r}, {self.details!r})"
