"""HTTP for the embedded apiserver: URL routing, query parsing, content negotiation (JSON or
kubectl's server-side Table), request bodies (JSON/YAML, size-limited) and chunked watch
streams. Everything an API verb means lives in api.py; this module only translates.

A threaded stdlib server is enough here: one thread per connection, watches hold theirs.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import yaml

from netplane.apiserver import discovery, openapi
from netplane.apiserver import status as st
from netplane.apiserver.api import Api, Selection, WatchItem
from netplane.apiserver.resources import ResourceType, lookup
from netplane.apiserver.store import Stored
from netplane.apiserver.tables import table_for

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # the real server's request size limit
_DIGITS = re.compile(r"[0-9]+")
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")  # the verbs whose handlers read a body
DEFAULT_WATCH_TIMEOUT = 1800.0


@dataclass(frozen=True, slots=True)
class Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def route(path: str) -> Route | dict[str, Any] | None:
    """Resolve a URL path to a resource Route, a discovery document, or None (404)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return discovery.resource_list(group, version)
    ns: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and group == "":
        candidate = lookup(group, version, rest[2])
        if candidate is not None and candidate.namespaced:
            ns, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and len(rest) >= 3 and group:
        ns, rest = rest[1], rest[2:]
    rt = lookup(group, version, rest[0])
    if rt is None or len(rest) > 3:
        return None
    name = rest[1] if len(rest) >= 2 else None
    sub = rest[2] if len(rest) == 3 else None
    if sub is not None and sub not in rt.subresources:
        return None
    if ns is not None and not rt.namespaced:
        return None
    return Route(rt, ns, name, sub)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: an alias bomb in a 3 MiB body must not expand to gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not accepted")
        return super().compose_node(parent, index)


