"""Stale UDP conntrack entries, as kube-proxy's pkg/proxy/conntrack/cleanup.go sees them.

UDP has no connection teardown, so a conntrack entry created while a service had no endpoints
(an un-NATed flow) or that points at an endpoint which is gone keeps blackholing the client's
"connection" (DNS, statsd) until it idles out. After each successful sync, kube-proxy deletes
every UDP entry whose original destination is a service IP (ClusterIP, external IP, LB IP) and
service port, or whose original destination port is a NodePort, and whose reply source is not
one of the service's serving endpoints.

Pure part: `stale_udp_entries(previous, current)` returns selectors for exactly the UDP
service-ports where staleness can have appeared since `previous` (all of them when `previous`
is None, e.g. at start-up): new or changed services, endpoints removed or no longer serving,
and services going from no serving endpoints to some. `parse_flows` reads `conntrack -L` output
and `flows_to_delete` applies the selectors. Effects: `ConntrackCleaner` lists UDP flows with
the `conntrack` binary (once, and only when there is a selector) and deletes the stale ones,
grouped so that one `conntrack -D` removes every flow of one (destination, port, reply source).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netplane.errors import NetplaneError
from netplane.proxy.model import NodeContext, ProxyState, ServicePortInfo

log = logging.getLogger(__name__)


class ConntrackError(NetplaneError):
    """A conntrack command failed (the message names the command and shows stderr)."""


@dataclass(frozen=True, slots=True, order=True)
class StaleFlowSelector:
    """UDP flows to `orig_dst`:`orig_port_dst` (any destination when `orig_dst` is None: a
    NodePort) are stale unless their reply source is in `serving`."""

    orig_port_dst: int
    orig_dst: str | None
    serving: frozenset[str]
    service: str = ""  # ServicePortName, for logs


@dataclass(frozen=True, slots=True)
class Flow:
    """The parts of one conntrack entry the cleanup looks at."""

    protocol: str
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str


def _serving(endpoints: Iterable) -> frozenset[str]:
    return frozenset(ep.ip for ep in endpoints if ep.serving)


def _selectors(info: ServicePortInfo, serving: frozenset[str]) -> list[StaleFlowSelector]:
    name = str(info.name)
    ips = dict.fromkeys((info.cluster_ip, *info.external_ips, *info.load_balancer_ips))
    out = [StaleFlowSelector(info.port, ip, serving, name) for ip in ips if ip]
    if info.node_port:
        out.append(StaleFlowSelector(info.node_port, None, serving, name))
    return out


def stale_udp_entries(previous: ProxyState | None, current: ProxyState,
                      node: NodeContext | None = None) -> list[StaleFlowSelector]:
    """Selectors of the UDP flows that may be stale after going from `previous` to `current`.

    `node` is accepted for symmetry with the backends; cleanup.go's rules do not depend on it
    (NodePort flows are matched on any destination address)."""
    del node
    candidates = current.services.keys() if previous is None else current.changed
    out: list[StaleFlowSelector] = []
    for spn in sorted(candidates):
        info = current.services.get(spn)
        if info is None or info.protocol != "UDP":
            continue
        serving = _serving(current.endpoints.get(spn, ()))
        before = previous.services.get(spn) if previous is not None else None
        if before is not None and _same_frontends(before, info):
            was = _serving(previous.endpoints.get(spn, ())) if previous is not None else frozenset()
            gone = was - serving
            became_reachable = not was and bool(serving)
            if not gone and not became_reachable:
                continue
        out.extend(_selectors(info, serving))
    return out


def _same_frontends(a: ServicePortInfo, b: ServicePortInfo) -> bool:
    return (a.cluster_ip, a.port, a.node_port, a.external_ips, a.load_balancer_ips) == (
        b.cluster_ip, b.port, b.node_port, b.external_ips, b.load_balancer_ips)


# -- conntrack -L output -------------------------------------------------------------------------


def parse_flows(text: str) -> list[Flow]:
    """`conntrack -L` lines → flows; lines without both tuples are skipped.

    A line reads ``udp 17 29 src=A dst=B sport=P dport=Q [UNREPLIED] src=C dst=D sport=R
    dport=S mark=0 use=1``: the first src/dst/sport/dport are the original tuple, the second
    src is the reply source (the endpoint, after DNAT)."""
    flows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        seen: dict[str, list[str]] = {}
        for item in fields:
            key, eq, value = item.partition("=")
            if eq and key in ("src", "dst", "sport", "dport"):
                seen.setdefault(key, []).append(value)
        try:
            flows.append(Flow(fields[0], seen["src"][0], seen["dst"][0], int(seen["sport"][0]),
                              int(seen["dport"][0]), seen["src"][1]))
        except (KeyError, IndexError, ValueError):
            continue
    return flows


def flows_to_delete(flows: Iterable[Flow], selectors: Sequence[StaleFlowSelector]
                    ) -> list[tuple[str | None, int, str]]:
    """(orig_dst or None, orig_port_dst, reply_src) groups covering every stale flow: an exact
    service IP selector wins over a NodePort one, as in cleanup.go."""
    by_ip = {(s.orig_dst, s.orig_port_dst): s for s in selectors if s.orig_dst is not None}
    by_port = {s.orig_port_dst: s for s in selectors if s.orig_dst is None}
    out: dict[tuple[str | None, int, str], None] = {}
    for flow in flows:
        if flow.protocol != "udp":
            continue
        sel = by_ip.get((flow.orig_dst, flow.orig_dport))
        if sel is not None:
            if flow.reply_src not in sel.serving:
                out[(flow.orig_dst, flow.orig_dport, flow.reply_src)] = None
            continue
        sel = by_port.get(flow.orig_dport)
        if sel is not None and flow.reply_src not in sel.serving:
            out[(None, flow.orig_dport, flow.reply_src)] = None
    return list(out)


# -- effects ----------------------------------------------------------------------------------------


class ConntrackCleaner:
    """Deletes stale UDP flows with the conntrack binary. `prefix` runs it elsewhere (tests:
    ("ip", "netns", "exec", NAME)); `run` is subprocess.run-compatible."""

    def __init__(self, *, run=subprocess.run, prefix: Sequence[str] = (),
                 binary: str = "conntrack", timeout: float = 30.0) -> None:
        self._run = run
        self._prefix = tuple(prefix)
        self._binary = binary
        self._timeout = timeout

    def _exec(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return self._run([*self._prefix, *argv], capture_output=True, text=True,
                             timeout=self._timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise ConntrackError(f"`{' '.join(argv)}`: {e}") from None

    def list_udp(self) -> list[Flow]:
        argv = [self._binary, "-L", "-p", "udp"]
        proc = self._exec(argv)
        if proc.returncode != 0:
            raise ConntrackError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or '').strip()}")
        return parse_flows(proc.stdout or "")

    def delete(self, orig_dst: str | None, orig_port_dst: int, reply_src: str) -> None:
        argv = [self._binary, "-D", "-p", "udp"]
        if orig_dst is not None:
            argv += ["--orig-dst", orig_dst]
        argv += ["--orig-port-dst", str(orig_port_dst), "--reply-src", reply_src]
        proc = self._exec(argv)
        # Exit 1 with "0 flow entries have been deleted": the flow expired meanwhile.
        if proc.returncode != 0 and not (proc.returncode == 1
                                         and "0 flow entries" in (proc.stderr or "")):
            raise ConntrackError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or '').strip()}")

    def clean(self, selectors: Sequence[StaleFlowSelector]) -> int:
        """Delete the stale flows the selectors describe; returns how many groups were deleted.
        Nothing runs when there are no selectors (the common case: no UDP change)."""
        if not selectors:
            return 0
        groups = flows_to_delete(self.list_udp(), selectors)
        for orig_dst, port, reply_src in groups:
            log.info("deleting stale UDP conntrack entries to %s:%d with reply source %s",
                     orig_dst or "*", port, reply_src)
            self.delete(orig_dst, port, reply_src)
        return len(groups)
