"""A lean apiserver client: stdlib `http.client` + orjson, JSON in and out, no generated models.

Every netplane component talks to the apiserver through this module. It knows four things:

* where and how (`ClusterConfig`: URL, TLS material, bearer token re-read per request);
* one persistent keep-alive connection per thread for ordinary requests (reconnecting when the
  server dropped an idle connection), and a dedicated connection per watch;
* how the apiserver reports failure: a non-2xx answer carries a `Status` object that becomes the
  most specific `ApiError`; not reaching the server at all is `ApiUnavailableError`;
* how a watch streams: newline-delimited JSON events in a chunked response, ending when the
  server's timeoutSeconds expires, with an in-stream `ERROR` event for 410 Gone and friends.

Objects stay plain dicts here; `netplane.k8s.objects` converts the few fields netplane uses.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

from netplane import __version__
from netplane.errors import ApiError, ApiUnavailableError, api_error_from_status
from netplane.k8s.config import ClusterConfig

log = logging.getLogger(__name__)

PATCH_CONTENT_TYPES: Mapping[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}

# Safe to send twice: a request that died on a reused keep-alive connection is retried once.
# POST (create) is not: replaying it could turn a success into a confusing AlreadyExists.
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})

_READ_SIZE = 64 * 1024


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object.

    >>> resource_path("v1", "services", "default", "kubernetes")
    '/api/v1/namespaces/default/services/kubernetes'
    >>> resource_path("discovery.k8s.io/v1", "endpointslices")
    '/apis/discovery.k8s.io/v1/endpointslices'
    """
    if not api_version or not plural:
        raise ValueError("resource_path needs an api_version and a plural")
    if subresource and not name:
        raise ValueError(f"subresource {subresource!r} needs an object name")
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(quote(plural, safe=""))
    if name:
        parts.append(quote(name, safe=""))
    if subresource:
        parts.append(quote(subresource, safe=""))
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: type is ADDED, MODIFIED, DELETED or BOOKMARK; object is the raw dict."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        meta = self.object.get("metadata")
        if isinstance(meta, dict):
            rv = meta.get("resourceVersion")
            if isinstance(rv, str):
                return rv
        return ""


def _list_query(
    label_selector: str | None,
    field_selector: str | None,
    limit: int | None = None,
    continue_: str | None = None,
    resource_version: str | None = None,
) -> dict[str, str]:
    query: dict[str, str] = {}
    if label_selector:
        query["labelSelector"] = label_selector
    if field_selector:
        query["fieldSelector"] = field_selector
    if limit:
        query["limit"] = str(int(limit))
    if continue_:
        query["continue"] = continue_
    if resource_version is not None:
        query["resourceVersion"] = resource_version
    return query


def _decode_status(payload: bytes, code: int, what: str) -> dict[str, Any]:
    """The Status object of a failed response, or a stand-in when the body is not one."""
    try:
        doc = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        doc = {"message": payload[:200].decode("utf-8", "replace").strip()}
    if not isinstance(doc, dict):
        doc = {}
    if not doc.get("message"):
        doc["message"] = f"{what} answered HTTP {code}"
    return doc


def _set_keepalive(sock: socket.socket | None) -> None:
    # A watch may sit idle for minutes; TCP keepalive notices a vanished peer (node reboot,
    # dropped NAT entry) that would otherwise leave the reader blocked until its read timeout.
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError:
        pass


