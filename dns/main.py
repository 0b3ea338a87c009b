"""`netplane dns`: informers → ClusterZone → plugin chain → DnsServer, plus /health /ready /metrics.

Workers (`--workers N`, default 1): every worker is a full copy — its own informers, zone, chain,
wire cache and SO_REUSEPORT sockets — in its own process. The alternative, N threads sharing one
zone, gains nothing in CPython: the GIL lets one thread run Python at a time, and measured on a
2-core machine two threads answer fewer queries than one. Separate processes do run in parallel;
what they cost is N watches on the apiserver and N copies of the cluster state (about the size
of the zone, a few MB per 10k services), and a cluster change reaches each worker through its
own watch (each answers consistently from its own snapshot). On a 2-core machine that also runs
the load generator, one worker was the fastest (see benchmarks/results/dns_bench.md), hence the
default; on a dedicated multi-core node, use one worker per core.

The first process binds every worker's sockets (so port 0 and privileged ports work the same
way), forks the others before starting any thread, and serves the HTTP endpoints: /metrics sums
all workers (each sends its counters over a pipe on request), /ready is ready when all are.
A worker whose pipe reaches EOF (the first process died) shuts down.

Startup follows CoreDNS's kubernetes plugin: answer once the informers have synced, or after
5 s anyway (an NXDOMAIN before the sync becomes SERVFAIL — the kubernetes plugin's job).
Shutdown: SIGTERM/SIGINT → lameduck (ready turns 503, queries are still answered) → stop.
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from netplane import signals
from netplane.dns.config import ConfigWatcher, DnsConfig, DnsPipeline, default_config, load_config
from netplane.dns.http import HttpEndpoints
from netplane.dns.metrics import DnsMetrics, Snapshot
from netplane.dns.server import DnsServer, ServerOptions, bind_sockets, parse_listen
from netplane.dns.zone import ClusterZone
from netplane.errors import ConfigError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 5.0  # CoreDNS kubernetes `startup_timeout`
WORKER_REPLY_TIMEOUT = 2.0  # how long /metrics and /ready wait for another worker's answer

SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
NAMESPACES = "/api/v1/namespaces"


class DnsWorker:
    """One complete resolver: informers, zone, chain and listeners. `client_factory()` returns
    the netplane.k8s client (a ListWatcher); it is called in the worker's own process."""

    def __init__(self, config: DnsConfig, sockets: tuple[socket.socket, socket.socket],
                 client_factory: Callable[[], Any], *, config_path: str | None = None,
                 server_options: ServerOptions = ServerOptions(), stopping: threading.Event | None = None) -> None:
        self.config = config
        self._sockets = sockets
        self._client_factory = client_factory
        self._config_path = config_path
        self._options = server_options
        self.stopping = stopping or threading.Event()
        self.exit_code = 0
        port = sockets[0].getsockname()[1]
        self.metrics = DnsMetrics(server=f"dns://:{port}")
        self.zone = ClusterZone(config.cluster_zone)
        self.pipeline: DnsPipeline | None = None
        self.server: DnsServer | None = None
        self._informers: list[Any] = []
        self._watcher: ConfigWatcher | None = None
        self.serving = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the informers, wait for their sync (at most STARTUP_TIMEOUT), then listen."""
        self.pipeline = self._build(self.config)
        self.server = DnsServer(self.pipeline.handler, self.zone, self.metrics, self._options,
                                sockets=self._sockets)
        self._start_informers()
        threading.Thread(target=self._mark_synced_when_ready, name="dns-sync", daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        log.info("dns: waiting for the Kubernetes API before serving (at most %.0fs)", STARTUP_TIMEOUT)
        while not self.zone.has_synced() and time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(0.05)
        if not self.zone.has_synced():
            log.warning("dns: informers not synced after %.0fs, serving anyway (SERVFAIL for unknown "
                        "cluster names until they are)", STARTUP_TIMEOUT)
        self.server.start()
        self.serving.set()
        if self._config_path and self.config.reload is not None:
            self._watcher = ConfigWatcher(self._config_path, self._apply_config, current=self.config,
                                          metrics=self.metrics)
            self._watcher.start()
        if self.pipeline.loop is not None:
            threading.Thread(target=self._probe_loop, name="dns-loop-probe", daemon=True).start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self.server is not None:
            self.server.stop()
        for informer in self._informers:
            informer.stop(timeout=2.0)
        if self.pipeline is not None:
            self.pipeline.close()

    def not_ready(self) -> list[str]:
        missing = []
        if not self.zone.has_synced():
            missing.append("kubernetes")
        if not self.serving.is_set():
            missing.append("dns")
        return missing

    # -- parts -----------------------------------------------------------------------------------

    def _build(self, config: DnsConfig) -> DnsPipeline:
        host = self._sockets[0].getsockname()[0]
        ns = () if host in ("0.0.0.0", "::") else (host,)
        return config.build(self.zone, self.metrics, on_loop=self._on_loop, ns_addresses=ns)

    def _start_informers(self) -> None:
        from netplane.k8s import EndpointSlice, Informer, Namespace, Service

        client = self._client_factory()
        zone = self.zone
        for path, convert, on_change, name in (
            (SERVICES, Service.from_dict, zone.on_service, "dns-services"),
            (ENDPOINT_SLICES, EndpointSlice.from_dict, zone.on_endpoint_slice, "dns-endpointslices"),
            (NAMESPACES, Namespace.from_dict, zone.on_namespace, "dns-namespaces"),
        ):
            informer = Informer(client, path, convert, name=name)
            informer.add_handler(on_add=lambda new, f=on_change: f(None, new), on_update=on_change,
                                 on_delete=lambda old, f=on_change: f(old, None))
            informer.start()
            self._informers.append(informer)

    def _mark_synced_when_ready(self) -> None:
        while not self.stopping.is_set():
            if all(i.has_synced() for i in self._informers):
                self.zone.mark_synced()
                log.info("dns: cluster zone %s synced (generation %d)", self.zone.zone, self.zone.generation)
                # The initial cluster state is long-lived: keep it out of the cyclic GC's full
                # collections, which otherwise pause every thread for tens of ms with 10k
                # services (measured 72 ms) and show up as the answers' p99. Objects freed
                # later are still freed by reference counting.
                gc.freeze()
                return
            self.stopping.wait(0.05)

    def _apply_config(self, new: DnsConfig) -> None:
        """Reload (called by the ConfigWatcher): rebuild the chain and swap it in. What only a
        restart can change is refused, so the watcher keeps the running configuration."""
        if new.cluster_zone.rstrip(".").lower() != self.zone.zone:
            raise ConfigError(f"{new.source}: changing the cluster zone ({self.zone.zone} → "
                              f"{new.cluster_zone}) needs a restart")
        for what in ("port", "health", "ready", "prometheus"):
            if getattr(new, what) != getattr(self.config, what):
                log.warning("reload: %s changed in %s; it takes effect at the next restart", what, new.source)
        pipeline = self._build(new)
        old, self.pipeline, self.config = self.pipeline, pipeline, new
        assert self.server is not None
        self.server.set_handler(pipeline.handler)
        if old is not None:
            old.close()
        if pipeline.loop is not None:
            threading.Thread(target=self._probe_loop, name="dns-loop-probe", daemon=True).start()

    def _probe_loop(self) -> None:
        pipeline = self.pipeline
        if pipeline is not None:
            try:
                pipeline.probe_loop()
            except Exception:
                log.exception("dns: loop probe failed")

    def _on_loop(self, message: str) -> None:
        # CoreDNS exits fatally (Kubernetes then shows CrashLoopBackOff); so do we.
        log.critical("dns: %s", message)
        self.exit_code = 1
        self.stopping.set()


# -- processes -------------------------------------------------------------------------------------


def _child_main(worker: DnsWorker, conn: multiprocessing.connection.Connection, lameduck: float) -> int:
    """A forked worker: serve, answer the first process's requests, stop on SIGTERM or EOF."""
    signals.stop_on_signals(worker.stopping)

    def control() -> None:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                worker.stopping.set()  # the first process is gone
                return
            if request == "state":
                try:
                    conn.send((worker.metrics.snapshot(), worker.not_ready()))
                except (OSError, ValueError):
                    worker.stopping.set()
                    return

    threading.Thread(target=control, name="dns-worker-control", daemon=True).start()
    try:
        worker.start()
        signals.wait(worker.stopping)
        _lameduck(lameduck)
    finally:
        worker.stop()
    return worker.exit_code


