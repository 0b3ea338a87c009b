"""The CNI shim against a fake agent on a unix socket, both implementations.

`cni/shim/netplane` (bash, the reference) and `cni/shim/netplane.c` (compiled here from source,
so the test always covers the current code) run through the same cases: every test that uses
the `run` fixture runs once per implementation, and the `test_same_*` tests run both on the same
input and compare their outputs byte for byte.

No root: the shim only talks HTTP over a unix socket and writes spool files. The fake agent is
a threading HTTP server in a short /tmp directory (sun_path is limited to 108 bytes) that
answers scripted replies and records every request, so the tests see exactly what the shim sent.
The bash shim runs with a PATH holding only bash, curl, jq and the coreutils it needs, which is
what a kind node offers (no python3); the C shim runs with an empty PATH (it needs nothing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from netplane.cni import protocol
from netplane.cni.protocol import parse_shim_request, parse_spooled_del, shim_reply

SHIM = Path(__file__).resolve().parents[2] / "cni" / "shim" / "netplane"
SHIM_C_SOURCES = sorted(SHIM.parent.glob("*.c"))
# Everything the shim may execute besides bash builtins.
TOOLS = ("bash", "curl", "jq", "base64", "mkdir", "mktemp", "mv", "rm", "tr")
# Keep in step with the Makefile's rule for cni/shim/netplane-c.
SHIM_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeAgent:
    """Replies are popped from `script` (status, body bytes, delay s); the default is success."""

    sock: str
    requests: list[Recorded] = field(default_factory=list)
    script: list[tuple[int, bytes, float]] = field(default_factory=list)

    def reply(self, exit_code: int, stdout_obj: dict[str, Any] | None) -> None:
        self.script.append((200, json.dumps(shim_reply(exit_code, stdout_obj)).encode(), 0.0))

    def raw(self, status: int, body: bytes, delay: float = 0.0) -> None:
        self.script.append((status, body, delay))

    def next(self) -> tuple[int, bytes, float]:
        if self.script:
            return self.script.pop(0)
        return 200, json.dumps(shim_reply(0, None)).encode(), 0.0


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def _handler(agent: FakeAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            agent.requests.append(Recorded("POST", self.path, dict(self.headers), body))
            status, data, delay = agent.next()
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the shim gave up (timeout test)

    return Handler


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="npshim", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agent(sockdir: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(str(sockdir / "agent.sock"))
    server = _Server(fake.sock, _handler(fake))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def toolbin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bin")
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run the shim"
        (d / tool).symlink_to(found)
    return d


@pytest.fixture
def nojq_bin(toolbin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tools minus jq: proves the common path does not start jq (~20 ms each on kind)."""
    d = tmp_path_factory.mktemp("bin-nojq")
    for tool in TOOLS:
        if tool != "jq":
            (d / tool).symlink_to((toolbin / tool).resolve())
    return d


@pytest.fixture(scope="session")
def c_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C shim built from the current source, with the Makefile's command (static if possible)."""
    out = tmp_path_factory.mktemp("cshim") / "netplane"
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build cni/shim/netplane.c (make setup installs it)")
    cmd = ["gcc", *SHIM_CFLAGS, "-o", str(out), *map(str, SHIM_C_SOURCES)]
    if subprocess.run([*cmd, "-static"], capture_output=True).returncode != 0:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def emptybin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bin-empty")