class Watch:
    """An open watch: iterate for `WatchEvent`s; `close()` (from any thread) ends it.

    The connection is opened on the first `next()` (or by `open()`), so an HTTP failure such as
    410 Gone for a too-old resourceVersion is raised from the iterator, the same place an
    in-stream ERROR event is. The iterator ends when the server closes the stream (its
    timeoutSeconds expired) or after `close()`; a broken connection raises ApiUnavailableError.
    """

    def __init__(
        self,
        client: Client,
        url: str,
        *,
        read_timeout: float | None,
        description: str,
    ) -> None:
        self._client = client
        self._url = url
        self._read_timeout = read_timeout
        self._description = description
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        # Our own reference: for a "Connection: close" response http.client hands the socket to
        # the response and sets conn.sock to None, and close() must still be able to shut it down.
        self._sock: socket.socket | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._closed = False
        self._opened = False
        self._buffer = bytearray()

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self) -> None:
        """Connect and check the response status now (idempotent)."""
        if self._opened:
            return
        self._opened = True
        with self._lock:
            if self._closed:
                return
            conn = self._client._new_connection()
            self._conn = conn
        try:
            conn.connect()
            _set_keepalive(conn.sock)
            with self._lock:
                self._sock = conn.sock
                if self._closed:
                    raise _Closed
            conn.request("GET", self._url, headers=self._client._headers())
            resp = conn.getresponse()
            if conn.sock is not None:
                conn.sock.settimeout(self._read_timeout)
        except _Closed:
            self._finish()
            return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._finish()
            if self._closed:
                return
            raise ApiUnavailableError(f"watch {self._description}: {exc}") from exc
        if resp.status != 200:
            payload = b""
            try:
                payload = resp.read()
            except (OSError, http.client.HTTPException):
                pass
            self._finish()
            raise api_error_from_status(
                resp.status, _decode_status(payload, resp.status, f"watch {self._description}")
            )
        self._resp = resp

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        if not self._opened:
            self.open()
        while True:
            if self._closed or self._resp is None:
                self._finish()
                raise StopIteration
            line = self._next_line()
            if line is None:
                self._finish()
                raise StopIteration
            line = line.strip()
            if line:
                return self._parse(line)

    def _next_line(self) -> bytes | None:
        """The next newline-terminated line, or None at the end of the stream."""
        assert self._resp is not None
        while True:
            idx = self._buffer.find(b"\n")
            if idx >= 0:
                line = bytes(self._buffer[:idx])
                del self._buffer[: idx + 1]
                return line
            try:
                chunk = self._resp.read1(_READ_SIZE)
            except Exception as exc:  # socket/TLS/HTTP framing errors, or a close() under us
                if self._closed:
                    return None
                self._finish()
                raise ApiUnavailableError(
                    f"watch {self._description}: connection lost: {exc!r}"
                ) from exc
            if not chunk:
                if self._buffer.strip():
                    # The last event without a trailing newline still counts.
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                return None
            self._buffer += chunk

    def _parse(self, line: bytes) -> WatchEvent:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._finish()
            raise ApiUnavailableError(
                f"watch {self._description}: malformed event {line[:120]!r}"
            ) from exc
        if not isinstance(doc, dict):
            self._finish()
            raise ApiUnavailableError(f"watch {self._description}: event is not an object")
        etype = str(doc.get("type") or "")
        obj = doc.get("object")
        if not isinstance(obj, dict):
            obj = {}
        if etype == "ERROR":
            self._finish()
            code = obj.get("code")
            if not isinstance(code, int) or isinstance(code, bool):
                code = 500
            raise api_error_from_status(code, _decode_status(orjson.dumps(obj), code,
                                                             f"watch {self._description}"))
        return WatchEvent(etype, obj)

    def close(self) -> None:
        """End the watch; safe from another thread while one is blocked reading it."""
        with self._lock:
            self._closed = True
            sock = self._sock
        if sock is not None:
            try:
                # shutdown (unlike close) wakes a thread blocked in recv on this socket.
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError, AttributeError):
                pass
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            resp, self._resp = self._resp, None
        for closable in (resp, conn):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # closing a half-dead socket can fail in many ways; all moot
                    pass

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._finish()
        except Exception:
            pass


class _Closed(Exception):
    """Internal: the watch was closed while it was being opened."""


class _ThreadConn(threading.local):
    conn: http.client.HTTPConnection | None = None
    used: bool = False


