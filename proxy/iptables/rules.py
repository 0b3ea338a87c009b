"""ProxyState + NodeContext → Ruleset: kube-proxy's iptables layout with dispatch trees, pure.

Behaviour follows kube-proxy's syncProxyRules (../../shared/reference/kube-proxy.md §1-2, §5)
chain for chain, with four layout differences:

- The per-VIP rules of KUBE-SERVICES live in the leaves of a destination-IP trie rooted at
  NP-SERVICES, and KUBE-NODEPORTS becomes a port trie rooted at NP-NODEPORTS (dispatch.py). The
  NodePort jump is still NP-SERVICES' last rule.
- The filter table's per-service rules are dispatched the same way: no-endpoint REJECT/DROP
  rules for cluster IPs (NP-FILTER-SERVICES), external and LB IPs (NP-EXTERNAL-SERVICES),
  NodePorts (NP-EXTERNAL-NODEPORTS, behind one ``addrtype --dst-type LOCAL`` rule), the LB
  source-range drops (NP-PROXY-FIREWALL) and health-check ACCEPTs (NP-FILTER-NODEPORTS). These
  chains are walked by every NEW connection in INPUT/FORWARD/OUTPUT, so a linear list of
  10,000 "has no endpoints" rules would tax all traffic, not only service traffic; reusing the
  trie costs nothing extra and bounds that walk like the nat one.
- Rules are written in the order iptables-save prints them back (``-s -d -p`` first, marks as
  ``--set-xmark``), so what is read back differs from what was written only where the kernel
  canonicalises (see ruleset.normalise_rule).

- An endpoint on another node gets its DNAT inline in the service chain instead of an NP-SEP
  chain of its own when kube-proxy's hairpin rule in that chain could never match
  (`RuleCompiler._needs_endpoint_chain`). At 10,000 services × 10 endpoints that is 100,000
  fewer chains: a full restore ~4× faster and each partial commit ~2× faster, because the
  kernel re-validates every chain reachable from the nat hooks on every commit.

Incremental compilation: each service-port's output (its NP-SVC/SVL/EXT/FW/SEP chains and the
entries it contributes to the dispatch trees) is cached; `compile(state, full=False)` rebuilds
only `state.changed`, swaps their chains, moves their tree entries, and lets the trees re-render
the chains on the touched paths. Everything is a function of the state alone (trees order their
entries themselves), so an incremental result is identical to a full compile of the same state.
Large-cluster mode (more than `large_cluster_threshold` endpoints: no comments on endpoint rules)
changes every service's chains, so flipping it forces a full compile.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from netplane.errors import ConfigError
from netplane.proxy.iptables import names
from netplane.proxy.iptables.dispatch import DispatchTree, IpDispatchTree, PortDispatchTree, ip_key
from netplane.proxy.iptables.names import UnsafeRuleText
from netplane.proxy.iptables.ruleset import ChainTable, Ruleset
from netplane.proxy.model import (
    EndpointInfo,
    NodeContext,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)
from netplane.proxy.topology import categorize_endpoints

log = logging.getLogger(__name__)

# Dispatch trees: index → (table, root chain, chain prefix, kind)
NAT_IP, NAT_PORT, FILTER_IP, EXTERNAL_IP, EXTERNAL_PORT, FIREWALL_IP, HEALTHCHECK_PORT = range(7)
_TREES = (
    ("nat", names.SERVICES, names.NAT_IP_TREE, IpDispatchTree),
    ("nat", names.NODEPORTS, names.NAT_PORT_TREE, PortDispatchTree),
    ("filter", names.FILTER_SERVICES, names.FILTER_SERVICES_TREE, IpDispatchTree),
    ("filter", names.EXTERNAL_SERVICES, names.EXTERNAL_IP_TREE, IpDispatchTree),
    ("filter", names.EXTERNAL_NODEPORTS, names.EXTERNAL_PORT_TREE, PortDispatchTree),
    ("filter", names.PROXY_FIREWALL, names.FIREWALL_TREE, IpDispatchTree),
    ("filter", names.FILTER_NODEPORTS, names.HEALTHCHECK_TREE, PortDispatchTree),
)
NODEPORTS_COMMENT = "netplane service nodeports; NOTE: this must be the last rule in this chain"
_AFFINITY_SOURCE = "--mask 255.255.255.255 --rsource"

Entry = tuple[int, int, str, str]  # (tree index, key, rule, protocol)


@dataclass(frozen=True, slots=True)
class _ServiceOutput:
    chains: dict[str, tuple[str, ...]]  # nat chains owned by this service-port
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class _Service:
    """A ServicePortInfo's fields as rule tokens (validated), plus its chain names."""

    kname: str  # kube-proxy's "ns/name:port": hashed into chain names, shown in comments
    ip: str
    port: int
    proto: str
    node_port: int
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    ranges: tuple[str, ...]
    affinity: int
    health_check_port: int
    svc: str
    svl: str
    ext: str
    fw: str

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)