def _lameduck(seconds: float) -> None:
    if seconds > 0:
        log.info("dns: lameduck for %.1fs before shutting down", seconds)
        time.sleep(seconds)


class _Workers:
    """The first process's view of the forked workers."""

    def __init__(self) -> None:
        self.children: list[tuple[int, multiprocessing.connection.Connection]] = []
        self._lock = threading.Lock()

    def fork(self, make_worker: Callable[[], DnsWorker], lameduck: float) -> bool:
        """Fork one worker; returns True in the child (after it has run to completion: never)."""
        parent_end, child_end = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            code = 1
            try:
                code = _child_main(make_worker(), child_end, lameduck)
            except BaseException:
                log.exception("dns: worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        child_end.close()
        self.children.append((pid, parent_end))
        return False

    def states(self) -> list[tuple[Snapshot, list[str]]]:
        out = []
        with self._lock:  # one request in flight per pipe
            for pid, conn in self.children:
                try:
                    conn.send("state")
                    if conn.poll(WORKER_REPLY_TIMEOUT):
                        out.append(conn.recv())
                    else:
                        out.append(({}, [f"worker {pid} (no answer)"]))
                except (OSError, EOFError, ValueError):
                    out.append(({}, [f"worker {pid} (gone)"]))
        return out

    def stop(self, timeout: float) -> int:
        for pid, _conn in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        code = 0
        deadline = time.monotonic() + timeout
        for pid, conn in self.children:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    code = code or os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    code = code or 1
                    break
                time.sleep(0.05)
            conn.close()
        return code


def load(args: argparse.Namespace) -> DnsConfig:
    if args.config:
        return load_config(args.config)
    return default_config(resolv_conf=args.resolv_conf)


def _addr(flag: str | None, configured: Any, default: str) -> str:
    if flag is not None:
        return flag
    if configured is not None:
        return str(configured)
    return default


def run(args: argparse.Namespace) -> int:
    config = load(args)
    host, port = parse_listen(args.listen if args.listen is not None else f":{config.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    lameduck = config.lameduck if args.lameduck is None else args.lameduck
    options = ServerOptions(host=host, port=port, local_zones=(config.cluster_zone,))
    # Bind every worker's sockets before forking (port 0 then means one port for all).
    first = bind_sockets(host, port, reuse_port=args.workers > 1)
    all_sockets = [first] + [bind_sockets(host, first[0].getsockname()[1], reuse_port=True)
                             for _ in range(args.workers - 1)]

    def client_factory():
        from netplane.k8s import Client, load_config as load_kubeconfig

        return Client(load_kubeconfig(args.kubeconfig))

    stopping = threading.Event()
    workers = _Workers()
    for i in range(1, args.workers):
        mine = all_sockets[i]

        def make(mine=mine) -> DnsWorker:
            for pair in all_sockets:
                if pair is not mine:
                    for s in pair:
                        s.close()
            return DnsWorker(config, mine, client_factory, config_path=args.config, server_options=options)

        workers.fork(make, lameduck)
    for pair in all_sockets[1:]:
        for s in pair:
            s.close()

    worker = DnsWorker(config, first, client_factory, config_path=args.config, server_options=options,
                       stopping=stopping)
    signals.stop_on_signals(stopping)

    def not_ready() -> list[str]:
        missing = worker.not_ready()
        for _snap, child_missing in workers.states():
            missing += [m for m in child_missing if m not in missing]
        return missing

    def render_metrics() -> bytes:
        return worker.metrics.render(extra=[snap for snap, _ in workers.states()])

    http = HttpEndpoints(health_addr=_addr(args.health_addr, config.health, ":8080"),
                         ready_addr=_addr(args.ready_addr, config.ready, ":8181"),
                         metrics_addr=_addr(args.metrics_addr, config.prometheus, ":9153"),
                         not_ready=not_ready, render_metrics=render_metrics)
    code = 0
    try:
        http.start()
        worker.start()
        log.info("dns ready: %s:%d, %d worker(s), zone %s", host, worker.server.address[1], args.workers,
                 config.cluster_zone)
        signals.wait(stopping)
        http.lameduck.set()
        if workers.children:
            for pid, _ in workers.children:  # they lameduck in parallel with us
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        _lameduck(lameduck)
    finally:
        worker.stop()
        code = workers.stop(timeout=lameduck + 10.0)
        http.stop()
    return worker.exit_code or code
