"""Health answers, as kube-proxy's pkg/proxy/healthcheck:

- ProxyHealth: is the proxy keeping up? Healthy unless a change has been queued for longer
  than `health_timeout` (kube-proxy: 2 x syncPeriod) without a successful sync since.
  `serve_proxy_health` answers /healthz (also 503 when the node is not eligible) and /livez.
- ServiceHealthServer: for each externalTrafficPolicy=Local LoadBalancer service, an HTTP
  listener on its healthCheckNodePort answering 200 while this node has local ready endpoints
  (and the proxy is healthy), else 503, so load balancers only send traffic to nodes that can
  serve it locally.

The decision logic takes time from an injected clock; the servers are plain ThreadingHTTPServers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any

from netplane.httpserve import LocalHTTPServer, send
from netplane.metrics import CONTENT_TYPE
from netplane.proxy.metrics import ProxyMetrics
from netplane.proxy.model import ServicePortName
from netplane.proxy.runner import REAL_CLOCK, Clock

log = logging.getLogger(__name__)

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time, what kube-proxy prints for "never"


def _rfc3339(wall: float | None) -> str:
    if wall is None:
        return _ZERO_TIME
    return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


class PendingSince:
    """When the oldest change that the dataplane does not reflect yet arrived.

    A change that arrives while a sync is running may have missed that sync's input, so a
    successful sync leaves the oldest such change owed instead of clearing everything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._oldest: float | None = None
        self._during_sync: float | None = None
        self._syncing = False

    @property
    def oldest(self) -> float | None:
        with self._lock:
            return self._oldest

    def queued(self, now: float) -> None:
        with self._lock:
            if self._oldest is None:
                self._oldest = now
            if self._syncing and self._during_sync is None:
                self._during_sync = now

    def sync_started(self) -> None:
        with self._lock:
            self._syncing, self._during_sync = True, None

    def synced(self) -> None:
        with self._lock:
            self._oldest = self._during_sync if self._syncing else None
            self._syncing, self._during_sync = False, None


class ProxyHealth:
    """kube-proxy's ProxyHealthServer state (one IP family)."""

    def __init__(self, health_timeout: float, *, clock: Clock = REAL_CLOCK,
                 metrics: ProxyMetrics | None = None) -> None:
        self.health_timeout = health_timeout
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        self._last_updated: float | None = None  # wall time of the last successful sync
        self._pending = PendingSince()  # monotonic times
        self._node_eligible = True

    def queued_update(self) -> None:
        """A change arrived that the rules do not reflect yet (keeps the oldest such time)."""
        self._pending.queued(self._clock.monotonic())

    def sync_started(self) -> None:
        """Optional: a sync is reading its input now (see PendingSince)."""
        self._pending.sync_started()

    def updated(self) -> None:
        """A sync succeeded: what was queued before it started is in the rules."""
        self._pending.synced()
        with self._lock:
            self._last_updated = self._clock.time()

    def set_node_eligible(self, eligible: bool) -> None:
        """False while the node is being deleted: /healthz then fails so LBs drain it."""
        with self._lock:
            self._node_eligible = eligible

    @property
    def node_eligible(self) -> bool:
        with self._lock:
            return self._node_eligible

    def is_healthy(self) -> bool:
        oldest = self._pending.oldest
        return oldest is None or self._clock.monotonic() - oldest < self.health_timeout

    def answer(self, *, livez: bool) -> tuple[int, dict[str, Any]]:
        """The status code and JSON body of /healthz (livez=False) or /livez."""
        healthy = self.is_healthy()
        eligible = self.node_eligible
        now = self._clock.time()
        ok = healthy if livez else healthy and eligible
        with self._lock:
            last = self._last_updated
        # kube-proxy reports "now" as lastUpdated while healthy (compatibility with releases
        # that updated it on every loop); the metrics carry the real sync times.
        body: dict[str, Any] = {"lastUpdated": _rfc3339(now if ok else last),
                                "currentTime": _rfc3339(now)}
        if not livez:
            body["nodeEligible"] = eligible
        code = 200 if ok else 503
        if self._metrics is not None:
            (self._metrics.livez if livez else self._metrics.healthz)(code)
        return code, body


# ------------------------------------------------------------------------------ HTTP plumbing


Route = Callable[[], tuple[int, bytes, str, Mapping[str, str]]]


