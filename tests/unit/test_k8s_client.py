"""The HTTP client against a scripted HTTP/1.1 server on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from netplane.errors import (
    ApiError,
    ApiUnavailableError,
    ConflictError,
    GoneError,
    NotFoundError,
)
from netplane.k8s.client import Client, WatchEvent, resource_path
from netplane.k8s.config import ClusterConfig


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client_port: int


Route = Callable[["Handler", Seen], None]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked encoding
    # Headers and body go out in separate writes; without TCP_NODELAY each answer would wait
    # for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, parts.path,
                    {k: v[0] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()}, body,
                    self.client_address[1])
        self.server.seen.append(seen)
        route = self.server.routes.get((self.command, parts.path)) or self.server.default
        route(self, seen)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def send_json(self, code: int, doc: Any, *, close: bool = False) -> None:
        data = orjson.dumps(doc)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def not_found(h: Handler, seen: Seen) -> None:
    h.send_json(404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                      "message": f'path "{seen.path}" not found', "code": 404})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[tuple[str, str], Route] = {}
        self.default: Route = not_found
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(ClusterConfig(server=server.url), timeout=5.0)
    try:
        yield c
    finally:
        c.close()


def obj(name: str, rv: str, ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}}


# ------------------------------------------------------------------------------ resource_path


def test_resource_path() -> None:
    assert resource_path("v1", "services") == "/api/v1/services"
    assert resource_path("v1", "nodes", name="n1") == "/api/v1/nodes/n1"
    assert (resource_path("discovery.k8s.io/v1", "endpointslices", "x")
            == "/apis/discovery.k8s.io/v1/namespaces/x/endpointslices")
    assert (resource_path("v1", "pods", "ns", "p", "status")
            == "/api/v1/namespaces/ns/pods/p/status")
    assert resource_path("v1", "pods", "ns", "a/b") == "/api/v1/namespaces/ns/pods/a%2Fb"
    with pytest.raises(ValueError):
        resource_path("v1", "pods", subresource="status")


# --------------------------------------------------------------------------------------- verbs


def test_get_sends_headers_and_rereads_token(server: Server, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one")
    server.routes[("GET", "/api/v1/namespaces/default/services/web")] = (
        lambda h, s: h.send_json(200, obj("web", "5")))
    with Client(ClusterConfig(server=server.url, token_file=str(token))) as c:
        assert c.get("/api/v1/namespaces/default/services/web")["metadata"]["name"] == "web"
        token.write_text("two")
        c.get("/api/v1/namespaces/default/services/web")
    first, second = server.seen
    assert first.headers["authorization"] == "Bearer one"
    assert second.headers["authorization"] == "Bearer two"
    assert first.headers["accept"] == "application/json"
    assert first.headers["user-agent"].startswith("netplane/")


def test_list_query_and_list_all_follows_continue(server: Server, client: Client) -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}

    def route(h: Handler, s: Seen) -> None:
        names, cont = pages[s.query.get("continue")]
        meta: dict[str, Any] = {"resourceVersion": "100" if "continue" not in s.query else "999"}
        if cont:
            meta["continue"] = cont
        h.send_json(200, {"kind": "ServiceList", "apiVersion": "v1", "metadata": meta,
                          "items": [obj(n, "1") for n in names]})

    server.routes[("GET", "/api/v1/services")] = route
    page = client.list("/api/v1/services", label_selector="app=web,tier!=db",
                       field_selector="metadata.name=a", limit=2, resource_version="0")
    assert [i["metadata"]["name"] for i in page["items"]] == ["a", "b"]
    assert server.seen[0].query == {"labelSelector": "app=web,tier!=db",
                                    "fieldSelector": "metadata.name=a", "limit": "2",
                                    "resourceVersion": "0"}
    server.seen.clear()
    everything = client.list_all("/api/v1/services", limit=2)
    assert [i["metadata"]["name"] for i in everything["items"]] == ["a", "b", "c", "d", "e"]
    assert everything["metadata"]["resourceVersion"] == "100"  # the first page's snapshot
    assert everything["kind"] == "ServiceList"
    assert [s.query.get("continue") for s in server.seen] == [None, "c1", "c2"]
    # keep-alive: all three pages went over one connection
    assert len({s.client_port for s in server.seen}) == 1


def test_write_verbs(server: Server, client: Client) -> None:
    def echo(h: Handler, s: Seen) -> None:
        h.send_json(201 if s.method == "POST" else 200,
                    {"echo": orjson.loads(s.body) if s.body else None,
                     "ct": s.headers.get("content-type"), "q": s.query})

    for method in ("POST", "PUT", "PATCH", "DELETE"):
        server.routes[(method, "/api/v1/namespaces/default/services")] = echo
        server.routes[(method, "/api/v1/namespaces/default/services/web")] = echo
    coll = "/api/v1/namespaces/default/services"
    one = coll + "/web"
    created = client.create(coll, obj("web", ""))
    assert created["echo"]["metadata"]["name"] == "web" and created["ct"] == "application/json"
    assert client.update(one, obj("web", "3"))["echo"]["metadata"]["resourceVersion"] == "3"
    assert client.patch(one, {"spec": {"x": 1}})["ct"] == "application/merge-patch+json"
    assert (client.patch(one, {"spec": {}}, patch_type="strategic")["ct"]
            == "application/strategic-merge-patch+json")
    got = client.patch(one, [{"op": "remove", "path": "/spec/x"}], patch_type="json")
    assert got["ct"] == "application/json-patch+json" and got["echo"][0]["op"] == "remove"
    with pytest.raises(ValueError, match="patch_type"):
        client.patch(one, {}, patch_type="apply")
    assert client.delete(one)["q"] == {}
    assert client.delete(one, grace_period_seconds=0)["q"] == {"gracePeriodSeconds": "0"}


def test_status_errors(server: Server, client: Client) -> None:
    def status(code: int, reason: str) -> Route:
        return lambda h, s: h.send_json(code, {"kind": "Status", "status": "Failure",
                                               "reason": reason, "code": code,
                                               "message": f"services \"web\" {reason}"})

    server.routes[("GET", "/404")] = status(404, "NotFound")
    server.routes[("POST", "/409")] = status(409, "AlreadyExists")
    server.routes[("GET", "/410")] = status(410, "Expired")
    server.routes[("GET", "/422")] = status(422, "Invalid")

    def text_500(h: Handler, s: Seen) -> None:
        data = b"internal kaboom"
        h.send_response(500)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    server.routes[("GET", "/500")] = text_500
    with pytest.raises(NotFoundError) as nf:
        client.get("/404")
    assert nf.value.code == 404 and nf.value.reason == "NotFound"
    assert 'services "web"' in str(nf.value)
    with pytest.raises(ConflictError):
        client.create("/409", {})
    with pytest.raises(GoneError):
        client.get("/410")
    with pytest.raises(ApiError) as invalid:
        client.get("/422")
    assert type(invalid.value) is ApiError and invalid.value.code == 422
    with pytest.raises(ApiError, match="kaboom") as ie:
        client.get("/500")
    assert ie.value.code == 500
    # The connection stays usable after error answers.
    with pytest.raises(NotFoundError):
        client.get("/404")
    assert len({s.client_port for s in server.seen}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_unavailable() -> None:
    c = Client(ClusterConfig(server=f"http://127.0.0.1:{_free_port()}"), timeout=2.0)
    with pytest.raises(ApiUnavailableError, match="127.0.0.1"):
        c.get("/api/v1/services")
    w = c.watch("/api/v1/services", resource_version="1")
    with pytest.raises(ApiUnavailableError):
        next(iter(w))


def test_reconnects_after_server_closes_idle_connection(server: Server, client: Client) -> None:
    calls = {"n": 0}

    def route(h: Handler, s: Seen) -> None:
        calls["n"] += 1
        h.send_json(200, {"n": calls["n"]}, close=calls["n"] == 1)

    server.routes[("GET", "/x")] = route
    assert client.get("/x") == {"n": 1}
    time.sleep(0.05)
    assert client.get("/x") == {"n": 2}
    assert client.get("/x") == {"n": 3}
    ports = [s.client_port for s in server.seen]
    assert ports[0] != ports[1] and ports[1] == ports[2]


def test_retry_once_on_stale_reused_connection(
        server: Server, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes[("GET", "/x")] = lambda h, s: h.send_json(200, {"ok": True})
    assert client.get("/x") == {"ok": True}
    # Break the pooled connection in a way the idle check cannot see, so the retry path (not
    # the check) has to recover the GET.
    monkeypatch.setattr("netplane.k8s.client._peer_closed", lambda sock: False)
    conn = client._local.conn
    assert conn is not None and conn.sock is not None
    conn.sock.shutdown(socket.SHUT_WR)  # the next send on it fails with EPIPE
    assert client.get("/x") == {"ok": True}
    assert len({s.client_port for s in server.seen}) == 2
    # A POST is not replayed: a failure on a reused connection surfaces.
    server.routes[("POST", "/x")] = lambda h, s: h.send_json(201, {})
    conn = client._local.conn
    assert conn is not None and conn.sock is not None
    conn.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ApiUnavailableError):
        client.create("/x", {})


def test_one_connection_per_thread(server: Server, client: Client) -> None:
    server.routes[("GET", "/x")] = lambda h, s: h.send_json(200, {})
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        for _ in range(3):
            client.get("/x")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(server.seen) == 9
    assert len({s.client_port for s in server.seen}) == 3


def test_server_path_prefix(server: Server) -> None:
    server.routes[("GET", "/prefix/api/v1/nodes")] = lambda h, s: h.send_json(200, {"ok": 1})
    with Client(ClusterConfig(server=server.url + "/prefix/")) as c:
        assert c.get("/api/v1/nodes") == {"ok": 1}


# --------------------------------------------------------------------------------------- watch


def ev(etype: str, name: str, rv: str) -> bytes:
    return orjson.dumps({"type": etype, "object": obj(name, rv)}) + b"\n"


def test_watch_streams_chunked_events(server: Server, client: Client) -> None:
    def route(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(ev("ADDED", "a", "11"))
        h.chunk(ev("MODIFIED", "a", "12") + ev("DELETED", "a", "13"))  # two in one chunk
        half = ev("ADDED", "b", "14")
        h.chunk(half[:10])  # one event split over chunks
        h.chunk(half[10:])
        h.chunk(b"\n")  # blank keep-alive line
        h.chunk(orjson.dumps({"type": "BOOKMARK", "object": {
            "kind": "Service", "metadata": {"resourceVersion": "20"}}}))  # no trailing newline
        h.end_chunks()

    server.routes[("GET", "/api/v1/services")] = route
    with client.watch("/api/v1/services", resource_version="10", timeout_seconds=300,
                      label_selector="app=x") as w:
        events = list(w)
    assert [(e.type, e.resource_version) for e in events] == [
        ("ADDED", "11"), ("MODIFIED", "12"), ("DELETED", "13"), ("ADDED", "14"),
        ("BOOKMARK", "20")]
    assert events[0] == WatchEvent("ADDED", obj("a", "11"))
    assert server.seen[0].query == {"watch": "true", "resourceVersion": "10",
                                    "allowWatchBookmarks": "true", "timeoutSeconds": "300",
                                    "labelSelector": "app=x"}


def test_watch_error_event_raises_gone(server: Server, client: Client) -> None:
    def route(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(ev("ADDED", "a", "11"))
        h.chunk(orjson.dumps({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
            "message": "too old resource version: 5 (11)", "code": 410}}) + b"\n")
        h.end_chunks()

    server.routes[("GET", "/api/v1/services")] = route
    w = client.watch("/api/v1/services", resource_version="5")
    it = iter(w)
    assert next(it).type == "ADDED"
    with pytest.raises(GoneError, match="too old"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_watch_http_410_raises_from_iterator(server: Server, client: Client) -> None:
    server.routes[("GET", "/api/v1/services")] = lambda h, s: h.send_json(
        410, {"kind": "Status", "reason": "Expired", "code": 410, "message": "too old"})
    w = client.watch("/api/v1/services", resource_version="1")
    with pytest.raises(GoneError):
        next(iter(w))


def test_watch_connection_drop_raises_unavailable(server: Server, client: Client) -> None:
    def route(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(ev("ADDED", "a", "11"))
        h.wfile.write(b"40\r\n{\"type\":")  # a chunk cut short, then the socket goes away
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    server.routes[("GET", "/api/v1/services")] = route
    w = client.watch("/api/v1/services", resource_version="1")
    it = iter(w)
    assert next(it).resource_version == "11"
    with pytest.raises(ApiUnavailableError, match="connection lost"):
        next(it)


def test_watch_malformed_event(server: Server, client: Client) -> None:
    def route(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(b"{not json}\n")
        h.end_chunks()

    server.routes[("GET", "/api/v1/services")] = route
    with pytest.raises(ApiUnavailableError, match="malformed"):
        list(client.watch("/api/v1/services", resource_version="1"))


def test_watch_close_from_other_thread_is_prompt(server: Server, client: Client) -> None:
    release = threading.Event()

    def route(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(ev("ADDED", "a", "11"))
        release.wait(10)  # then hold the stream open, sending nothing

    server.routes[("GET", "/api/v1/services")] = route
    w = client.watch("/api/v1/services", resource_version="1", timeout_seconds=600)
    got: list[WatchEvent] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for e in w:
                got.append(e)
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    w.close()
    t.join(5)
    release.set()
    assert not t.is_alive() and time.monotonic() - start < 2
    assert errors == [] and len(got) == 1 and w.closed


def test_watch_close_before_open(server: Server, client: Client) -> None:
    w = client.watch("/api/v1/services", resource_version="1")
    w.close()
    assert list(w) == []
    assert server.seen == []


def test_watch_uses_its_own_connection(server: Server, client: Client) -> None:
    def stream(h: Handler, s: Seen) -> None:
        h.start_chunked()
        h.chunk(ev("ADDED", "a", "2"))
        h.end_chunks()

    server.routes[("GET", "/api/v1/services")] = stream
    server.routes[("GET", "/x")] = lambda h, s: h.send_json(200, {})
    client.get("/x")
    with client.watch("/api/v1/services", resource_version="1") as w:
        assert [e.type for e in w] == ["ADDED"]
    client.get("/x")
    ports = [s.client_port for s in server.seen]
    assert ports[0] == ports[2] != ports[1]
