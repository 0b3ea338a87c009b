"""state.json: what a running sandbox cluster is, for `down`, `status`, `exec` and `kubeconfig`.
Written atomically (temp file + rename) by the daemon; read by the CLI."""

from __future__ import annotations

import json
import os
from typing import Any

from netplane.errors import ConfigError
from netplane.sandbox.names import RUN_ROOT, ClusterNames


def write_state(names: ClusterNames, state: dict[str, Any]) -> None:
    os.makedirs(names.state_dir, mode=0o700, exist_ok=True)
    tmp = names.state_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    os.replace(tmp, names.state_file)


def read_state(names: ClusterNames) -> dict[str, Any] | None:
    try:
        with open(names.state_file) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{names.state_file}: unreadable sandbox state: {e}") from None


def clusters() -> list[str]:
    """Names of the clusters with a state directory on this machine."""
    try:
        return sorted(d for d in os.listdir(RUN_ROOT) if os.path.isdir(os.path.join(RUN_ROOT, d)))
    except FileNotFoundError:
        return []


def pid_alive(pid: int | None) -> bool:
    """True when pid is a live netplane process (guards against a recycled pid)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"netplane" in f.read()
    except OSError:
        return False