class _CowTable:
    """The compiler's working copy of one table, bucketed like ChainTable. Buckets handed out in
    a snapshot are shared with it and copied before their first change, so a snapshot never
    changes and taking one costs 256 pointer copies, not one per chain."""

    def __init__(self, chains: dict[str, tuple[str, ...]]) -> None:
        self._buckets = [{} for _ in range(ChainTable.BUCKETS)]
        self._shared = [False] * ChainTable.BUCKETS
        self.update(chains)

    def _bucket(self, chain: str) -> dict[str, tuple[str, ...]]:
        i = ChainTable.bucket_of(chain)
        if self._shared[i]:
            self._buckets[i] = dict(self._buckets[i])
            self._shared[i] = False
        return self._buckets[i]

    def __setitem__(self, chain: str, rules: tuple[str, ...]) -> None:
        self._bucket(chain)[chain] = rules

    def __delitem__(self, chain: str) -> None:
        del self._bucket(chain)[chain]

    def update(self, chains: dict[str, tuple[str, ...]]) -> None:
        for chain, rules in chains.items():
            self._bucket(chain)[chain] = rules

    def snapshot(self) -> ChainTable:
        self._shared = [True] * ChainTable.BUCKETS
        return ChainTable(tuple(self._buckets))


def _valid_list(values: Sequence[str], token, what: str, spn: ServicePortName) -> tuple[str, ...]:
    out = []
    for value in values:
        try:
            out.append(token(value))
        except UnsafeRuleText as e:
            log.warning("service %s: ignoring %s: %s", spn, what, e)
    return tuple(out)


def _service_tokens(spn: ServicePortName, info: ServicePortInfo) -> _Service:
    """Raises UnsafeRuleText when the service-port cannot be programmed at all."""
    kname = spn.kube_string()
    proto = names.protocol_token(info.protocol)
    return _Service(
        kname=kname, ip=names.ipv4_token(info.cluster_ip), port=names.port_token(info.port),
        proto=proto, node_port=names.port_token(info.node_port, allow_zero=True),
        external_ips=_valid_list(info.external_ips, names.ipv4_token, "external IP", spn),
        lb_ips=_valid_list(info.load_balancer_ips, names.ipv4_token, "LB IP", spn),
        ranges=_valid_list(info.load_balancer_source_ranges, names.cidr_token, "source range",
                           spn),
        affinity=names.seconds_token(info.affinity_timeout),
        health_check_port=names.port_token(info.health_check_node_port, allow_zero=True),
        svc=names.service_chain(names.SVC, kname, proto),
        svl=names.service_chain(names.SVL, kname, proto),
        ext=names.service_chain(names.EXT, kname, proto),
        fw=names.service_chain(names.FW, kname, proto))


def _valid_endpoints(spn: ServicePortName, endpoints: Sequence[EndpointInfo]) -> list[EndpointInfo]:
    out = []
    for ep in endpoints:
        try:
            names.ipv4_token(ep.ip)
            names.port_token(ep.port)
        except UnsafeRuleText as e:
            log.warning("service %s: ignoring endpoint: %s", spn, e)
            continue
        out.append(ep)
    return out