@pytest.fixture(params=["bash", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def shim(impl: str, request: pytest.FixtureRequest) -> Path:
    return SHIM if impl == "bash" else request.getfixturevalue("c_shim")


@pytest.fixture
def runner(toolbin: Path, emptybin: Path, tmp_path: Path):
    """runner(shim) → run(env, stdin, …): the shim with a clean env: only what the test passes
    (plus PATH, TMPDIR, NETPLANE_CNI_SPOOL). PATH: the kind-node tools for bash, nothing for C."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()

    def make(exe: Path):
        def _run(env: dict[str, str], stdin: bytes = b"", timeout: float = 30,
                 path: Path | None = None) -> subprocess.CompletedProcess:
            default_path = toolbin if exe == SHIM else emptybin
            full = {"PATH": str(path or default_path), "TMPDIR": str(tmpdir),
                    "NETPLANE_CNI_SPOOL": str(tmp_path / "spool"), **env}
            proc = subprocess.run([str(exe)], input=stdin, env=full, capture_output=True, timeout=timeout)
            assert list(tmpdir.iterdir()) == [], "the shim left files in TMPDIR"
            return proc
        return _run

    return make


@pytest.fixture
def run(runner, shim: Path):
    return runner(shim)


def conf(version: str = "1.1.0", **extra: Any) -> bytes:
    return json.dumps({"cniVersion": version, "name": "netplane", "type": "netplane", **extra}).encode()


def cni_env(command: str, sock: str | None = None, **extra: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": CID, "CNI_NETNS": "/var/run/netns/cni-1234",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
           "CNI_PATH": "/opt/cni/bin"}
    if sock is not None:
        env["NETPLANE_AGENT_SOCKET"] = sock
    env.update(extra)
    return env


def error_of(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.returncode == 1, proc
    assert proc.stderr == b"", proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- VERSION


def test_shim_is_an_executable_bash_script() -> None:
    assert os.access(SHIM, os.X_OK)
    assert SHIM.read_text().startswith("#!/bin/bash\n")
    assert subprocess.run(["bash", "-n", str(SHIM)]).returncode == 0


def test_version_matches_protocol_and_needs_no_agent_nor_stdin(shim: Path, toolbin: Path,
                                                               sockdir: Path) -> None:
    env = {"PATH": str(toolbin), "CNI_COMMAND": "VERSION",
           "NETPLANE_AGENT_SOCKET": str(sockdir / "nothing-here.sock")}
    # stdin stays open and empty: a shim that read it would hang until the timeout.
    proc = subprocess.Popen([str(shim)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.wait(timeout=10) == 0
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert err == b""
    assert json.loads(out) == protocol.version_reply()


def test_shim_version_list_is_the_protocol_list() -> None:
    m = re.search(r"^readonly SUPPORTED='(.*)'$", SHIM.read_text(), re.M)
    assert m and json.loads(m[1]) == list(protocol.SUPPORTED_VERSIONS)
    c_source = "".join(p.read_text() for p in SHIM_C_SOURCES)
    m = re.search(r'^#define SUPPORTED "(.*)"$', c_source, re.M)
    assert m and json.loads(m[1].replace('\\"', '"')) == list(protocol.SUPPORTED_VERSIONS)


def test_c_shim_needs_only_libc(c_shim: Path) -> None:
    """Static when the toolchain allows; otherwise linked against libc alone (kind nodes have glibc)."""
    out = subprocess.run(["ldd", str(c_shim)], capture_output=True, text=True).stdout
    libs = {line.split()[0] for line in out.splitlines() if "=>" in line}
    assert libs <= {"libc.so.6"}, out


def test_shim_path_prefers_the_compiled_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netplane.cni

    assert netplane.cni.shim_path(str(tmp_path)) == str(tmp_path / "shim" / "netplane")
    compiled = tmp_path / "shim" / "netplane-c"
    compiled.parent.mkdir()
    compiled.write_bytes(b"\x7fELF")
    assert netplane.cni.shim_path(str(tmp_path)) == str(tmp_path / "shim" / "netplane")  # not executable
    compiled.chmod(0o755)
    assert netplane.cni.shim_path(str(tmp_path)) == str(compiled)
    assert netplane.cni.shim_path() in (str(SHIM), str(SHIM.parent / "netplane-c"))


def test_no_command_prints_about_on_stderr_only(run) -> None:
    proc = run({}, b"")
    assert proc.returncode == 0 and proc.stdout == b""
    assert b"netplane" in proc.stderr


# --------------------------------------------------------------------------- forwarding


def test_add_is_forwarded_byte_exact_and_the_reply_passed_through(run, agent: FakeAgent) -> None:
    result = {"cniVersion": "1.1.0", "interfaces": [{"name": "np0123456789a"}],
              "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}]}
    agent.reply(0, result)
    stdin = conf(note="héllo\ttabs 'quotes' \"dq\" $(not run) `x`") + b"\n\n"
    env = cni_env("ADD", agent.sock)
    proc = run(env, stdin)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == shim_reply(0, result)["stdout"].encode()  # verbatim
    [req] = agent.requests
    assert (req.method, req.path) == ("POST", "/v1/cni")
    assert req.headers["Content-Type"] == "application/json"
    got_env, got_stdin = parse_shim_request(req.body)
    assert got_stdin == stdin
    assert got_env == {k: env[k] for k in protocol.SHIM_ENV_KEYS}
    assert set(json.loads(req.body)) == {"env", "stdin"}


def test_unset_env_vars_are_sent_as_empty_strings(run, agent: FakeAgent) -> None:
    proc = run({"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin", "NETPLANE_AGENT_SOCKET": agent.sock},
               conf())
    assert proc.returncode == 0 and proc.stdout == b""
    env, _ = parse_shim_request(agent.requests[0].body)
    assert env == {"CNI_COMMAND": "STATUS", "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "",
                   "CNI_ARGS": "", "CNI_PATH": "/opt/cni/bin"}


@pytest.mark.parametrize("exit_code", [1, 7, 255])
def test_agent_errors_and_exit_codes_pass_through(run, agent: FakeAgent, exit_code: int) -> None:
    err = {"cniVersion": "1.0.0", "code": 101, "msg": "no IP addresses available"}
    agent.reply(exit_code, err)
    proc = run(cni_env("ADD", agent.sock), conf("1.0.0"))
    assert proc.returncode == exit_code
    assert json.loads(proc.stdout) == err


def test_stdout_keeps_trailing_newlines(run, agent: FakeAgent) -> None:
    agent.raw(200, json.dumps({"exitCode": 0, "stdout": "{}\n\n"}).encode())
    proc = run(cni_env("ADD", agent.sock), conf())
    assert proc.stdout == b"{}\n\n"


@pytest.mark.parametrize("command", ["CHECK", "GC", "DEL"])
def test_other_verbs_are_forwarded(run, agent: FakeAgent, command: str) -> None:
    proc = run(cni_env(command, agent.sock), conf())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert parse_shim_request(agent.requests[0].body)[0]["CNI_COMMAND"] == command


def test_empty_stdin_is_forwarded(run, agent: FakeAgent) -> None:
    proc = run(cni_env("DEL", agent.sock), b"")
    assert proc.returncode == 0
    assert parse_shim_request(agent.requests[0].body)[1] == b""


def test_one_megabyte_stdin_round_trips(run, agent: FakeAgent) -> None:
    stdin = conf(padding="x" * (1 << 20), more=["ü" * 1000])
    assert len(stdin) > 1 << 20
    proc = run(cni_env("ADD", agent.sock), stdin)
    assert proc.returncode == 0
    assert parse_shim_request(agent.requests[0].body)[1] == stdin


# The reply's stdout is unescaped in bash when it can be, else by jq: both must be verbatim.
TRICKY_STDOUT = [
    "", "{}", '{"msg":"a \\"quoted\\" word"}', "back\\slash \\\\ double", "sl/ash \\/ esc",
    "tab\tnl\ncr\rbs\bff\f", "literal \\n and \\t and \\c and \\x41 and \\u0041 and %s %d %b",
    "trailing newlines\n\n", "ünïcödé ✓", "\x01\x1f\x7f controls", '\\"', "x" * 70000,
]


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("text", TRICKY_STDOUT, ids=range(len(TRICKY_STDOUT)))
def test_reply_stdout_is_printed_verbatim(run, agent: FakeAgent, text: str, ensure_ascii: bool) -> None:
    agent.raw(200, json.dumps({"exitCode": 3, "stdout": text}, ensure_ascii=ensure_ascii).encode())
    proc = run(cni_env("ADD", agent.sock), conf())
    assert proc.returncode == 3 and proc.stderr == b""
    assert proc.stdout == text.encode()


@pytest.mark.parametrize("args", [
    "IgnoreUnknown=1;K8S_POD_NAME=a\\b\"c", "tab\there", "ctl\x01\x1f\x7fend", "ünïcödé", "100% $HOME `x`",
])
def test_env_values_are_json_escaped_exactly(run, agent: FakeAgent, args: str) -> None:
    proc = run({**cni_env("ADD", agent.sock), "CNI_ARGS": args}, conf())
    assert proc.returncode == 0, proc
    assert parse_shim_request(agent.requests[0].body)[0]["CNI_ARGS"] == args


def test_common_path_does_not_need_jq(run, agent: FakeAgent, nojq_bin: Path, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    result = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}]}
    agent.reply(0, result)
    proc = run(cni_env("ADD", agent.sock), conf(), path=nojq_bin)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert json.loads(proc.stdout) == result
    proc = run(cni_env("DEL", agent.sock), conf(), path=nojq_bin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    # Agent down: the spooled DEL is written without jq too.
    proc = run(cni_env("DEL", agent.sock + ".gone"), conf(), path=nojq_bin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert [r.command for r in map(parse_spooled_del, (p.read_bytes() for p in spool.iterdir()))] == ["DEL"]


def test_escaped_slashes_from_other_encoders(run, agent: FakeAgent) -> None:
    agent.raw(200, b'{"exitCode":0,"stdout":"{\\"dst\\":\\"0.0.0.0\\/0\\"} \\\\\\/"}')
    proc = run(cni_env("ADD", agent.sock), conf())
    assert proc.stdout == b'{"dst":"0.0.0.0/0"} \\/'


# --------------------------------------------------------------------------- socket selection


def test_socket_from_env_beats_config(run, agent: FakeAgent, sockdir: Path) -> None:
    proc = run(cni_env("ADD", agent.sock), conf(socket=str(sockdir / "other.sock")))
    assert proc.returncode == 0 and len(agent.requests) == 1


def test_socket_from_config(run, agent: FakeAgent) -> None:
    proc = run(cni_env("ADD"), conf(socket=agent.sock))
    assert proc.returncode == 0 and len(agent.requests) == 1


def test_socket_from_config_needs_no_jq(run, agent: FakeAgent, nojq_bin: Path) -> None:
    # The sandbox and kind conflists carry `socket`: that path must not start jq (~25 ms).
    proc = run(cni_env("ADD"), conf(socket=agent.sock), path=nojq_bin)
    assert proc.returncode == 0 and len(agent.requests) == 1, proc.stdout


def test_socket_key_twice_is_left_to_jq(run, agent: FakeAgent, sockdir: Path) -> None:
    # A nested "socket" key elsewhere must not win over the top-level one.
    cfg = json.loads(conf(socket=agent.sock))
    cfg = {"args": {"socket": str(sockdir / "wrong.sock")}, **cfg}
    proc = run(cni_env("ADD"), json.dumps(cfg).encode())
    assert proc.returncode == 0 and len(agent.requests) == 1, proc.stdout


def test_socket_default(run) -> None:
    if os.path.exists(protocol.DEFAULT_SOCKET):
        pytest.skip("a netplane agent socket exists on this machine")
    out = error_of(run(cni_env("ADD"), conf()))
    assert out["code"] == 11
    assert f"unreachable at {protocol.DEFAULT_SOCKET}:" in out["msg"]


def test_config_socket_of_the_wrong_type_is_ignored(run) -> None:
    if os.path.exists(protocol.DEFAULT_SOCKET):
        pytest.skip("a netplane agent socket exists on this machine")
    out = error_of(run(cni_env("ADD"), conf(socket=123)))
    assert out["code"] == 11 and f"unreachable at {protocol.DEFAULT_SOCKET}:" in out["msg"]


# --------------------------------------------------------------------------- agent unreachable


@pytest.mark.parametrize("command,code", [("ADD", 11), ("CHECK", 11), ("GC", 11), ("STATUS", 50)])
def test_agent_down(run, sockdir: Path, command: str, code: int) -> None:
    sock = str(sockdir / "missing.sock")
    out = error_of(run(cni_env(command, sock), conf("0.4.0" if command in ("ADD", "CHECK") else "1.1.0")))
    assert out["code"] == code
    assert out["msg"].startswith(f"netplane agent unreachable at {sock}: ")
    assert out["cniVersion"] == ("0.4.0" if command in ("ADD", "CHECK") else "1.1.0")


def test_connection_refused_on_a_stale_socket(run, sockdir: Path) -> None:
    sock = str(sockdir / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()  # the file stays, nobody listens: connect() → ECONNREFUSED
    out = error_of(run(cni_env("ADD", sock), conf()))
    assert out["code"] == 11 and sock in out["msg"]


def test_non_200_counts_as_unreachable(run, agent: FakeAgent) -> None:
    agent.raw(500, b'{"error": "boom"}')
    out = error_of(run(cni_env("ADD", agent.sock), conf()))
    assert out["code"] == 11 and "HTTP 500" in out["msg"]


@pytest.mark.parametrize("body", [
    b"not json", b'{"stdout": ""}', b'{"exitCode": 300, "stdout": ""}', b'{"exitCode": 1.5}',
    b'{"exitCode": 0, "stdout": {"a": 1}}', b"[]", b"", b"{}{}", b'{"exitCode": 0}{"exitCode": 1}',
    b'{"exitCode": 0, "stdout": "raw \x01 control"}', b'{"exitCode": 256, "stdout": ""}',
])
def test_malformed_reply_counts_as_unreachable(run, agent: FakeAgent, body: bytes) -> None:
    agent.raw(200, body)
    out = error_of(run(cni_env("ADD", agent.sock), conf()))
    assert out["code"] == 11 and "malformed reply" in out["msg"]


def test_timeout_counts_as_unreachable(run, agent: FakeAgent) -> None:
    agent.raw(200, json.dumps(shim_reply(0, None)).encode(), delay=3)
    start = time.monotonic()
    out = error_of(run({**cni_env("ADD", agent.sock), "NETPLANE_CNI_TIMEOUT": "1"}, conf()))
    assert time.monotonic() - start < 2.9
    assert out["code"] == 11 and "timed out" in out["msg"].lower()


def test_error_version_falls_back_to_current_for_unreadable_stdin(run, sockdir: Path) -> None:
    for stdin in (b"", b"not json", b'{"cniVersion": 1}', b'{"cniVersion": "x.y"}', b"{}{}"):
        out = error_of(run(cni_env("ADD", str(sockdir / "none.sock")), stdin))
        assert out["cniVersion"] == "1.1.0", stdin


# --------------------------------------------------------------------------- DEL spool


def test_del_with_agent_down_succeeds_and_spools(run, sockdir: Path, tmp_path: Path) -> None:
    env = cni_env("DEL", str(sockdir / "missing.sock"))
    stdin = conf("1.0.0", prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/32"}]})
    proc = run(env, stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    spool = tmp_path / "spool"
    assert [p.name for p in spool.iterdir()] == [f"{CID}-eth0.json"]
    path = spool / f"{CID}-eth0.json"
    assert path.stat().st_mode & 0o077 == 0
    data = path.read_bytes()
    assert parse_shim_request(data) == ({k: env[k] for k in protocol.SHIM_ENV_KEYS}, stdin)
    req = parse_spooled_del(data)
    assert (req.command, req.container_id, req.ifname, req.netns) == ("DEL", CID, "eth0", env["CNI_NETNS"])
    assert req.cni_version == "1.0.0" and req.config["name"] == "netplane"
    assert req.args["K8S_POD_NAME"] == "web"


def test_del_spool_with_empty_stdin_and_no_netns(run, sockdir: Path, tmp_path: Path) -> None:
    env = cni_env("DEL", str(sockdir / "missing.sock"), CNI_NETNS="")
    assert run(env, b"").returncode == 0
    req = parse_spooled_del((tmp_path / "spool" / f"{CID}-eth0.json").read_bytes())
    assert (req.container_id, req.ifname, req.netns, req.config) == (CID, "eth0", "", {})


def test_del_spool_replaces_an_earlier_entry(run, sockdir: Path, tmp_path: Path) -> None:
    env = cni_env("DEL", str(sockdir / "missing.sock"))
    run(env, conf("1.0.0"))
    run(env, conf("1.1.0"))
    files = list((tmp_path / "spool").iterdir())
    assert len(files) == 1
    assert parse_spooled_del(files[0].read_bytes()).cni_version == "1.1.0"


@pytest.mark.parametrize("body", [None, b"garbage"])
def test_del_spools_when_the_agent_answers_badly(run, agent: FakeAgent, tmp_path: Path, body) -> None:
    agent.raw(503, b"{}") if body is None else agent.raw(200, body)
    proc = run(cni_env("DEL", agent.sock), conf())
    assert (proc.returncode, proc.stdout) == (0, b"")
    assert (tmp_path / "spool" / f"{CID}-eth0.json").exists()


@pytest.mark.parametrize("cid,ifname", [("../../etc/passwd", "eth0"), ("", "eth0"), (CID, "a/b"),
                                        (CID, ".."), (CID, "x" * 16), (CID, "")])
def test_del_spool_refuses_names_that_could_escape(run, sockdir: Path, tmp_path: Path,
                                                    cid: str, ifname: str) -> None:
    out = error_of(run(cni_env("DEL", str(sockdir / "missing.sock"), CNI_CONTAINERID=cid,
                               CNI_IFNAME=ifname), conf()))
    assert out["code"] == 4
    spool = tmp_path / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []


def test_del_that_cannot_be_recorded_asks_for_a_retry(run, sockdir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = error_of(run({**cni_env("DEL", str(sockdir / "missing.sock")),
                        "NETPLANE_CNI_SPOOL": str(blocker / "spool")}, conf()))
    assert out["code"] == 11 and "could not record the DEL" in out["msg"]


def test_no_temp_files_left_in_the_spool(run, sockdir: Path, tmp_path: Path) -> None:
    env = cni_env("DEL", str(sockdir / "missing.sock"))
    for i in range(3):
        run({**env, "CNI_IFNAME": f"eth{i}"}, conf())
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [f"{CID}-eth{i}.json" for i in range(3)]


# --------------------------------------------------------------------------- output discipline


def test_debug_logs_go_to_stderr_only(run, sockdir: Path) -> None:
    proc = run({**cni_env("ADD", str(sockdir / "none.sock")), "NETPLANE_CNI_DEBUG": "1"}, conf())
    assert json.loads(proc.stdout)["code"] == 11  # stdout is exactly one JSON document
    assert b"unreachable" in proc.stderr


def test_the_shim_does_not_eval_config_content(run, agent: FakeAgent, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker})`touch {marker}`;touch {marker}"
    proc = run({**cni_env("ADD", agent.sock), "CNI_ARGS": evil}, conf(socket=evil, cniVersion=evil))
    assert proc.returncode == 0
    assert not marker.exists()
    assert parse_shim_request(agent.requests[0].body)[0]["CNI_ARGS"] == evil


# --------------------------------------------------------------------------- both shims, same bytes


SAME_CASES = [
    # (name, env overrides, stdin, agent reply or None for "no agent")
    ("add-down-0.4.0", {"CNI_COMMAND": "ADD"}, conf("0.4.0"), None),
    ("status-down", {"CNI_COMMAND": "STATUS"}, conf(), None),
    ("check-down-garbage-stdin", {"CNI_COMMAND": "CHECK"}, b"{}{}", None),
    ("gc-down-bad-version", {"CNI_COMMAND": "GC"}, b'{"cniVersion": "1.x.0"}', None),
    ("del-down-bad-cid", {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "ü\t\"x\\"}, conf("1.0.0"), None),
    ("del-down-bad-ifname", {"CNI_COMMAND": "DEL", "CNI_IFNAME": "a b"}, conf(), None),
    ("version-escaped-in-config", {"CNI_COMMAND": "ADD"}, b'{"cniVers\\u0069on": "0.3.1"}', None),
    ("reply-tricky", {"CNI_COMMAND": "ADD"}, conf(),
     (200, json.dumps({"exitCode": 7, "stdout": "ü \\ \" \t\n\x01 end\n\n"}).encode())),
    ("reply-ascii-escapes", {"CNI_COMMAND": "ADD"}, conf(),
     (200, json.dumps({"exitCode": 0, "stdout": "ünï ✓ \U0001F600"}, ensure_ascii=True).encode())),
    ("reply-http-500", {"CNI_COMMAND": "ADD"}, conf("1.0.0"), (500, b"{}")),
    ("reply-malformed", {"CNI_COMMAND": "STATUS"}, conf(), (200, b'{"exitCode": 1.5, "stdout": ""}')),
    ("reply-null-stdout", {"CNI_COMMAND": "CHECK"}, conf(), (200, b'{"exitCode": 0, "stdout": null}')),
]


@pytest.mark.parametrize("name,env,stdin,reply", SAME_CASES, ids=[c[0] for c in SAME_CASES])
def test_same_output_from_both_shims(runner, c_shim: Path, sockdir: Path, name: str, env: dict[str, str],
                                     stdin: bytes, reply: tuple[int, bytes] | None) -> None:
    outputs, bodies = [], []
    for exe in (SHIM, c_shim):
        if reply is None:
            sock = str(sockdir / "missing.sock")
            proc = runner(exe)({**cni_env("ADD", sock), **env}, stdin)
        else:
            fake = FakeAgent(str(sockdir / f"agent-{exe.parent.name}.sock"))
            fake.raw(*reply)
            server = _Server(fake.sock, _handler(fake))
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            try:
                proc = runner(exe)({**cni_env("ADD", fake.sock), **env}, stdin)
            finally:
                server.shutdown()
                server.server_close()
            bodies.append(parse_shim_request(fake.requests[0].body))
            proc.stdout = proc.stdout.replace(fake.sock.encode(), b"<sock>")
        outputs.append((proc.returncode, proc.stdout, proc.stderr))
    assert outputs[0] == outputs[1]
    if bodies:
        assert bodies[0] == bodies[1]


# --------------------------------------------------------------------------- HTTP edge cases


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (head, then a Content-Length body) from a shim's connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
    while len(body) < length:
        body += conn.recv(65536)


def _raw_server(sock: str, answer: bytes, backlog: int = 5):
    """A unix server that reads one request (headers + Content-Length body) and writes `answer`
    verbatim, then closes: for replies http.server would not produce."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock)
    srv.listen(backlog)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                _read_request(conn)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"d\r\n{\"exitCode\": \r\n12\r\n3, \"stdout\": \"ok\"}\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"exitCode\": 3, \"stdout\": \"ok\"}",
], ids=["chunked", "until-eof"])
def test_replies_without_content_length(run, sockdir: Path, answer: bytes) -> None:
    sock = str(sockdir / "raw.sock")
    srv = _raw_server(sock, answer)
    try:
        proc = run(cni_env("ADD", sock), conf())
    finally:
        srv.close()
    assert (proc.returncode, proc.stdout) == (3, b"ok")


