"""The `netplane` command line.

Each subcommand is declared here (name, help, arguments) and implemented by a `run(args)` function
in its own module, imported only when that subcommand runs: `netplane --help` stays fast and no
component does work at import time. This is the only module that prints for the user; everything
else logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from netplane import __version__

# name -> (module implementing run(args), one-line help, argument adder)
_Adder = Callable[[argparse.ArgumentParser], None]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add_apiserver(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep objects and resourceVersions in DIR/state.sqlite across restarts "
        "(default: in memory)",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        action="append",
        default=[],
        help="address to serve on; repeatable (default: 127.0.0.1:6443). Port 0 picks a free port",
    )
    p.add_argument(
        "--service-cidr",
        metavar="CIDR",
        default="10.96.0.0/12",
        help="range Service ClusterIPs are allocated from (default: %(default)s)",
    )
    p.add_argument(
        "--node-port-range",
        metavar="LOW-HIGH",
        default="30000-32767",
        help="range NodePorts are allocated from (default: %(default)s)",
    )
    p.add_argument(
        "--write-kubeconfig",
        metavar="FILE",
        help="write a kubeconfig for kubectl and the Python clients once serving",
    )
    p.add_argument(
        "--history",
        metavar="N",
        type=int,
        default=100_000,
        help="watch events kept for resuming watches; older resourceVersions get 410 Gone "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--bookmark-interval",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="how often watches with allowWatchBookmarks receive a BOOKMARK (default: %(default)s)",
    )


def _add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME",
                   help="sandbox cluster name (default: the only running cluster)")


def _add_up(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", nargs="?", metavar="FILE",
                   help="topology file (default: topologies/default.yaml; format: topologies/README.md)")
    p.add_argument("--name", metavar="NAME", help="cluster name (default: the topology's name)")
    p.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                   help="give up (and clean up) if the cluster is not ready by then (default: %(default)s)")
    p.add_argument("--foreground", action="store_true",
                   help="run the cluster in this process until SIGTERM/Ctrl-C instead of a background daemon")
    p.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)


def _add_exec(p: argparse.ArgumentParser) -> None:
    _add_name(p)
    p.add_argument("-n", "--namespace", default="default", help="the pod's namespace (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--node", metavar="NODE", help="run on a node (in its network namespace)")
    where.add_argument("--host", metavar="HOST", help="run on an external host of the topology")
    p.add_argument("pod", nargs="?", metavar="POD", help="run in this pod's network namespace")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...",
                   help="the command; its exit code is passed through")


def _add_kubeconfig(p: argparse.ArgumentParser) -> None:
    """How the daemons (agent, proxy, dns) find the apiserver: one flag, one rule."""
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="kubeconfig for the apiserver (default: in-cluster service account, then $KUBECONFIG)")


def _add_agent(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-name", required=True, metavar="NAME", help="this node's Node object name")
    _add_kubeconfig(p)
    p.add_argument("--socket", default="/run/netplane/agent.sock", metavar="PATH",
                   help="root-only unix socket the CNI shim talks to (default: %(default)s)")
    p.add_argument("--state-dir", default="/run/netplane/cni", metavar="DIR",
                   help="IPAM state, on tmpfs so reboots start clean (default: %(default)s)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d", metavar="DIR",
                   help="where the conflist lives (read by the runtime) (default: %(default)s)")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", metavar="DIR",
                   help="where the shim is installed (default: %(default)s)")
    p.add_argument("--metrics-addr", default="0.0.0.0:9650", metavar="ADDR:PORT",
                   help="/healthz, /readyz and Prometheus /metrics (default: %(default)s)")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", metavar="CIDR",
                   help="pod network; traffic leaving it is masqueraded (default: %(default)s)")
    p.add_argument("--node-ip", metavar="IP", help="underlay address (default: the Node's InternalIP)")
    p.add_argument("--mtu", type=int, metavar="N", help="pod MTU (default: underlay MTU - 50)")
    p.add_argument("--vni", type=int, default=1, help="VXLAN network identifier (default: %(default)s)")
    p.add_argument("--vxlan-port", type=int, default=8472, help="VXLAN UDP port (default: %(default)s)")
    p.add_argument("--overlay-fastpath", choices=("auto", "on", "off"), default="auto",
                   help="tc eBPF shortcut for pod <-> remote pod TCP/UDP that conntrack has not seen "
                        "(ebpf/overlay_fastpath.bpf.c); auto: use it when it loads, else forward "
                        "through the node (default: %(default)s)")
    p.add_argument("--teardown-workers", type=_non_negative_int, default=16, metavar="N",
                   help="threads that finish DELs after they are answered (recorded first in the DEL "
                        "spool, replayed after a crash); 0: answer a DEL only once its veth is deleted "
                        "and its IP released (default: %(default)s)")
    proxy = p.add_argument_group("service proxy hosted in the agent (instead of a separate `netplane proxy`)")
    proxy.add_argument("--proxy", choices=("none", "iptables"), default="none",
                       help="run the kube-proxy replacement in this process, with --cluster-cidr as its "
                       "local-traffic detector (default: %(default)s)")
    proxy.add_argument("--proxy-metrics-addr", default="127.0.0.1:10249", metavar="ADDR:PORT",
                       help="the proxy's Prometheus /metrics, kubeproxy_* names (default: %(default)s)")
    _add_proxy_sync_options(proxy)


def _add_dns(p: argparse.ArgumentParser) -> None:
    _add_kubeconfig(p)
    p.add_argument("--config", metavar="FILE",
                   help="Corefile-subset configuration, reloaded on change (format: docs/dns.md; "
                   "default: kubeadm's Corefile forwarding to --resolv-conf)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="FILE",
                   help="upstreams of the default configuration (default: %(default)s)")
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="DNS address, UDP and TCP (default: the configuration's port on 0.0.0.0, i.e. :53)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes answering on the same port with SO_REUSEPORT, each a full resolver "
                   "(default: %(default)s)")
    p.add_argument("--health-addr", metavar="ADDR:PORT", help="/health (default: the config's, else :8080)")
    p.add_argument("--ready-addr", metavar="ADDR:PORT", help="/ready (default: the config's, else :8181)")
    p.add_argument("--metrics-addr", metavar="ADDR:PORT",
                   help="Prometheus /metrics (default: the config's, else :9153)")
    p.add_argument("--lameduck", type=float, metavar="SECONDS",
                   help="keep answering this long after SIGTERM while /ready says 503 "
                   "(default: the config's health lameduck)")


def _add_proxy_sync_options(p: argparse.ArgumentParser) -> None:
    """The proxy's settings shared by `netplane proxy` and `netplane agent --proxy iptables`."""
    p.add_argument("--masquerade-all", action="store_true",
                   help="masquerade all traffic sent to ClusterIPs")
    p.add_argument("--nodeport-addresses", default="", metavar="CIDR,...",
                   help="serve NodePorts only on node IPs in these ranges (default: every local address)")
    p.add_argument("--min-sync-period", default="1s", metavar="DURATION",
                   help="minimum time between rule syncs, e.g. 1s, 500ms (default: %(default)s)")
    p.add_argument("--sync-period", default="30s", metavar="DURATION",
                   help="a sync happens at least this often; /healthz fails after 2x this "
                   "with changes pending (default: %(default)s)")
    p.add_argument("--healthz-addr", default="0.0.0.0:10256", metavar="ADDR:PORT",
                   help="the proxy's /healthz and /livez (default: %(default)s)")
    p.add_argument("--healthcheck-bind-address", default="0.0.0.0", metavar="ADDR",
                   help="address of the healthCheckNodePort servers of externalTrafficPolicy=Local "
                   "services (default: %(default)s)")
    p.add_argument("--iptables-mode", choices=("auto", "legacy", "nft"), default="auto",
                   help="iptables backend binaries; auto picks the mode already holding "
                   "Kubernetes/netplane rules, else the iptables alternative's (default: %(default)s)")


