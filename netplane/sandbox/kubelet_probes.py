"""Running probes: exec in the pod's namespaces, tcpSocket/httpGet from the node's network
namespace (as the kubelet probes from the host), and the per-probe state machine
(initialDelaySeconds, periodSeconds, successThreshold, failureThreshold).

tcpSocket and httpGet run in a short-lived forked child that enters the network namespace and
reports over a pipe; no thread of the kubelet ever calls setns (a namespace is per OS thread).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import select
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from netplane.sandbox.kubelet_spec import Probe
from netplane.sandbox.names import NETNS_DIR

MAX_HTTP_BODY = 10 * 1024
CLONE_NEWNET = 0x40000000
# Resolved here, in the parent: a forked child of a threaded process should not dlopen/dlsym
# (another thread may have held the loader's lock at fork time).
_SETNS = ctypes.CDLL(None, use_errno=True).setns


def _enter_netns(netns: str) -> None:
    """setns(2) into a named (or path) network namespace. Forked children only."""
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SETNS(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket; IP literals skip getaddrinfo (no NSS in a forked child)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


# --------------------------------------------------------------------------- network checks


def tcp_check(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        with _connect(host, port, timeout):
            return ProbeResult(True)
    except OSError as e:
        return ProbeResult(False, f"dial tcp {host}:{port}: {e.strerror or e}")


def http_check(host: str, port: int, path: str, timeout: float, *, scheme: str = "HTTP",
               headers: Sequence[tuple[str, str]] = ()) -> ProbeResult:
    """A GET like the kubelet's: 200 <= status < 400 succeeds; TLS is not verified."""
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(host, port, timeout)
    except OSError as e:
        return ProbeResult(False, f"Get \"{scheme.lower()}://{hostport}{path}\": {e.strerror or e}")
    try:
        if scheme == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
        names = {k.lower() for k, _ in headers}
        lines = [f"GET {path} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {hostport}")
        if "user-agent" not in names:
            lines.append("User-Agent: kube-probe/1.32")
        if "accept" not in names:
            lines.append("Accept: */*")
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("Connection: close")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        data = b""
        while b"\r\n" not in data and len(data) < MAX_HTTP_BODY:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return ProbeResult(False, f"malformed HTTP response {status_line[:80]!r}")
        code = int(parts[1])
        if 200 <= code < 400:
            return ProbeResult(True, f"HTTP probe succeeded with statuscode: {code}")
        return ProbeResult(False, f"HTTP probe failed with statuscode: {code}")
    except (OSError, ssl.SSLError) as e:
        return ProbeResult(False, f"Get \"{scheme.lower()}://{hostport}{path}\": {e}")
    finally:
        sock.close()


def run_in_netns(netns: str | None, fn: Callable[[], ProbeResult], timeout: float) -> ProbeResult:
    """Run `fn` in network namespace `netns` (a forked child that setns-es), or here when
    netns is empty. The child is killed after `timeout` seconds."""
    if not netns:
        return fn()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: enter, check, report, leave without any Python cleanup
        code = 0
        try:
            os.close(rfd)
            _enter_netns(netns)
            res = fn()
            os.write(wfd, (("1" if res.ok else "0") + res.message).encode()[:4000])
        except BaseException as e:  # noqa: BLE001 - everything becomes a failed probe
            try:
                os.write(wfd, f"0probe in netns {netns}: {e}".encode()[:4000])
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], timeout)
        data = os.read(rfd, 4096) if ready else b""
    finally:
        os.close(rfd)
        if not data:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    if not data:
        return ProbeResult(False, f"probe timed out after {timeout:g}s")
    text = data.decode(errors="replace")
    return ProbeResult(text[0] == "1", text[1:])


def exec_check(argv: Sequence[str], timeout: float, *, env: Mapping[str, str] | None = None,
               cwd: str | None = None) -> ProbeResult:
    """Run argv (already wrapped into the pod's namespaces); exit 0 succeeds. On timeout the
    whole process group is killed."""
    try:
        proc = subprocess.Popen(list(argv), env=dict(env) if env is not None else None,
                                cwd=cwd or None, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        return ProbeResult(False, f"exec probe: {e}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return ProbeResult(False, f"command timed out after {timeout:g}s")
    text = out.decode(errors="replace").strip()[-1000:]
    if proc.returncode == 0:
        return ProbeResult(True, text)
    return ProbeResult(False, f"command failed with exit code {proc.returncode}: {text}")


# ---------------------------------------------------------------------------- state machine


class ProbeState:
    """One probe of one container run: when it is due and what it currently says.

    `result` is None until the thresholds decide (readiness: not ready; startup: not started),
    then True/False. A success needs `success_threshold` consecutive successes, a failure
    `failure_threshold` consecutive failures, the first result after start included.
    """

    def __init__(self, probe: Probe, started: float, *, initial: bool | None = None) -> None:
        self.probe = probe
        self.result: bool | None = initial
        self.next_due = started + probe.initial_delay
        self.successes = 0
        self.failures = 0
        self.last_message = ""

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, res: ProbeResult, now: float) -> bool:
        """Count a result; returns True when `result` changed."""
        self.next_due = now + self.probe.period
        self.last_message = res.message
        before = self.result
        if res.ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.result = False
        return self.result != before