class Client:
    """JSON over HTTP to one apiserver. Safe to share between threads."""

    def __init__(self, config: ClusterConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        parts = urlsplit(config.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server {config.server!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        # A server URL may carry a path prefix (e.g. behind an API gateway).
        self._prefix = parts.path.rstrip("/")
        self._ssl = config.ssl_context()
        self._local = _ThreadConn()
        self._all_lock = threading.Lock()
        # Weak: a finished thread's connection goes away with its thread-local storage.
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._user_agent = f"netplane/{__version__}"

    # ---------------------------------------------------------------------------- plumbing

    def _new_connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        t = self.timeout if timeout is None else timeout
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=t,
                                               context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=t)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        if not path.startswith("/"):
            raise ValueError(f"API path must start with '/': {path!r}")
        url = self._prefix + path
        if query:
            url += "?" + urlencode(query)
        return url

    def _thread_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it already carried a request."""
        local = self._local
        conn = local.conn
        if conn is None:
            conn = self._new_connection()
            local.conn, local.used = conn, False
            with self._all_lock:
                self._all.add(conn)
            return conn, False
        if conn.sock is not None and _peer_closed(conn.sock):
            # The server closed this idle keep-alive connection; start over rather than find
            # out by failing a request.
            conn.close()
            local.used = False
        return conn, local.used

    def _drop_thread_connection(self) -> None:
        local = self._local
        conn, local.conn, local.used = local.conn, None, False
        if conn is not None:
            with self._all_lock:
                self._all.discard(conn)
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request and return the decoded JSON answer ({} for an empty body)."""
        url = self._url(path, query)
        data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        what = f"{method} {path}"
        for attempt in (1, 2):
            headers = self._headers()
            if data is not None:
                headers["Content-Type"] = content_type
            conn, reused = self._thread_connection()
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_thread_connection()
                if attempt == 1 and reused and method in _IDEMPOTENT:
                    log.debug("%s failed on a reused connection (%r); retrying once", what, exc)
                    continue
                raise ApiUnavailableError(f"{what} on {self.config.server}: {exc!r}") from exc
            self._local.used = True
            break
        status = resp.status
        if 200 <= status < 300:
            if not payload:
                return {}
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise ApiError(status, "InvalidResponse",
                               f"{what}: answer is not JSON: {payload[:120]!r}") from exc
            return doc if isinstance(doc, dict) else {"value": doc}
        raise api_error_from_status(status, _decode_status(payload, status, what))

    def close(self) -> None:
        """Close every pooled connection (open watches are closed through their own object)."""
        with self._all_lock:
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local.conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ verbs

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """One page of a collection (the whole collection when no `limit` is given)."""
        return self.request("GET", path, query=_list_query(
            label_selector, field_selector, limit, continue_, resource_version))

    def list_all(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = 500,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Every page of a collection joined into one list, following `continue`.

        All pages of one paginated list come from the same snapshot, so the answer's
        metadata.resourceVersion is the first page's. An expired continue token raises GoneError;
        callers that need the list anyway retry (the informer falls back to an unpaged list).
        """
        items: list[Any] = []
        first: dict[str, Any] | None = None
        continue_: str | None = None
        while True:
            page = self.list(path, label_selector=label_selector, field_selector=field_selector,
                             limit=limit, continue_=continue_,
                             resource_version=resource_version if first is None else None)
            if first is None:
                first = page
            page_items = page.get("items")
            if isinstance(page_items, list):
                items.extend(page_items)
            meta = page.get("metadata")
            continue_ = meta.get("continue") if isinstance(meta, dict) else None
            if not continue_:
                break
        first_meta = first.get("metadata")
        rv = first_meta.get("resourceVersion", "") if isinstance(first_meta, dict) else ""
        return {
            "apiVersion": first.get("apiVersion", ""),
            "kind": first.get("kind", ""),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def create(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST `obj` to the collection at `path`."""
        return self.request("POST", path, body=obj)

    def update(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT `obj` at the object path (a stale metadata.resourceVersion gives ConflictError)."""
        return self.request("PUT", path, body=obj)

    def patch(self, path: str, body: Any, patch_type: str = "merge") -> dict[str, Any]:
        """PATCH with a merge (RFC 7386), strategic-merge or JSON (RFC 6902) patch."""
        try:
            content_type = PATCH_CONTENT_TYPES[patch_type]
        except KeyError:
            raise ValueError(f"patch_type must be one of {sorted(PATCH_CONTENT_TYPES)}, "
                             f"not {patch_type!r}") from None
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, *, grace_period_seconds: int | None = None) -> dict[str, Any]:
        """DELETE the object; returns the deleted object (or a Status)."""
        query = None
        if grace_period_seconds is not None:
            query = {"gracePeriodSeconds": str(int(grace_period_seconds))}
        return self.request("DELETE", path, query=query)

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Watch:
        """Stream changes after `resource_version` on a connection of its own.

        The returned `Watch` is an iterator of `WatchEvent`s; closing it closes the socket.
        """
        query = _list_query(label_selector, field_selector, resource_version=resource_version)
        query["watch"] = "true"
        if allow_bookmarks:
            query["allowWatchBookmarks"] = "true"
        read_timeout: float | None = None
        if timeout_seconds is not None:
            query["timeoutSeconds"] = str(int(timeout_seconds))
            # The server ends the stream after timeoutSeconds; a read that blocks well past it
            # means the peer is gone without a FIN.
            read_timeout = float(timeout_seconds) + 60.0
        return Watch(self, self._url(path, query), read_timeout=read_timeout,
                     description=f"{path} from resourceVersion {resource_version!r}")


def _peer_closed(sock: socket.socket) -> bool:
    """True when an idle keep-alive socket is readable: the server sent FIN (or junk)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
