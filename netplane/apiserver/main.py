"""`netplane apiserver`: wire store, allocator, API and HTTP listeners together and run them.

`ApiServer` is also what tests and the sandbox embed in-process.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
from dataclasses import dataclass, field

from netplane.apiserver.allocators import ServiceAllocator
from netplane.apiserver.api import Api
from netplane.apiserver.server import ApiHTTPServer, make_server, serve_in_threads
from netplane.apiserver.store import MemoryPersistence, SqlitePersistence, Store
from netplane import signals
from netplane.errors import ConfigError

log = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:6443 or [::1]:6443")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def parse_port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ConfigError(f"--node-port-range {text!r}: expected LOW-HIGH, e.g. 30000-32767") from None
    if not sep or not 0 < lo <= hi <= 65535:
        raise ConfigError(f"--node-port-range {text!r}: expected 1 <= LOW <= HIGH <= 65535")
    return lo, hi


@dataclass
class ApiServer:
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 6443)])
    data_dir: str | None = None
    service_cidr: str = "10.96.0.0/12"
    node_port_range: tuple[int, int] = (30000, 32767)
    history: int = 100_000
    bookmark_interval: float = 60.0
    # Already bound, listening sockets to serve on as well (e.g. made inside a network namespace).
    sockets: list[socket.socket] = field(default_factory=list)

    def start(self) -> ApiServer:
        try:
            allocator = ServiceAllocator(self.service_cidr, self.node_port_range)
        except ValueError as e:
            raise ConfigError(f"--service-cidr {self.service_cidr!r}: {e}") from None
        persistence = SqlitePersistence(self.data_dir) if self.data_dir else MemoryPersistence()
        self.store = Store(persistence, history=self.history)
        self.api = Api(self.store, allocator, bookmark_interval=self.bookmark_interval)
        self.servers: list[ApiHTTPServer] = []
        try:
            for host, port in self.listen:
                self.servers.append(make_server(self.api, host, port))
            for sock in self.sockets:
                self.servers.append(make_server(self.api, "", 0, sock))
        except OSError as e:
            self.stop()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._threads = serve_in_threads(self.servers)
        return self

    @property
    def urls(self) -> list[str]:
        out = []
        for srv in self.servers:
            host, port = srv.server_address[:2]
            out.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        return out

    @property
    def url(self) -> str:
        return self.urls[0]

    def stop(self) -> None:
        for srv in getattr(self, "servers", []):
            srv.shutdown()
            srv.server_close()
        if hasattr(self, "store"):
            self.store.close()  # wakes every watch stream so its thread ends


def run(args: argparse.Namespace) -> int:
    listen = [parse_listen(x) for x in args.listen] or [("127.0.0.1", 6443)]
    if args.history < 1:
        raise ConfigError("--history must be at least 1")
    server = ApiServer(
        listen=listen,
        data_dir=args.data_dir,
        service_cidr=args.service_cidr,
        node_port_range=parse_port_range(args.node_port_range),
        history=args.history,
        bookmark_interval=args.bookmark_interval,
    ).start()
    stop = threading.Event()
    signals.stop_on_signals(stop)
    try:
        if args.write_kubeconfig:
            from netplane.k8s.config import write_kubeconfig

            write_kubeconfig(args.write_kubeconfig, server.url)
        log.info(
            "apiserver ready: serving on %s (resourceVersion %d, data %s)%s",
            " ".join(server.urls), server.store.rv, args.data_dir or "in memory",
            f", kubeconfig {args.write_kubeconfig}" if args.write_kubeconfig else "",
        )
        signals.wait(stop)
        log.info("apiserver stopping")
    finally:
        server.stop()
    return 0
