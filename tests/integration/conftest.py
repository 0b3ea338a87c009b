"""Shared fixtures for tests that drive a real `netplane apiserver` subprocess on 127.0.0.1.

- `start_apiserver` (per test): a factory; every server it starts is stopped afterwards.
- `apiserver` (per module): one server shared by a module's tests; a module may set
  `APISERVER_ARGS = (...)` for extra command-line flags. Tests sharing it use unique namespaces.
- `kubectl` (per test): run kubectl against the module's server with its own `--cache-dir`.

Servers are started in a new session and stopped by PID (SIGTERM, then SIGKILL); their work
directories (kubeconfig, logs, data) are temporary directories removed afterwards, also when a
test fails. The tail of a server's log is printed at teardown so a failing test shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETPLANE = Path(sys.executable).with_name("netplane")
KUBECTL = shutil.which("kubectl")
APISERVER_AVAILABLE = (REPO / "netplane" / "apiserver" / "main.py").exists() and NETPLANE.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServerProcess:
    """One `netplane apiserver` child; `stop()` and `start()` may be repeated (restart)."""

    workdir: Path
    args: list[str]
    kubeconfig: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"apiserver-{self.starts}.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self.kubeconfig.unlink(missing_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(NETPLANE), "apiserver", "--write-kubeconfig", str(self.kubeconfig), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready" in self.log_path.read_text(errors="replace"):
                assert self.kubeconfig.exists(), "apiserver said ready before writing kubeconfig"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        pytest.fail(f"netplane apiserver did not become ready:\n{tail}")

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 10 s) this server by PID; returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait(10)
        except ProcessLookupError:
            return proc.wait(10)


@dataclass
class _Servers:
    """Servers started in one temporary directory; `close()` stops them all and removes it."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="netplane-it-")))
    started: list[ApiServerProcess] = field(default_factory=list)

    def start(self, *extra: str, port: int = 0) -> ApiServerProcess:
        workdir = self.root / f"server{len(self.started)}"
        workdir.mkdir()
        server = ApiServerProcess(workdir, ["--listen", f"127.0.0.1:{port}", *extra])
        self.started.append(server)
        server.start()
        return server

    def close(self) -> None:
        try:
            for server in self.started:
                server.stop()
                tail = server.log_tail(2000)
                if tail:
                    print(f"--- {server.log_path.name} (tail) ---\n{tail}")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def start_apiserver() -> Iterator[Callable[..., ApiServerProcess]]:
    """Factory: `start_apiserver(*flags, port=0)` starts a server for this test only."""
    if not APISERVER_AVAILABLE:
        pytest.skip("netplane apiserver not available")
    servers = _Servers()
    try:
        yield servers.start
    finally:
        servers.close()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """`free_port()`: a currently unused TCP port on 127.0.0.1 (for a server restarted in place)."""
    return free_port


@pytest.fixture(scope="module")
def apiserver(request: pytest.FixtureRequest) -> Iterator[ApiServerProcess]:
    """One server for the whole module, started with the module's `APISERVER_ARGS`."""
    if not APISERVER_AVAILABLE:
        pytest.skip("netplane apiserver not available")
    servers = _Servers()
    try:
        yield servers.start(*getattr(request.module, "APISERVER_ARGS", ()))
    finally:
        servers.close()


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A temporary directory removed after the test (pytest's tmp_path keeps the last runs)."""
    path = Path(tempfile.mkdtemp(prefix="netplane-it-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def kubectl_runner(kubeconfig: Path, cache_dir: Path) -> Kubectl:
    assert KUBECTL is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(cache_dir)  # nothing from (or into) the real ~/.kube

    def kubectl(*args: str, input: str | None = None, check: bool = True,
                timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                             env=env, stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {res.returncode}:\n"
                                 f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res

    kubectl.argv = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir)]  # type: ignore[attr-defined]
    kubectl.env = env  # type: ignore[attr-defined]
    return kubectl


@pytest.fixture
def kubectl(apiserver: ApiServerProcess, scratch_dir: Path) -> Kubectl:
    """`kubectl(*args, input=None, check=True)` against the module's server: a CompletedProcess
    with text output; with check=True a non-zero exit fails the test with kubectl's output.
    `kubectl.argv` / `kubectl.env` start long-running ones (`get -w`) by hand."""
    if KUBECTL is None:
        pytest.skip("kubectl not on PATH")
    cache = scratch_dir / "kube-cache"
    cache.mkdir()
    return kubectl_runner(apiserver.kubeconfig, cache)