def _handler_class(routes: Mapping[str, Route], label: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug(label + ": " + format, *args)

        def do_GET(self) -> None:  # noqa: N802
            route = routes.get(self.path.split("?", 1)[0])
            if route is None and "" in routes:
                route = routes[""]
            if route is None:
                code, body, ctype, headers = 404, b"not found\n", "text/plain", {}
            else:
                code, body, ctype, headers = route()
            send(self, code, body, ctype, [("X-Content-Type-Options", "nosniff"), *headers.items()])

    return Handler


class HttpServer:
    """A ThreadingHTTPServer on its own daemon thread."""

    def __init__(self, address: tuple[str, int], routes: Mapping[str, Route], label: str):
        self._server = LocalHTTPServer(address, _handler_class(routes, label))
        self.label = label
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=label, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def _json(code: int, body: Mapping[str, Any],
          headers: Mapping[str, str] | None = None) -> tuple[int, bytes, str, Mapping[str, str]]:
    return code, json.dumps(body).encode() + b"\n", "application/json", headers or {}


def serve_proxy_health(health: ProxyHealth, address: tuple[str, int],
                       metrics: ProxyMetrics | None = None) -> HttpServer:
    """/healthz and /livez (kube-proxy's :10256), plus /metrics when `metrics` is given."""
    routes: dict[str, Route] = {
        "/healthz": lambda: _json(*health.answer(livez=False)),
        "/livez": lambda: _json(*health.answer(livez=True)),
    }
    if metrics is not None:
        routes["/metrics"] = lambda: (200, metrics.render(), CONTENT_TYPE, {})
    return HttpServer(address, routes, "proxy health")


# ------------------------------------------------------------------------ service health ports

ServiceKey = tuple[str, str]  # (namespace, name)


class ServiceHealthServer:
    """Health-check node ports, one listener per service (every port of a service shares it).

    `is_proxy_healthy` is normally ProxyHealth.is_healthy. Listening failures (port in use) are
    logged and retried at the next sync_services, as kube-proxy does.
    """

    def __init__(self, *, bind_address: str = "0.0.0.0",
                 is_proxy_healthy: Callable[[], bool] = lambda: True) -> None:
        self.bind_address = bind_address
        self._is_proxy_healthy = is_proxy_healthy
        self._lock = threading.Lock()
        self._servers: dict[ServiceKey, tuple[int, HttpServer]] = {}
        self._local_endpoints: dict[ServiceKey, int] = {}

    def ports(self) -> dict[ServiceKey, int]:
        """The services currently served and their ports."""
        with self._lock:
            return {key: port for key, (port, _) in self._servers.items()}

    def sync_services(self, wanted: Mapping[ServicePortName | ServiceKey, int]) -> None:
        """Open listeners for new services, close those gone or moved to another port."""
        by_service: dict[ServiceKey, int] = {}
        for key, port in wanted.items():
            skey = key.service_key if isinstance(key, ServicePortName) else (key[0], key[1])
            if port > 0:
                by_service[skey] = port
        with self._lock:
            current = dict(self._servers)
        for skey, (port, server) in current.items():
            if by_service.get(skey) != port:
                log.info("closing health check for service %s/%s on port %d", *skey, port)
                server.close()
                with self._lock:
                    self._servers.pop(skey, None)
        for skey, port in sorted(by_service.items()):
            if skey in current and current[skey][0] == port:
                continue
            try:
                server = HttpServer((self.bind_address, port), {"": self._route(skey)},
                                    f"health check {skey[0]}/{skey[1]}")
            except OSError as exc:
                log.error("cannot serve the health check of service %s/%s on %s:%d: %s",
                          skey[0], skey[1], self.bind_address, port, exc)
                continue
            log.info("serving the health check of service %s/%s on port %d", *skey, port)
            with self._lock:
                self._servers[skey] = (port, server)

    def sync_endpoints(self, local_ready: Mapping[ServiceKey, int]) -> None:
        """Set each service's count of local ready endpoints (absent services: 0)."""
        with self._lock:
            self._local_endpoints = {(k[0], k[1]): int(v) for k, v in local_ready.items()}

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for _, server in servers:
            server.close()

    def answer(self, skey: ServiceKey) -> tuple[int, dict[str, Any], int]:
        """Status code, JSON body and endpoint count for one service's health check."""
        with self._lock:
            count = self._local_endpoints.get(skey, 0)
        healthy = self._is_proxy_healthy()
        body = {"service": {"namespace": skey[0], "name": skey[1]},
                "localEndpoints": count, "serviceProxyHealthy": healthy}
        return (200 if count > 0 and healthy else 503), body, count

    def _route(self, skey: ServiceKey) -> Route:
        def route() -> tuple[int, bytes, str, Mapping[str, str]]:
            code, body, count = self.answer(skey)
            return _json(code, body, {"X-Load-Balancing-Endpoint-Weight": str(count)})
        return route