def _q(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _include_object(query: dict[str, list[str]]) -> str:
    value = _q(query, "includeObject") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise st.bad_request(f'unrecognized includeObject value: "{value}"')
    return value


def _flag(query: dict[str, list[str]], key: str) -> bool:
    return (_q(query, key) or "").lower() in ("true", "1")


def _int(query: dict[str, list[str]], key: str) -> int | None:
    value = _q(query, key)
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise st.bad_request(f"invalid value for {key}: {value!r}") from None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "netplane-apiserver"
    # Headers and body go out as separate writes; with Nagle on, each reply waits ~40 ms for the
    # client's delayed ACK.
    disable_nagle_algorithm = True
    api: Api  # set on the subclass made by make_server
    server_address_text: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.client_address[0], format % args)

    # -- plumbing ---------------------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        if self.close_connection:
            # Say so: a keep-alive client would send its next request into a closing connection.
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, orjson.dumps(obj))

    def _content_length(self) -> int:
        """The declared body length. One that is not a plain decimal number, or several that
        disagree, is a 400 and ends the connection: where the body ends is unknown."""
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        text = values.pop()
        if values or not _DIGITS.fullmatch(text):
            self.close_connection = self._body_read = True  # (the body cannot be read, or drained)
            raise st.bad_request("invalid Content-Length")
        return int(text)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            # The chunked body stays unread: nothing after it on this connection is a request.
            self.close_connection = self._body_read = True
            raise st.ApiStatus(411, "LengthRequired", "chunked request bodies are not supported; send Content-Length")
        length = self._content_length()
        if length > MAX_BODY:
            # Do not read (or keep) a connection carrying a huge body.
            self.close_connection = self._body_read = True
            raise st.too_large(f"the request body is too large: {length} bytes, limit {MAX_BODY}")
        raw = self.rfile.read(length) if length > 0 else b""
        if len(raw) < length:  # the client gave up half-way: never act on a truncated body
            self.close_connection = self._body_read = True
            raise st.bad_request(f"the request body ended after {len(raw)} of {length} bytes")
        return raw

    def _decode(self, raw: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if not raw:
            raise st.bad_request("the request body is empty")
        if ctype in ("application/json", "*/*", ""):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise st.bad_request(f"couldn't decode the request body as JSON: {e}") from None
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
            try:
                return yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 - safe loader subclass
            except yaml.YAMLError as e:
                raise st.bad_request(f"couldn't decode the request body as YAML: {e}") from None
            except RecursionError:  # PyYAML's composer recurses once per nesting level
                raise st.bad_request("couldn't decode the request body as YAML: nested too deeply") from None
        raise st.unsupported_media_type(f"the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {ctype}")

    def _wants_table(self) -> bool:
        accept = self.headers.get("Accept") or ""
        return "as=Table" in accept

    def _check_accept(self) -> None:
        accept = (self.headers.get("Accept") or "*/*").lower()
        if "json" in accept or "*/*" in accept or "yaml" in accept:
            return
        raise st.not_acceptable("only application/json is served (no protobuf)")

    # -- verbs --------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def __getattr__(self, name: str) -> Any:
        # Any other method (OPTIONS, TRACE, FOO...) gets the real server's JSON 405 (or 404 for an
        # unknown path) instead of http.server's HTML 501.
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            try:
                url = urlsplit(self.path)
                query = parse_qs(url.query, keep_blank_values=True)
            except ValueError:  # e.g. an unbalanced "[" where urlsplit expects an IPv6 host
                raise st.bad_request(f"invalid request URI: {self.path[:200]!r}") from None
            if method not in _BODY_METHODS:
                self._body()  # a body nothing reads (a GET may carry one): consume it first
            self._handle(method, url.path, query)
            self._drain()
        except st.ApiStatus as e:
            self._fail(e.code, e.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # never let one request take the server down
            log.exception("internal error serving %s %s", method, self.path)
            self._fail(500, st.ApiStatus(500, "InternalError", "an internal error occurred").body())

    def _fail(self, code: int, body: dict[str, Any]) -> None:
        try:
            self._drain()
            self._send_json(code, body)
        except (BrokenPipeError, ConnectionResetError):  # the client is gone already
            self.close_connection = True

    def _drain(self) -> None:
        """Read a body no handler read (an error came first) so the keep-alive connection stays in
        sync; when that is not possible the connection ends after the response."""
        if getattr(self, "_body_read", False):
            return
        self._body_read = True
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        try:
            length = self._content_length()
        except st.ApiStatus:
            return  # (it closes the connection)
        if 0 < length <= MAX_BODY:
            if len(self.rfile.read(length)) < length:
                self.close_connection = True
        elif length:
            self.close_connection = True

    def _body(self) -> bytes:
        raw = self._read_body()
        self._body_read = True
        return raw

    def _handle(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        if method == "GET":
            doc = self._discovery(path)
            if doc is not None:
                self._send_json(200, doc)
                return
        target = route(path)
        if target is None:
            raise st.not_found_path(path)
        if isinstance(target, dict):
            if method != "GET":
                raise st.method_not_allowed()
            self._send_json(200, target)
            return
        self._check_accept()
        self._resource(method, target, query)

    def _discovery(self, path: str) -> dict[str, Any] | None:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return discovery.version_info()
        if path == "/api":
            return discovery.core_versions(self.server_address_text)
        if path == "/apis":
            return discovery.group_list()
        if path == "/openapi/v3":
            return openapi.index()
        if path.startswith("/openapi/v3/"):
            rest = path[len("/openapi/v3/"):].split("/")
            gv = ("", rest[1]) if rest[0] == "api" and len(rest) == 2 else (
                (rest[1], rest[2]) if rest[0] == "apis" and len(rest) == 3 else None)
            doc = openapi.group_version(*gv) if gv else None
            if doc is None:
                raise st.not_found_path(path)
            return doc
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "apis":
            doc = discovery.group(parts[2])
            if doc is None:
                raise st.not_found_path(path)
            return doc
        return None

    def _resource(self, method: str, r: Route, query: dict[str, list[str]]) -> None:
        api, rt = self.api, r.rt
        dry_run = bool(query.get("dryRun"))
        if r.name is None:  # collection
            sel = Selection(r.namespace, _q(query, "labelSelector"), _q(query, "fieldSelector"))
            if method == "GET" and _flag(query, "watch"):
                self._watch(rt, sel, query)
            elif method == "GET":
                items, meta = api.list(
                    rt, sel, limit=_int(query, "limit"), continue_token=_q(query, "continue"),
                    resource_version=_q(query, "resourceVersion"),
                    resource_version_match=_q(query, "resourceVersionMatch"),
                )
                self._send_list(rt, items, meta, query)
            elif method == "POST":
                self._send_object(201, rt, api.create(rt, r.namespace, self._decode(self._body()), dry_run=dry_run), query)
            elif method == "DELETE":
                options = self._delete_options(query)
                dry_run = dry_run or bool(options.get("dryRun"))  # kubectl sends it in DeleteOptions
                items = api.delete_collection(rt, sel, options, dry_run=dry_run)
                self._send_list(rt, items, {"resourceVersion": str(api.store.rv)}, query)
            else:
                raise st.method_not_allowed()
            return
        if r.subresource == "binding":  # create-only, as upstream: how a scheduler sets nodeName
            if method != "POST":
                raise st.method_not_allowed()
            self._send_json(201, api.bind(rt, r.namespace, r.name, self._decode(self._body()),
                                          dry_run=dry_run))
            return
        if method == "GET":
            self._send_object(200, rt, api.get(rt, r.namespace, r.name), query)
        elif method == "PUT":
            body = self._decode(self._body())
            self._send_object(200, rt, api.update(rt, r.namespace, r.name, body, subresource=r.subresource, dry_run=dry_run), query)
        elif method == "PATCH":
            raw = self._body()
            ctype = self.headers.get("Content-Type") or ""
            self._send_object(200, rt, api.patch(rt, r.namespace, r.name, ctype, raw, subresource=r.subresource, dry_run=dry_run), query)
        elif method == "DELETE" and r.subresource is None:
            options = self._delete_options(query)
            dry_run = dry_run or bool(options.get("dryRun"))  # kubectl sends it in DeleteOptions
            self._send_object(200, rt, api.delete(rt, r.namespace, r.name, options, dry_run=dry_run), query)
        else:
            raise st.method_not_allowed()

    def _delete_options(self, query: dict[str, list[str]]) -> dict[str, Any]:
        raw = self._body()
        options: dict[str, Any] = {}
        if raw.strip():
            decoded = self._decode(raw)
            if not isinstance(decoded, dict):
                raise st.bad_request("DeleteOptions must be an object")
            options = decoded
        grace = _int(query, "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        return options

    # -- responses --------------------------------------------------------------------------------

    def _send_object(self, code: int, rt: ResourceType, stored: Stored, query: dict[str, list[str]]) -> None:
        if self._wants_table():
            self._send_json(code, table_for(rt, [stored.obj], include_object=_include_object(query)))
        else:
            self._send(code, stored.raw)

    def _send_list(self, rt: ResourceType, items: list[Stored], meta: dict[str, Any], query: dict[str, list[str]]) -> None:
        if self._wants_table():
            table = table_for(rt, [s.obj for s in items], include_object=_include_object(query), list_meta=meta)
            self._send_json(200, table)
            return
        head = orjson.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta})
        # Splice the cached item encodings into the list instead of re-encoding every object.
        body = head[:-1] + b',"items":[' + b",".join(s.raw for s in items) + b"]}"
        self._send(200, body)

    def _watch(self, rt: ResourceType, sel: Selection, query: dict[str, list[str]]) -> None:
        timeout = _int(query, "timeoutSeconds")
        stream = self.api.watch(
            rt, sel,
            resource_version=_q(query, "resourceVersion"),
            allow_bookmarks=_flag(query, "allowWatchBookmarks"),
            timeout=float(timeout) if timeout and timeout > 0 else DEFAULT_WATCH_TIMEOUT,
            send_initial_events=_flag(query, "sendInitialEvents"),
        )
        as_table = self._wants_table()
        include = _include_object(query)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        first = True
        gone = False
        try:
            for batch in stream:
                if not batch:
                    if self._client_gone():
                        gone = True
                        break
                    continue
                lines = []
                for item in batch:
                    lines.append(self._encode_item(rt, item, as_table, include, first))
                    first = False
                data = b"".join(lines)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            gone = True
        finally:
            stream.close()  # type: ignore[attr-defined]
            # A stream that ended cleanly (timeout, 410) leaves a usable keep-alive connection, as
            # Go's server does; closing it unannounced made a pooling client (urllib3) send its
            # next request into a dead connection (RemoteDisconnected).
            if gone:
                self.close_connection = True

    @staticmethod
    def _encode_item(rt: ResourceType, item: WatchItem, as_table: bool, include: str, first: bool) -> bytes:
        if item.stored is None:
            return orjson.dumps({"type": item.type, "object": item.body}) + b"\n"
        if as_table:
            obj = table_for(rt, [item.stored.obj], include_object=include, no_headers=not first)
            return orjson.dumps({"type": item.type, "object": obj}) + b"\n"
        if item.event is not None and item.event.type == item.type:
            return item.event.json_line()
        return b'{"type":"' + item.type.encode() + b'","object":' + item.stored.raw + b"}\n"

    def _client_gone(self) -> bool:
        """True when the peer closed its side (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(api: Api, host: str, port: int, sock: socket.socket | None = None) -> ApiHTTPServer:
    """An HTTP server for `api` on host:port, or on an already bound and listening `sock` (the
    sandbox hands in a socket created inside another network namespace)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class _Server(ApiHTTPServer):
        address_family = family

    if sock is None:
        server = _Server((host, port), Handler)
    else:
        server = _Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.server_address = sock.getsockname()
    bound_host, bound_port = server.server_address[:2]
    handler = type("BoundHandler", (Handler,), {"api": api, "server_address_text": f"{bound_host}:{bound_port}"})
    server.RequestHandlerClass = handler
    return server


def serve_in_threads(servers: list[ApiHTTPServer]) -> list[threading.Thread]:
    threads = []
    for srv in servers:
        t = threading.Thread(target=srv.serve_forever, name=f"apiserver-{srv.server_address[1]}", daemon=True)
        t.start()
        threads.append(t)
    return threads