def test_c_shim_bounds_the_reply_size(runner, c_shim: Path, agent: FakeAgent) -> None:
    agent.raw(200, json.dumps({"exitCode": 0, "stdout": "x" * (17 << 20)}).encode())
    out = error_of(runner(c_shim)(cni_env("ADD", agent.sock), conf()))
    assert out["code"] == 11 and "malformed reply" in out["msg"] and "bytes" in out["msg"]


def test_c_shim_bounds_stdin(runner, c_shim: Path, agent: FakeAgent) -> None:
    out = error_of(runner(c_shim)(cni_env("ADD", agent.sock), b" " * ((64 << 20) + 1)))
    assert out["code"] == 5 and "64 MiB" in out["msg"]
    assert agent.requests == []


def test_c_shim_waits_when_the_agent_backlog_is_full(runner, c_shim: Path, sockdir: Path) -> None:
    """A unix socket with a full accept queue makes curl's non-blocking connect fail at once
    (EAGAIN, the shim's code 11); the C shim's connect waits for a slot (up to 5 s)."""
    sock = str(sockdir / "slow.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock)
    srv.listen(0)
    procs = [subprocess.Popen([str(c_shim)], env={**cni_env("ADD", sock), "PATH": "/nonexistent"},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(6)]
    for p in procs:
        p.stdin.write(conf())  # type: ignore[union-attr]
        p.stdin.close()  # type: ignore[union-attr]
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 31\r\n\r\n{"exitCode": 0, "stdout": "ok"}'
    try:
        time.sleep(0.3)  # every shim is now connecting or queued
        for _ in procs:
            conn, _ = srv.accept()
            with conn:
                _read_request(conn)
                conn.sendall(answer)
        results = [(p.wait(10), p.stdout.read()) for p in procs]  # type: ignore[union-attr]
    finally:
        srv.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()  # type: ignore[union-attr]
            p.stderr.close()  # type: ignore[union-attr]
    assert results == [(0, b"ok")] * len(procs)
