"""The sandbox's kube-proxy: with `proxy: iptables` in the topology, `netplane proxy` runs in
every node namespace and node cgroup, supervised and restarted like the CNI agent, with the
node's view of the apiserver (the underlay kubeconfig) and the topology's cluster CIDR.

Per node (in `<state>/nodes/<node>/`): `proxy.log`, `proxy.pid` (the current process, rewritten
on every restart) and, optionally, `proxy.args`: extra `netplane proxy` flags, one argument per
line (`#` comments and blank lines are skipped). It is read before every (re)start, so changing
a node's proxy configuration is: edit the file, stop the process; the supervisor starts it
again with the new flags (as editing kube-proxy's ConfigMap and deleting its pod does on kind).

Metrics are on `<node IP>:10249`, `/healthz` and `/livez` on `0.0.0.0:10256` inside the node
namespace (kube-proxy's ports); health-check node ports bind inside the node namespace too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from netplane.errors import NetplaneError
from netplane.sandbox.names import ClusterNames

log = logging.getLogger(__name__)

METRICS_PORT = 10249
HEALTHZ_PORT = 10256
EXTRA_ARGS_FILE = "proxy.args"
PID_FILE = "proxy.pid"
LOG_FILE = "proxy.log"
LAST_SYNC_METRIC = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"


def proxy_command(node: str, *, backend: str, kubeconfig: str, cluster_cidr: str, node_ip: str,
                  extra: Sequence[str] = ()) -> list[str]:
    """The `netplane proxy` command line of one node (the flags a kube-proxy DaemonSet passes)."""
    return [sys.executable, "-m", "netplane", "proxy", "--backend", backend,
            "--kubeconfig", kubeconfig, "--node-name", node, "--cluster-cidr", cluster_cidr,
            "--metrics-addr", f"{node_ip}:{METRICS_PORT}",
            "--healthz-addr", f"0.0.0.0:{HEALTHZ_PORT}", *extra]


def parse_extra_args(text: str) -> list[str]:
    """`proxy.args` content → arguments: one per line, blank lines and `#` comments skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def read_extra_args(node_dir: str) -> list[str]:
    try:
        with open(os.path.join(node_dir, EXTRA_ARGS_FILE)) as f:
            return parse_extra_args(f.read())
    except FileNotFoundError:
        return []


def start_node_proxies(names: ClusterNames, *, backend: str, node_ips: dict[str, str],
                       cluster_cidr: str, on_stop: Callable[[Callable[[], None]], None]) -> list:
    """Start one supervised `netplane proxy` per node; `on_stop` registers their teardown (all
    stopped in parallel) before the first one starts, so a failure half-way stops the others."""
    from netplane.sandbox.daemon import SupervisedAgent, _in_parallel

    proxies: list[SupervisedAgent] = []
    on_stop(lambda: _in_parallel([p.stop for p in proxies]))
    kubeconfig = os.path.join(names.state_dir, "kubeconfig.underlay")
    for node, node_ip in node_ips.items():
        node_dir = names.node_dir(node)
        os.makedirs(node_dir, exist_ok=True)
        netns = names.node(node)

        def command(node: str = node, node_ip: str = node_ip, node_dir: str = node_dir,
                    netns: str = netns) -> list[str]:
            cmd = proxy_command(node, backend=backend, kubeconfig=kubeconfig, cluster_cidr=cluster_cidr,
                                node_ip=node_ip, extra=read_extra_args(node_dir))
            return ["ip", "netns", "exec", netns, *cmd]

        proxy = SupervisedAgent(node, command, log_path=os.path.join(node_dir, LOG_FILE),
                                cgroup=names.node_cgroup(node), what="netplane proxy",
                                pid_file=os.path.join(node_dir, PID_FILE))
        proxies.append(proxy)
        proxy.start()
    return proxies


def wait_proxies_healthy(names: ClusterNames, proxies: Sequence, node_ips: dict[str, str], *,
                         timeout: float, pause: Callable[[float], None], log_file: str = LOG_FILE) -> None:
    """Wait until every node's proxy is healthy and has programmed its first sync; fail naming
    the node and the end of its log when one exits or stays unhealthy."""
    deadline = time.monotonic() + timeout
    waiting = {p.node: p for p in proxies}
    while waiting:
        for node, proxy in list(waiting.items()):
            log_path = os.path.join(names.node_dir(node), log_file)
            if proxy.proc is not None and proxy.proc.poll() is not None and proxy.restarts == 0:
                raise NetplaneError(f"the proxy on {node} exited ({proxy.proc.returncode}): "
                                    f"{_tail(log_path)}")
            if _synced(names.node(node), node_ips[node]):
                del waiting[node]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise NetplaneError(f"proxy not healthy after {timeout:.0f}s on "
                                f"{', '.join(sorted(waiting))}; last log lines: " +
                                "; ".join(f"{n}: {_tail(os.path.join(names.node_dir(n), log_file))}"
                                          for n in sorted(waiting)))
        pause(0.2)


def _synced(netns: str, node_ip: str) -> bool:
    """/healthz answers 200 and the metrics show a first successful sync (kube-proxy's /healthz
    is also 200 before anything was queued, so it alone does not prove programmed rules)."""
    def get(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, "curl", "-sf", "-m", "1", url],
                              capture_output=True, text=True)

    if get(f"http://{node_ip}:{HEALTHZ_PORT}/healthz").returncode != 0:
        return False
    metrics = get(f"http://{node_ip}:{METRICS_PORT}/metrics")
    for line in metrics.stdout.splitlines():
        if line.startswith(LAST_SYNC_METRIC + " "):
            try:
                return float(line.split()[1]) > 0
            except ValueError:
                return False
    return False


def _tail(path: str, lines: int = 3) -> str:
    """The last lines of a log, for an error message (the state dir is gone after a failed up)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return f"(no log at {path})"