class RuleCompiler:
    """Compiles ProxyState snapshots for one node into Rulesets, reusing unchanged work.

    A compiler is bound to its NodeContext: when the node changes (zone, IPs), make a new one.
    If `compile` raises, the next call compiles fully whatever `full` says.
    """

    def __init__(self, node: NodeContext, *, masquerade_mark: int = 0x4000,
                 large_cluster_threshold: int = 1000) -> None:
        self.node = node
        self.large_cluster_threshold = large_cluster_threshold
        try:
            self._mark = names.mark_token(masquerade_mark)
            self._cluster_cidr = names.cidr_token(node.cluster_cidr) if node.cluster_cidr else ""
            self._node_ips = tuple(names.ipv4_token(ip) for ip in node.node_ips)
            self._node_port_cidrs = tuple(names.cidr_token(c) for c in node.node_port_addresses)
        except UnsafeRuleText as e:
            raise ConfigError(f"node {node.name!r}: invalid proxy node context: {e}") from None
        self._cache: dict[ServicePortName, _ServiceOutput] = {}
        self._endpoint_counts: dict[ServicePortName, int] = {}
        self._total_endpoints = 0
        self._large: bool | None = None  # None: nothing compiled yet (or a compile failed)
        self._trees: list[DispatchTree] = []
        self._tables: dict[str, _CowTable] = {}

    # -- public ---------------------------------------------------------------------------------

    def compile(self, state: ProxyState, *, full: bool) -> Ruleset:
        try:
            return self._compile(state, full=full or self._large is None)
        except BaseException:
            self._large = None
            raise

    @property
    def large_cluster_mode(self) -> bool:
        return bool(self._large)

    # -- compile steps --------------------------------------------------------------------------

    def _compile(self, state: ProxyState, *, full: bool) -> Ruleset:
        services, endpoints = state.services, state.endpoints
        if not full:
            delta = sum((len(endpoints.get(spn, ())) if spn in services else 0)
                        - self._endpoint_counts.get(spn, 0) for spn in state.changed)
            large = self._total_endpoints + delta > self.large_cluster_threshold
            if large != self._large:
                log.info("large-cluster mode %s: compiling every service",
                         "on" if large else "off")
                full = True
        if full:
            self._reset()
            self._endpoint_counts = {spn: len(endpoints.get(spn, ())) for spn in services}
            self._total_endpoints = sum(self._endpoint_counts.values())
            targets = services.keys()
        else:
            targets = state.changed
            for spn in targets:
                self._total_endpoints -= self._endpoint_counts.pop(spn, 0)
                if spn in services:
                    count = len(endpoints.get(spn, ()))
                    self._endpoint_counts[spn] = count
                    self._total_endpoints += count
        self._large = self._total_endpoints > self.large_cluster_threshold

        for spn in targets:
            info = services.get(spn)
            output = None if info is None else self._build(spn, info, endpoints.get(spn, ()))
            self._replace(spn, output)
        for index, tree in enumerate(self._trees):
            table = self._tables[_TREES[index][0]]
            updated, removed = tree.flush()
            for chain in removed:
                del table[chain]
            table.update(updated)
        return Ruleset(MappingProxyType({
            table: chains.snapshot() for table, chains in self._tables.items()}))

    def _reset(self) -> None:
        self._cache.clear()
        m = self._mark
        tables = {
            "nat": {
                names.MARK_MASQ: (f"-j MARK --set-xmark {m}/{m}",),
                names.POSTROUTING: (
                    f"-m mark ! --mark {m}/{m} -j RETURN",
                    # Clear the mark so a packet that re-traverses the stack is not masqueraded
                    # again.
                    f"-j MARK --set-xmark {m}/0x0",
                    '-m comment --comment "netplane service traffic requiring SNAT" '
                    "-j MASQUERADE --random-fully"),
                names.CANARY: (),
            },
            "filter": {
                names.FORWARD: (
                    # INVALID packets would otherwise reach pods un-DNATed and earn a RST
                    # (kubernetes#74839).
                    "-m conntrack --ctstate INVALID -j DROP",
                    f'-m comment --comment "netplane forwarding rules" -m mark --mark {m}/{m} '
                    "-j ACCEPT",
                    '-m comment --comment "netplane forwarding conntrack rule" '
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                names.CANARY: (),
            },
        }
        self._tables = {table: _CowTable(chains) for table, chains in tables.items()}
        tails = {names.SERVICES: self._nodeport_jumps(),
                 names.EXTERNAL_SERVICES: (
                     f"-m addrtype --dst-type LOCAL -j {names.EXTERNAL_NODEPORTS}",)}
        self._trees = [cls(root, prefix, tails.get(root, ()))
                       for _table, root, prefix, cls in _TREES]

    def _nodeport_jumps(self) -> tuple[str, ...]:
        note = names.comment(NODEPORTS_COMMENT)
        if not self._node_port_cidrs:
            # Localhost NodePorts would need route_localnet (and its guard rule): not offered.
            return (f"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL {note} -j {names.NODEPORTS}",)
        cidrs = [ipaddress.IPv4Network(c) for c in self._node_port_cidrs]
        ips = [ip for ip in self._node_ips
               if not ipaddress.IPv4Address(ip).is_loopback
               and any(ipaddress.IPv4Address(ip) in c for c in cidrs)]
        if not ips:
            log.warning("node %s: no node IP in nodePortAddresses %s; NodePorts unreachable",
                        self.node.name, ",".join(self._node_port_cidrs))
        return tuple(f"-d {ip}/32 {note} -j {names.NODEPORTS}" for ip in ips)

    def _replace(self, spn: ServicePortName, output: _ServiceOutput | None) -> None:
        nat = self._tables["nat"]
        old = self._cache.pop(spn, None)
        if old is not None:
            for chain in old.chains:
                if output is None or chain not in output.chains:
                    del nat[chain]
        if output is not None:
            nat.update(output.chains)
            self._cache[spn] = output
        old_entries = old.entries if old is not None else ()
        new_entries = output.entries if output is not None else ()
        if old_entries != new_entries:
            trees = self._trees
            for index, key, rule, proto in old_entries:
                trees[index].remove(key, rule, proto)
            for index, key, rule, proto in new_entries:
                trees[index].add(key, rule, proto)

    # -- one service-port -----------------------------------------------------------------------

    def _build(self, spn: ServicePortName, info: ServicePortInfo,
               endpoints: Sequence[EndpointInfo]) -> _ServiceOutput | None:
        try:
            s = _service_tokens(spn, info)
        except UnsafeRuleText as e:
            log.warning("service %s: not programmed: %s", spn, e)
            return None
        cats = categorize_endpoints(info, _valid_endpoints(spn, endpoints), self.node)
        ext_access = s.externally_accessible
        itp_local = info.internal_policy_local
        etp_local = info.external_policy_local and ext_access
        has_any = cats.has_any_endpoints
        # kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints decide which policy chains
        # exist; jumps below only ever target a chain that exists.
        uses_svc = bool(cats.cluster) and (not itp_local or ext_access)
        uses_svl = bool(cats.local) and (itp_local or etp_local)
        internal_chain, has_internal = (s.svl, has_any and uses_svl) if itp_local else \
            (s.svc, has_any and uses_svc)
        external_chain, has_external = (s.svl, has_any and uses_svl) if etp_local else \
            (s.svc, has_any and uses_svc)
        uses_ext = has_any and ext_access
        uses_fw = uses_ext and bool(s.lb_ips) and bool(s.ranges)
        lb_target = s.fw if uses_fw else s.ext
        # What the filter table does with traffic nothing will DNAT: REJECT when the service
        # has no usable endpoint at all, DROP when only this node's (Local policy) are missing.
        if not has_any:
            verdict, why = "REJECT", f"{s.kname} has no endpoints"
        else:
            verdict, why = "DROP", f"{s.kname} has no local endpoints"
        refuse = f"{names.comment(why)} -j {verdict}"

        pm = f"-p {s.proto} -m {s.proto} --dport {s.port}"
        entries: list[Entry] = []

        def add(tree: int, key: int, rule: str, proto: str = s.proto) -> None:
            entries.append((tree, key, rule, proto))

        # Cluster IP.
        if has_internal:
            add(NAT_IP, ip_key(s.ip), f"-d {s.ip}/32 {pm} "
                f"{names.comment(s.kname + ' cluster IP')} -j {internal_chain}")
        else:
            add(FILTER_IP, ip_key(s.ip), f"-d {s.ip}/32 {pm} {refuse}")
        # External IPs.
        for ip in s.external_ips:
            if has_any:
                add(NAT_IP, ip_key(ip), f"-d {ip}/32 {pm} "
                    f"{names.comment(s.kname + ' external IP')} -j {s.ext}")
            if not has_external:
                add(EXTERNAL_IP, ip_key(ip), f"-d {ip}/32 {pm} {refuse}")
        # Load-balancer ingress IPs.
        for ip in s.lb_ips:
            if has_any:
                add(NAT_IP, ip_key(ip), f"-d {ip}/32 {pm} "
                    f"{names.comment(s.kname + ' loadbalancer IP')} -j {lb_target}")
            if uses_fw:
                note = names.comment(f"{s.kname} traffic not accepted by {s.fw}")
                add(FIREWALL_IP, ip_key(ip), f"-d {ip}/32 {pm} {note} -j DROP")
            if not has_external:
                add(EXTERNAL_IP, ip_key(ip), f"-d {ip}/32 {pm} {refuse}")
        # NodePort (not subject to loadBalancerSourceRanges, as in kube-proxy).
        if s.node_port:
            npm = f"-p {s.proto} -m {s.proto} --dport {s.node_port}"
            if has_any:
                add(NAT_PORT, s.node_port, f"{npm} {names.comment(s.kname)} -j {s.ext}")
            if not has_external:
                add(EXTERNAL_PORT, s.node_port, f"{npm} {refuse}")
        if s.health_check_port:
            add(HEALTHCHECK_PORT, s.health_check_port,
                f"-p tcp -m tcp --dport {s.health_check_port} "
                f"{names.comment(s.kname + ' health check node port')} -j ACCEPT", "tcp")

        chains: dict[str, tuple[str, ...]] = {}
        masq_rule = self._cluster_masquerade(s, pm) if has_internal else None
        sep_of = {(ep.ip, ep.port): names.endpoint_chain(s.kname, s.proto, f"{ep.ip}:{ep.port}")
                  for ep in cats.all_reachable if self._needs_endpoint_chain(s, ep, etp_local)}
        if uses_svc:
            head = (masq_rule,) if masq_rule and internal_chain == s.svc else ()
            chains[s.svc] = head + self._endpoint_rules(s, cats.cluster, sep_of)
        if uses_svl:
            head = (masq_rule,) if masq_rule and internal_chain == s.svl else ()
            chains[s.svl] = head + self._endpoint_rules(s, cats.local, sep_of)
        if uses_ext:
            chains[s.ext] = self._external_rules(s, etp_local, uses_svc, has_external,
                                                 external_chain)
        if uses_fw:
            chains[s.fw] = self._firewall_rules(s)
        for ep in cats.all_reachable:
            sep = sep_of.get((ep.ip, ep.port))
            if sep is not None:
                chains[sep] = self._endpoint_chain_rules(s, ep, sep)
        return _ServiceOutput(chains, tuple(entries))

    def _needs_endpoint_chain(self, s: _Service, ep: EndpointInfo, etp_local: bool) -> bool:
        """Whether the endpoint gets kube-proxy's NP-SEP chain (hairpin mark, then DNAT) or
        only a DNAT rule inline in the service chain.

        The chain's first rule masquerades a packet whose source is the endpoint it is sent to.
        A packet from an endpoint reaches this node's service chains only when the endpoint is
        on this node (or its node is unknown), or when a pod elsewhere reaches an external
        address of an externalTrafficPolicy Local service, which sends pods to any endpoint.
        (Other nodes' pods reach a cluster IP through their own node's rules, and their
        external traffic under Cluster policy is masqueraded by the EXT chain anyway.) Every
        other endpoint's chain would hold a hairpin rule that cannot match, and 100,000 such
        chains in a large cluster make every nat commit slower: the kernel validates the whole
        jump graph reachable from each nat hook on each commit. ClientIP affinity keeps the
        chains, because its `recent` list is per endpoint."""
        return s.affinity > 0 or etp_local or ep.node_name in ("", self.node.name)

    def _cluster_masquerade(self, s: _Service, pm: str) -> str | None:
        note = names.comment(s.kname + " cluster IP")
        if self.node.masquerade_all:
            return f"-d {s.ip}/32 {pm} {note} -j {names.MARK_MASQ}"
        if self._cluster_cidr:
            # Off-cluster traffic to a VIP (a static route to any node) may bounce to another
            # node, so it must be masqueraded; pod traffic keeps its source.
            return f"! -s {self._cluster_cidr} -d {s.ip}/32 {pm} {note} -j {names.MARK_MASQ}"
        return None

    def _comment(self, text: str) -> str:
        """A comment plus a space, or nothing in large-cluster mode (kube-proxy's
        appendServiceCommentLocked: dropping them shrinks big restores by ~40%)."""
        return "" if self._large else names.comment(text) + " "

    def _endpoint_rules(self, s: _Service, endpoints: Sequence[EndpointInfo],
                        sep_of: dict[tuple[str, int], str]) -> tuple[str, ...]:
        rules = []
        if s.affinity:
            for ep in endpoints:
                sep = sep_of[(ep.ip, ep.port)]
                rules.append(f"{self._comment(f'{s.kname} -> {ep.ip}:{ep.port}')}"
                             f"-m recent --rcheck --seconds {s.affinity} --reap --name {sep} "
                             f"{_AFFINITY_SOURCE} -j {sep}")
        n = len(endpoints)
        for i, ep in enumerate(endpoints):
            note = self._comment(f"{s.kname} -> {ep.ip}:{ep.port}")
            chance = (f"-m statistic --mode random --probability {names.probability(n - i)} "
                      if i < n - 1 else "")
            sep = sep_of.get((ep.ip, ep.port))
            if sep is not None:
                rules.append(f"{note}{chance}-j {sep}")
            else:
                rules.append(f"-p {s.proto} {note}{chance}-m {s.proto} "
                             f"-j DNAT --to-destination {ep.ip}:{ep.port}")
        return tuple(rules)

    def _endpoint_chain_rules(self, s: _Service, ep: EndpointInfo, sep: str) -> tuple[str, ...]:
        note = self._comment(s.kname)
        remember = f"-m recent --set --name {sep} {_AFFINITY_SOURCE} " if s.affinity else ""
        return (
            # Hairpin: a pod reaching itself through its service must see the node as source.
            f"-s {ep.ip}/32 {note}-j {names.MARK_MASQ}",
            f"-p {s.proto} {note}{remember}-m {s.proto} -j DNAT --to-destination "
            f"{ep.ip}:{ep.port}",
        )

    def _external_rules(self, s: _Service, etp_local: bool, uses_svc: bool, has_external: bool,
                        external_chain: str) -> tuple[str, ...]:
        rules = []
        if not etp_local:
            # Cluster policy may pick another node's endpoint: masquerade so replies return.
            note = names.comment(f"masquerade traffic for {s.kname} external destinations")
            rules.append(f"{note} -j {names.MARK_MASQ}")
        else:
            if self._cluster_cidr and uses_svc:
                # Pods going to an external IP of the service behave as if they went out to the
                # LB and came back: any endpoint, source kept.
                rules.append(f"-s {self._cluster_cidr} "
                             f"{names.comment(f'pod traffic for {s.kname} external destinations')}"
                             f" -j {s.svc}")
            # The node itself picks the (local) external IP as source: masquerade, any endpoint.
            rules.append("-m addrtype --src-type LOCAL " + names.comment(
                f"masquerade LOCAL traffic for {s.kname} external destinations")
                + f" -j {names.MARK_MASQ}")
            if uses_svc:
                rules.append("-m addrtype --src-type LOCAL " + names.comment(
                    f"route LOCAL traffic for {s.kname} external destinations") + f" -j {s.svc}")
        if has_external:
            rules.append(f"-j {external_chain}")
        return tuple(rules)

    def _firewall_rules(self, s: _Service) -> tuple[str, ...]:
        note = names.comment(f"{s.kname} loadbalancer IP")
        rules = [f"-s {cidr} {note} -j {s.ext}" for cidr in s.ranges]
        nets = [ipaddress.IPv4Network(c) for c in s.ranges]
        if any(ipaddress.IPv4Address(ip) in net for ip in self._node_ips for net in nets):
            # A VIP-style LB address is often local to the node, so the node's own requests
            # arrive with the LB IP as source: let them through too.
            rules.extend(f"-s {ip}/32 {note} -j {s.ext}" for ip in s.lb_ips)
        # Whatever gets here was not DNATed, so NP-PROXY-FIREWALL (filter) drops it.
        rules.append(names.comment(
            f"other traffic to {s.kname} will be dropped by {names.PROXY_FIREWALL}"))
        return tuple(rules)
