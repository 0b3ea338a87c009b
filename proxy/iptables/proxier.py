"""IptablesProxier: the iptables backend behind the Provider seam.

One sync: ProxyState → RuleCompiler (pure, incremental) → diff against the Ruleset applied last
(pure) → one iptables-restore --noflush of the changed chains (port.py) → record what was
applied → stale UDP conntrack cleanup. BaseProvider then updates /healthz and the health-check
node ports.

The plan is full (every chain written, and NP- chains in the kernel that nobody wants deleted)
on the first sync, on BaseProvider's full syncs (periodic, after a failure, node change), when
the canary chain NP-PROXY-CANARY has vanished from nat or filter (someone flushed our rules),
and after any failed restore, because what a failed restore left behind is unknown. A sync in
which nothing changed runs no iptables-restore at all; it only checks the canaries.

Hook jumps (PREROUTING → NP-SERVICES, ...) are ensured on full syncs only, as kube-proxy does:
they are outside our chains and only an outside flush removes them, which the canary catches.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

from netplane.metrics import Counter
from netplane.proxy.conntrack import ConntrackCleaner, stale_udp_entries
from netplane.proxy.iptables import names
from netplane.proxy.iptables.port import TABLES, IptablesError, IptablesPort
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, Plan, Ruleset, diff, render_restore
from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.model import NodeContext, ProxyState
from netplane.proxy.provider import BaseProvider, SyncResult

log = logging.getLogger(__name__)


class IptablesProxier(BaseProvider):
    def __init__(self, node: NodeContext, port: IptablesPort, *,
                 conntrack: ConntrackCleaner | None = None, masquerade_mark: int = 0x4000,
                 large_cluster_threshold: int = 1000, **provider_options: Any) -> None:
        super().__init__(node, **provider_options)
        self.port = port
        self.conntrack = conntrack
        self._mark = masquerade_mark
        self._threshold = large_cluster_threshold
        self._compiler = self._new_compiler(node)
        self._applied: Ruleset | None = None  # what the kernel holds, as far as we know
        self.last_plan: Plan | None = None  # the plan of the last sync (tests, debugging)
        self._rule_totals: dict[str, int] = {}
        # Observable proof of "a sync without changes writes nothing", also from outside.
        self._restores = Counter(self.metrics.registry, "netplane_proxy_iptables_restores_total",
                                 "iptables-restore runs (a sync without changes runs none)")

    def _new_compiler(self, node: NodeContext) -> RuleCompiler:
        return RuleCompiler(node, masquerade_mark=self._mark,
                            large_cluster_threshold=self._threshold)

    # -- the backend's part of a sync ---------------------------------------------------------

    def sync_state(self, state: ProxyState, full: bool) -> SyncResult | None:
        previous = self.last_state
        if self._compiler.node != self.node:
            self._compiler = self._new_compiler(self.node)
            full = True  # BaseProvider asked for a full sync too (on_node_update)
        if self._applied is None:
            full = True  # only a failed restore gets here, and BaseProvider retries it as full
        desired = self._compiler.compile(state, full=full)
        plan = diff(self._applied, desired, full=full)
        if full:
            plan = self._with_unknown_chains_deleted(plan, desired)
        self.last_plan = plan
        if not plan.empty():
            text = render_restore(plan)
            try:
                self.port.restore(text)
                if full:
                    self.port.ensure_jumps(HOOK_JUMPS)
            except IptablesError as e:
                self.metrics.restore_failed(partial=not full)
                self._applied = None  # the kernel state is unknown now: next sync is full
                log.error("iptables %s sync failed: %s", "full" if full else "partial", e)
                return SyncResult(False, str(e))
            finally:
                self._restores.inc()
        elif full:
            self.port.ensure_jumps(HOOK_JUMPS)
        applied_before, self._applied = self._applied, desired
        self._record_rule_counts(applied_before, desired, plan)
        log.debug("iptables sync (%s): %d chains written, %d deleted", "full" if full else "partial",
                  sum(len(c) for c in plan.write.values()),
                  sum(len(c) for c in plan.delete.values()))
        self._clean_conntrack(previous, state)
        return None

    def full_sync_reason(self) -> str | None:
        """Asked by BaseProvider before a partial sync: rules we do not know, or rules someone
        removed (the canary chains are gone: a firewall reload, `iptables -F -X`), need a full one."""
        if self._applied is None:
            return "applied rules unknown"
        if not self._canaries_present():
            log.warning("canary chain %s is gone: someone flushed the rules; full resync",
                        names.CANARY)
            return "canary chain gone"
        return None

    def _canaries_present(self) -> bool:
        try:
            return all(self.port.chains_exist([(table, names.CANARY) for table in TABLES]))
        except IptablesError as e:
            log.warning("cannot check the canary chains: %s", e)
            return False

    def _with_unknown_chains_deleted(self, plan: Plan, desired: Ruleset) -> Plan:
        """Add the owned chains the kernel holds but nobody wants (left by an earlier process
        or an earlier ruleset) to a full plan's deletions."""
        delete: dict[str, frozenset[str]] = dict(plan.delete)
        for table in TABLES:
            existing = _owned_chains(self.port.save(table))
            stale = existing - set(desired.chains(table)) - delete.get(table, frozenset())
            if stale:
                delete[table] = delete.get(table, frozenset()) | stale
        return Plan(full=plan.full, write=plan.write, delete=MappingProxyType(delete))

    def _record_rule_counts(self, previous: Ruleset | None, desired: Ruleset, plan: Plan) -> None:
        # Counting every rule costs ~0.1 s at 10,000 services, more than a whole partial sync
        # should: after a partial plan, adjust the last total by the chains it touched.
        for table in TABLES:
            written = plan.write.get(table, {})
            added = sum(len(rules) for rules in written.values())
            last = self._rule_totals.get(table)
            if plan.full or previous is None or last is None:
                total = sum(len(rules) for rules in desired.chains(table).values())
            else:
                before = previous.chains(table)
                touched = set(written) | set(plan.delete.get(table, ()))
                total = last - sum(len(before[c]) for c in touched if c in before) + added
            self._rule_totals[table] = total
            self.metrics.iptables_rules(table, total=total, written=added)

    def _clean_conntrack(self, previous: ProxyState | None, state: ProxyState) -> None:
        if self.conntrack is None:
            return
        selectors = stale_udp_entries(previous, state, self.node)
        if not selectors:
            return
        try:
            self.conntrack.clean(selectors)
        except Exception as e:  # noqa: BLE001 - a failed cleanup must not fail the sync
            log.warning("stale UDP conntrack cleanup: %s", e)

    # -- introspection -------------------------------------------------------------------------

    @property
    def applied(self) -> Ruleset | None:
        return self._applied

    @property
    def restores(self) -> int:
        """iptables-restore runs so far (a sync without changes adds none)."""
        return int(self._restores.value())


def _owned_chains(save_output: str) -> set[str]:
    return {line[1:].split()[0] for line in save_output.splitlines()
            if line.startswith(":") and names.is_owned_chain(line[1:].split()[0])}
