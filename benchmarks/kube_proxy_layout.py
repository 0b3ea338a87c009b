"""The anchor for benchmarks/proxy_bench.py: kube-proxy's own iptables layout for N services.

Written from the chain layout in ../shared/reference/kube-proxy.md §2 (iptables mode, 1.31+):
KUBE-SERVICES holds one rule per service-port (a linear list, last rule the NodePort jump),
each KUBE-SVC chain masquerades off-cluster sources and picks an endpoint with
`statistic --probability 1/(n-i)`, each KUBE-SEP chain does hairpin masquerade + DNAT. Above
1,000 endpoints kube-proxy's large-cluster mode drops the per-endpoint comments, as here.
Not netplane code: it exists only so the benchmark can time kube-proxy's ruleset in the same
kernel, with the same iptables binary, side by side.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True)
class BenchService:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: tuple[str, ...]  # IPs
    target_port: int
    protocol: str = "tcp"

    @property
    def port_name(self) -> str:
        return f"{self.namespace}/{self.name}:http"


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(svc: BenchService) -> str:
    return "KUBE-SVC-" + _hash(svc.port_name + svc.protocol)


def sep_chain(svc: BenchService, ep: str) -> str:
    return "KUBE-SEP-" + _hash(svc.port_name + svc.protocol + f"{ep}:{svc.target_port}")


def _nat_service(svc: BenchService, cluster_cidr: str, large: bool) -> tuple[list[str], list[str], str]:
    """(chain declarations, rules, the KUBE-SERVICES rule) of one service-port."""
    svc_name = svc_chain(svc)
    p = svc.protocol
    decl = [svc_name]
    rules = [f'-A {svc_name} -m comment --comment "{svc.port_name} cluster IP" -m {p} -p {p} '
             f"-d {svc.cluster_ip}/32 --dport {svc.port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"]
    n = len(svc.endpoints)
    for i, ep in enumerate(svc.endpoints):
        sep = sep_chain(svc, ep)
        decl.append(sep)
        comment = "" if large else f'-m comment --comment "{svc.port_name} -> {ep}:{svc.target_port}" '
        if i < n - 1:
            rules.append(f"-A {svc_name} {comment}-m statistic --mode random "
                         f"--probability {1.0 / (n - i):.10f} -j {sep}")
        else:
            rules.append(f"-A {svc_name} {comment}-j {sep}")
        sep_comment = "" if large else f'-m comment --comment "{svc.port_name}" '
        rules.append(f"-A {sep} {sep_comment}-s {ep}/32 -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} {sep_comment}-m {p} -p {p} -j DNAT --to-destination {ep}:{svc.target_port}")
    entry = (f'-A KUBE-SERVICES -m comment --comment "{svc.port_name} cluster IP" -m {p} -p {p} '
             f"-d {svc.cluster_ip}/32 --dport {svc.port} -j {svc_name}")
    return decl, rules, entry


NODEPORTS_LAST = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                  'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')


def full_ruleset(services: list[BenchService], cluster_cidr: str) -> str:
    """iptables-restore input for a full kube-proxy sync (nat + filter), flushing its tables."""
    large = sum(len(s.endpoints) for s in services) > LARGE_CLUSTER_ENDPOINTS
    decls = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"]
    body: list[str] = []
    entries: list[str] = []
    for svc in services:
        d, r, e = _nat_service(svc, cluster_cidr, large)
        decls += d
        body += r
        entries.append(e)
    nat = ["*nat", *(f":{c} - [0:0]" for c in decls),
           '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
           '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
           '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
           "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
           "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
           '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
           "-j MASQUERADE --random-fully",
           "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
           *entries, NODEPORTS_LAST, *body, "COMMIT"]
    filt = ["*filter",
            *(f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                                        "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")),
            "-A INPUT -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL",
            '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
            "-A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES",
            "-A FORWARD -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL",
            "-A FORWARD -j KUBE-FORWARD",
            "-A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES",
            "-A FORWARD -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES",
            "-A OUTPUT -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL",
            "-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "COMMIT"]
    return "\n".join(nat + filt) + "\n"


def partial_ruleset(services: list[BenchService], changed: BenchService, old_endpoints: tuple[str, ...],
                    cluster_cidr: str) -> str:
    """What a kube-proxy partial sync (MinimizeIPTablesRestore) writes after one EndpointSlice
    of `changed` changed: the top-level chains in full (KUBE-SERVICES is one rule per service),
    the changed service's chains, and `-X` for its vanished endpoint chains. For `--noflush`."""
    large = sum(len(s.endpoints) for s in services) > LARGE_CLUSTER_ENDPOINTS
    entries = []
    for svc in services:
        entries.append(_nat_service(svc, cluster_cidr, large)[2])
    decl, rules, _ = _nat_service(changed, cluster_cidr, large)
    gone = [sep_chain(changed, ep) for ep in old_endpoints if ep not in changed.endpoints]
    lines = ["*nat", *(f":{c} - [0:0]" for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                                  "KUBE-MARK-MASQ", *decl, *gone]),
             "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
             "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
             '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
             "-j MASQUERADE --random-fully",
             "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
             *entries, NODEPORTS_LAST, *rules, *(f"-X {c}" for c in gone), "COMMIT"]
    return "\n".join(lines) + "\n"
