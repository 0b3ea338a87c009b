"""`netplane proxy`: the kube-proxy replacement as a process, one per node (in the node's network
namespace; hostNetwork on kind).

Data flow: informers (Services, EndpointSlices, the own Node) → config.py fan-out → the backend
(IptablesProxier) → BoundedFrequencyRunner syncs on a worker thread. /metrics is served on
--metrics-addr, /healthz and /livez on --healthz-addr, health-check node ports on
--healthcheck-bind-address. SIGTERM/SIGINT stop the process and leave the rules in place, as
kube-proxy does: a restart must not break established connections, and the restarted process
rewrites everything on its first (full) sync anyway. `--cleanup` removes everything netplane's
proxy owns in iptables and exits.

`netplane agent --proxy iptables` hosts the same ProxyServer in the agent process
(`hosted`): one DaemonSet on kind, sharing the agent's apiserver client and lifecycle.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
import threading

from netplane import signals
from netplane.errors import ConfigError
from netplane.k8s import Client, Informer, load_config
from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

# kube-proxy's FullSyncPeriod: with partial syncs, the full rewrite is a rare safety net (at
# 10,000 services it costs ~17 s of iptables-nft-restore), not something to do every syncPeriod.
FULL_SYNC_SECONDS = 3600.0
NODE_WAIT_SECONDS = 10.0  # how long start-up waits for the own Node (zone, IPs) before syncing
SERVICES_PATH = "/api/v1/services"
SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
NODES_PATH = "/api/v1/nodes"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, flag: str) -> float:
    """"1s", "500ms", "2m", "1h" or plain seconds → seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a duration such as 1s, 500ms, 2m")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_address(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_cidrs(text: str, flag: str) -> tuple[str, ...]:
    out = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError as e:
            raise ConfigError(f"{flag} {item!r}: {e}") from None
        if net.version != 4:
            raise ConfigError(f"{flag} {item!r}: only IPv4 is supported")
        out.append(str(net))
    return tuple(out)


