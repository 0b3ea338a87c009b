"""The DNS server's HTTP endpoints, as CoreDNS's health, ready and prometheus plugins serve them:

- `/health` (default :8080): 200 "OK" while the process runs, including its lameduck period
  (liveness must not fail while we drain: the kubelet would restart us instead).
- `/ready` (default :8181): 200 "OK" once every component is ready (zone synced, configuration
  loaded); otherwise 503 and one not-ready component per line. During lameduck: 503 "lameduck",
  so endpoints drop the pod before the listeners close.
- `/metrics` (default :9153): the Prometheus text format.

Each address gets one small threading HTTP server; endpoints configured on the same address
share it. An empty address turns an endpoint off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from netplane.httpserve import LocalHTTPServer, send
from typing import Any

from netplane.errors import ConfigError
from netplane.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)


def parse_http_addr(text: str) -> tuple[str, int]:
    """":8080" → ("0.0.0.0", 8080); "127.0.0.1:0" picks a free port; "[::1]:9153" for IPv6."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"HTTP address {text!r}: expected HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"HTTP address {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"HTTP address {text!r}: port {number} out of range")
    return host, number


class HttpEndpoints:
    """Serves /health, /ready and /metrics on their addresses until `stop()`.

    `not_ready()` returns the names of the components that are not ready ([] = ready);
    `render_metrics()` returns the exposition text. Both run on the HTTP threads.
    """

    def __init__(self, *, health_addr: str, ready_addr: str, metrics_addr: str,
                 not_ready: Callable[[], list[str]], render_metrics: Callable[[], bytes]) -> None:
        self._not_ready = not_ready
        self._render_metrics = render_metrics
        self.lameduck = threading.Event()
        # (host, port, n) → paths; n separates port-0 addresses, each of which gets its own port.
        self._routes: dict[tuple[str, int, int], set[str]] = {}
        for n, (path, addr) in enumerate((("/health", health_addr), ("/ready", ready_addr),
                                          ("/metrics", metrics_addr))):
            if addr:
                host, port = parse_http_addr(addr)
                self._routes.setdefault((host, port, n if port == 0 else 0), set()).add(path)
        self._servers: list[LocalHTTPServer] = []
        self.bound: dict[str, tuple[str, int]] = {}  # path → the address it is served on

    def start(self) -> None:
        for (host, port, _n), paths in self._routes.items():
            addr = (host, port)
            try:
                server = LocalHTTPServer(addr, self._handler_class(frozenset(paths)))
            except OSError as exc:
                self.stop()
                raise ConfigError(f"cannot serve {', '.join(sorted(paths))} on {addr[0]}:{addr[1]}: "
                                  f"{exc.strerror or exc}") from exc
            self._servers.append(server)
            bound = server.server_address[:2]
            for path in paths:
                self.bound[path] = (bound[0], bound[1])
            threading.Thread(target=server.serve_forever, name=f"dns-http-{bound[1]}", daemon=True).start()
            log.info("dns: %s on %s:%d", " ".join(sorted(paths)), bound[0], bound[1])

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def ready_status(self) -> tuple[int, bytes]:
        if self.lameduck.is_set():
            return 503, b"lameduck\n"
        try:
            missing = self._not_ready()
        except Exception:
            log.exception("dns: readiness check failed")
            missing = ["readiness check failed"]
        if missing:
            return 503, ("".join(f"{name}\n" for name in missing)).encode()
        return 200, b"OK"

    def _handler_class(self, paths: frozenset[str]) -> type[BaseHTTPRequestHandler]:
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("dns http: " + format, *args)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path not in paths:
                    self._send(404, b"404 page not found\n", "text/plain")
                elif path == "/health":
                    self._send(200, b"OK", "text/plain")
                elif path == "/ready":
                    code, body = endpoints.ready_status()
                    self._send(code, body, "text/plain")
                else:
                    try:
                        body = endpoints._render_metrics()
                    except Exception:
                        log.exception("dns: rendering metrics failed")
                        self._send(500, b"metrics unavailable\n", "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                send(self, code, body, ctype)

        return Handler
