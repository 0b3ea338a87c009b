"""Processes and files of kubelet-lite: spawning a container's process, watching and signalling
it (also after a kubelet restart, when it is no longer a `Popen` of ours), running `ip`, and the
per-pod state file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from netplane.errors import NetplaneError

log = logging.getLogger(__name__)

# Popen objects of container processes, by pid, for the whole Python process: a kubelet
# stopped with kill_pods=False and started again in the same process adopts its children
# through these (and Python's subprocess cleanup never steals their exit status).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


class CommandError(NetplaneError):
    """A system command (ip, ...) failed."""


def run(argv: Sequence[str], *, timeout: float = 30.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CommandError(f"{' '.join(argv)}: {e}") from e
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, a process identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2:].split()
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, Z, ...), None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def exit_code_of(returncode: int) -> int:
    """Popen's returncode (-N for a signal) as a container exit code (128+N)."""
    return 128 - returncode if returncode < 0 else returncode


class ProcessHandle:
    """A container's process: the session/process-group leader we spawned (or adopted).

    `poll()` returns the exit code once it exited. For a process that is not our child
    (adopted after a restart of the daemon) the exit code is unknown: poll returns None while
    /proc shows it alive and then `UNKNOWN_EXIT`.
    """

    UNKNOWN_EXIT = 137

    def __init__(self, pid: int, start_time: int | None,
                 popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.start_time = start_time
        self._popen = popen
        self.returncode: int | None = None
        self.exit_known = True

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            rc = self._popen.poll()
            if rc is None:
                return None
            self._forget()
            self.returncode = exit_code_of(rc)
            return self.returncode
        # Adopted: our child (waitpid works) or someone else's (watch /proc).
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.returncode = exit_code_of(os.waitstatus_to_exitcode(status))
            return self.returncode
        except ChildProcessError:
            pass
        state = proc_state(self.pid)
        if state is not None and state != "Z" and proc_start_time(self.pid) == self.start_time:
            return None
        self.returncode = self.UNKNOWN_EXIT
        self.exit_known = False
        return self.returncode

    def alive(self) -> bool:
        return self.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the process group the container's process leads (its session)."""
        if self.returncode is not None:
            return
        try:
            leads = os.getpgid(self.pid) == self.pid
        except ProcessLookupError:
            return
        try:
            if leads:
                os.killpg(self.pid, sig)
            else:  # it left its group: at least the process itself
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("cannot signal process (group) %d", self.pid)

    def _forget(self) -> None:
        with _CHILDREN_LOCK:
            if _CHILDREN.get(self.pid) is self._popen:
                _CHILDREN.pop(self.pid, None)


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
          log_path: str) -> ProcessHandle:
    """Start argv in a new session with stdout+stderr appended to log_path."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab", buffering=0) as logf:
        popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd or None,
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 start_new_session=True, close_fds=True)
    with _CHILDREN_LOCK:
        _CHILDREN[popen.pid] = popen
    return ProcessHandle(popen.pid, proc_start_time(popen.pid), popen)


def adopt(pid: int | None, start_time: int | None) -> ProcessHandle | None:
    """A handle on a recorded process if it still runs (same pid and start time), else None."""
    if not pid:
        return None
    with _CHILDREN_LOCK:
        popen = _CHILDREN.get(pid)
    if popen is not None and popen.poll() is None:
        return ProcessHandle(pid, start_time, popen)
    if popen is not None:
        return None
    if proc_state(pid) in (None, "Z") or proc_start_time(pid) != start_time:
        return None
    return ProcessHandle(pid, start_time)


def kill_recorded(pid: int | None, start_time: int | None) -> None:
    """SIGKILL the process group of a recorded process if that very process still exists."""
    handle = adopt(pid, start_time)
    if handle is not None:
        handle.signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while handle.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)


# --------------------------------------------------------------------------------- files


def write_json(path: str, doc: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None


def write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def remove_tree(path: str) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, e)