class ProxyServer:
    """Everything one `netplane proxy` process runs (built from validated settings)."""

    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        from netplane.proxy.conntrack import ConntrackCleaner
        from netplane.proxy.healthcheck import ProxyHealth, ServiceHealthServer
        from netplane.proxy.iptables.port import ExecIptables
        from netplane.proxy.iptables.proxier import IptablesProxier
        from netplane.proxy.metrics import ProxyMetrics
        from netplane.proxy.model import NodeContext

        self.args = args
        self.min_sync = parse_duration(args.min_sync_period, "--min-sync-period")
        self.sync_period = parse_duration(args.sync_period, "--sync-period")
        if self.sync_period < self.min_sync:
            raise ConfigError(f"--sync-period {args.sync_period} is shorter than "
                              f"--min-sync-period {args.min_sync_period}")
        self.metrics_addr = parse_address(args.metrics_addr, "--metrics-addr")
        self.healthz_addr = parse_address(args.healthz_addr, "--healthz-addr")
        cluster_cidr = parse_cidrs(args.cluster_cidr, "--cluster-cidr")
        if len(cluster_cidr) > 1:
            raise ConfigError(f"--cluster-cidr {args.cluster_cidr!r}: one IPv4 CIDR expected")
        node = NodeContext(args.node_name, cluster_cidr=cluster_cidr[0] if cluster_cidr else "",
                           masquerade_all=args.masquerade_all,
                           node_port_addresses=parse_cidrs(args.nodeport_addresses,
                                                           "--nodeport-addresses"))
        self.metrics = ProxyMetrics()
        self.health = ProxyHealth(2 * self.sync_period, metrics=self.metrics)
        self.service_health = ServiceHealthServer(bind_address=args.healthcheck_bind_address,
                                                  is_proxy_healthy=self.health.is_healthy)
        self.proxier = IptablesProxier(
            node, ExecIptables(mode), conntrack=ConntrackCleaner(),
            min_sync_interval=self.min_sync, sync_period=self.sync_period,
            full_sync_interval=max(FULL_SYNC_SECONDS, self.sync_period),
            metrics=self.metrics, proxy_health=self.health, service_health=self.service_health)
        self.mode = mode
        self.stopping = threading.Event()
        self._servers: list = []
        self._informers: list[Informer] = []
        self._sync_thread: threading.Thread | None = None

    def _start_http(self) -> list:
        from netplane.proxy.healthcheck import HttpServer, serve_proxy_health

        metrics_route = {"/metrics": lambda: (200, self.metrics.render(), CONTENT_TYPE, {})}
        if self.metrics_addr == self.healthz_addr:
            return [serve_proxy_health(self.health, self.healthz_addr, self.metrics)]
        return [serve_proxy_health(self.health, self.healthz_addr),
                HttpServer(self.metrics_addr, metrics_route, "proxy metrics")]

    def run(self) -> int:
        """`netplane proxy`: serve until SIGTERM/SIGINT."""
        signals.stop_on_signals(self.stopping)
        try:
            self.start(Client(load_config(self.args.kubeconfig)))
            signals.wait(self.stopping)
            log.info("stopping; the rules stay in place")
        finally:
            self.stop()
        return 0

    def start(self, client: Client) -> None:
        """Informers, HTTP servers and the sync thread, on `client` (the agent passes its own
        when it hosts the proxy). Returns once started; stop() undoes it."""
        from netplane.proxy.config import (
            ENDPOINT_SLICE_LABEL_SELECTOR,
            SERVICE_LABEL_SELECTOR,
            connect_informers,
        )

        name = self.args.node_name
        self._servers = self._start_http()
        services = Informer(client, SERVICES_PATH, Service.from_dict,
                            label_selector=SERVICE_LABEL_SELECTOR, name="proxy-services")
        slices = Informer(client, SLICES_PATH, EndpointSlice.from_dict,
                          label_selector=ENDPOINT_SLICE_LABEL_SELECTOR, name="proxy-endpointslices")
        nodes = Informer(client, NODES_PATH, Node.from_dict,
                         field_selector=f"metadata.name={name}", name="proxy-node")
        self._informers = [nodes, services, slices]
        connect_informers(self.proxier, services, slices, nodes, name, stop=self.stopping)
        self._sync_thread = threading.Thread(target=self.proxier.sync_loop, args=(self.stopping,),
                                             name="proxy sync", daemon=True)
        for informer in self._informers:
            informer.start()
        self._wait_for_node(nodes)
        self._sync_thread.start()
        log.info("proxy started: node %s, backend iptables (%s mode), metrics on %s:%d, "
                 "healthz on %s:%d", name, self.mode, *self.metrics_addr, *self.healthz_addr)

    def stop(self) -> None:
        """Stop watching and syncing; the rules stay, so connections survive a restart."""
        self.stopping.set()
        for informer in self._informers:
            informer.stop()
        if self._sync_thread is not None and self._sync_thread.is_alive():
            self._sync_thread.join(30.0)
        self.service_health.close()
        for server in self._servers:
            server.close()

    def _wait_for_node(self, nodes: Informer[Node]) -> None:
        """The own Node gives the zone (topology hints) and node IPs; do not sync without it if it
        can be had quickly, but never block start-up on it (kube-proxy does the same)."""
        name = self.args.node_name
        if not nodes.wait_for_sync(NODE_WAIT_SECONDS) or nodes.get(name) is None:
            log.warning("node %s not found in the apiserver yet: syncing without its zone and IPs",
                        name)


def _cleanup(mode: str) -> int:
    from netplane.proxy.iptables.port import MODES, ExecIptables, IptablesError

    modes = MODES if mode == "auto" else (mode,)
    total = 0
    for m in modes:
        try:
            removed = ExecIptables(m).cleanup()
        except IptablesError as e:
            if mode == "auto":  # e.g. no legacy support in this kernel: nothing of ours there
                log.warning("cleanup in %s mode: %s", m, e)
                continue
            raise
        for item in removed:
            print(f"removed ({m}) {item}")
        total += len(removed)
    if not total:
        print("nothing to remove")
    sys.stdout.flush()
    return 0


def _iptables_mode(requested: str) -> str:
    from netplane.proxy.iptables.port import detect_mode

    return detect_mode() if requested == "auto" else requested


def hosted(agent_args: argparse.Namespace) -> ProxyServer:
    """The proxy inside `netplane agent --proxy iptables`: the same settings under the agent's
    flags (--proxy-metrics-addr for its metrics, --cluster-cidr as the local-traffic detector).
    Built (and its settings checked) before the agent does anything; the agent then calls
    start() with its own apiserver client and stop() when it exits."""
    settings = argparse.Namespace(**vars(agent_args))
    settings.metrics_addr = agent_args.proxy_metrics_addr
    return ProxyServer(settings, _iptables_mode(agent_args.iptables_mode))


def run(args: argparse.Namespace) -> int:
    if args.backend == "ebpf":
        raise ConfigError("--backend ebpf: not implemented yet; use --backend iptables")
    if args.cleanup:
        return _cleanup(args.iptables_mode)
    if not args.node_name:
        raise ConfigError("--node-name is required")
    return ProxyServer(args, _iptables_mode(args.iptables_mode)).run()