def _add_proxy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("iptables", "ebpf"), default="iptables",
                   help="dataplane backend (default: %(default)s; ebpf is not implemented yet)")
    _add_kubeconfig(p)
    p.add_argument("--node-name", metavar="NAME",
                   help="this node's Node object name (required unless --cleanup)")
    p.add_argument("--cluster-cidr", default="", metavar="CIDR",
                   help="pod network: traffic to ClusterIPs from outside it is masqueraded "
                   "(default: none, no local-traffic detection)")
    p.add_argument("--metrics-addr", default="127.0.0.1:10249", metavar="ADDR:PORT",
                   help="Prometheus /metrics (default: %(default)s)")
    _add_proxy_sync_options(p)
    p.add_argument("--cleanup", action="store_true",
                   help="remove every iptables chain and jump netplane's proxy owns (with auto: in "
                   "both modes), print what was removed and exit")


_COMMANDS: dict[str, tuple[str, str, _Adder]] = {
    "apiserver": (
        "netplane.apiserver.main",
        "run the embedded Kubernetes API server (a subset, enough for kubectl and netplane)",
        _add_apiserver,
    ),
    "agent": ("netplane.cni.agent",
              "run the node agent: CNI server for the shim, IPAM, VXLAN overlay, metrics", _add_agent),
    "dns": ("netplane.dns.main",
            "run the cluster DNS: Kubernetes DNS spec zone, cache, forwarding, health and metrics", _add_dns),
    "proxy": ("netplane.proxy.main",
              "run the kube-proxy replacement: Services and EndpointSlices to iptables rules", _add_proxy),
    "up": ("netplane.sandbox.commands:run_up",
           "create a sandbox cluster (network namespaces + processes) and wait until it is ready", _add_up),
    "down": ("netplane.sandbox.commands:run_down",
             "remove a sandbox cluster and everything it made (also after a failed or killed up)", _add_name),
    "status": ("netplane.sandbox.commands:run_status", "show sandbox clusters, their nodes and pods", _add_name),
    "kubeconfig": ("netplane.sandbox.commands:run_kubeconfig",
                   "print the path of a sandbox cluster's kubeconfig", _add_name),
    "exec": ("netplane.sandbox.commands:run_exec",
             "run a command in a pod, on a node (--node) or on an external host (--host)", _add_exec),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netplane",
        description="Kubernetes networking data plane: CNI, kube-proxy replacement, cluster DNS.",
    )
    parser.add_argument("--version", action="version", version=f"netplane {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text, add_args) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO
    if args.verbose >= 2:
        level = logging.DEBUG
    # Servers announce readiness through logging, so INFO is the floor for long-running commands.
    if args.command in {"apiserver", "up", "agent", "dns", "proxy"}:
        level = min(level, logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    module, _, func = args._module.partition(":")
    run = getattr(importlib.import_module(module), func or "run")
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `netplane status | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 141
    except Exception as exc:  # the CLI is the one place that turns errors into text for the user
        from netplane.errors import NetplaneError

        if isinstance(exc, NetplaneError):
            print(f"netplane {args.command}: {exc}", file=sys.stderr)
            return 1
        raise
