"""IptablesProxier against FakeIptables, driven through BaseProvider's events and runner with a
FakeClock: full then partial syncs, the no-op sync, canary loss, restore failures, leftovers
from an earlier process, metrics and the conntrack hook. Assertions are on the fake kernel's
state (and on whether iptables-restore ran at all)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.proxy.conntrack import ConntrackCleaner
from netplane.proxy.iptables.port import FakeIptables
from netplane.proxy.iptables.proxier import IptablesProxier
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, normalise_ruleset, parse_save
from netplane.proxy.model import NodeContext
from netplane.proxy.runner import FakeClock

NODE = NodeContext("node-1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16")


def service(name: str, ip: str, port: int = 80, proto: str = "TCP", **spec: Any) -> Service:
    return Service.from_dict({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": port, "protocol": proto,
                                            "targetPort": 8080}], **spec}})


def endpoint_slice(name: str, svc: str, *ips: str, proto: str = "TCP",
                   node: str = "node-2") -> EndpointSlice:
    return EndpointSlice.from_dict({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "nodeName": node} for ip in ips],
        "ports": [{"name": "p", "port": 8080, "protocol": proto}]})


class Harness:
    def __init__(self, kernel: FakeIptables | None = None, **kwargs: Any) -> None:
        self.clock = FakeClock(start=0.0)
        self.kernel = kernel or FakeIptables()
        self.proxier = IptablesProxier(NODE, self.kernel, clock=self.clock, min_sync_interval=1.0,
                                       sync_period=30.0, retry_interval=5.0,
                                       full_sync_interval=3600.0, **kwargs)

    def start(self, *objects: Service | EndpointSlice) -> None:
        for obj in objects:
            self.add(obj)
        self.proxier.on_services_synced()
        self.proxier.on_endpoint_slices_synced()
        self.settle()

    def add(self, obj: Service | EndpointSlice) -> None:
        if isinstance(obj, Service):
            self.proxier.on_service_add(obj)
        else:
            self.proxier.on_endpoint_slice_add(obj)

    def settle(self) -> None:
        self.clock.advance(1.0)
        self.proxier.runner.tick()

    def kernel_rules(self):
        return normalise_ruleset(parse_save(self.kernel.save("nat") + self.kernel.save("filter")))


def test_first_sync_is_full_programs_everything_and_matches_the_kernel() -> None:
    h = Harness()
    h.start(service("web", "10.96.0.1"), endpoint_slice("web-a", "web", "10.244.2.5", "10.244.2.6"))
    assert h.proxier.last_plan is not None and h.proxier.last_plan.full
    assert h.kernel_rules() == normalise_ruleset(h.proxier.applied)
    for table, chain, rule in HOOK_JUMPS:
        assert rule in h.kernel.rules(table, chain)
    nat = h.kernel.save("nat")
    assert "DNAT --to-destination 10.244.2.5:8080" in nat
    assert "DNAT --to-destination 10.244.2.6:8080" in nat


def test_a_sync_without_changes_runs_no_restore() -> None:
    h = Harness()
    h.start(service("web", "10.96.0.1"), endpoint_slice("web-a", "web", "10.244.2.5"))
    restores, runs = len(h.kernel.restores), h.proxier.restores
    h.proxier.sync()
    h.settle()
    h.clock.advance(31.0)  # periodic (partial) resync
    h.proxier.runner.tick()
    assert h.proxier.runner.runs >= 3
    assert h.proxier.last_plan is not None and h.proxier.last_plan.empty()
    assert len(h.kernel.restores) == restores and h.proxier.restores == runs


@pytest.mark.parametrize("node", [NODE.name, "node-2"], ids=["local-endpoints", "remote-endpoints"])
def test_an_endpoint_change_rewrites_only_the_chains_it_touches(node: str) -> None:
    h = Harness()
    web = endpoint_slice("web-a", "web", "10.244.2.5", "10.244.2.6", node=node)
    h.start(service("web", "10.96.0.1"), service("db", "10.96.0.2", 5432), web,
            endpoint_slice("db-a", "db", "10.244.3.5"))
    before = h.kernel_rules()
    h.proxier.on_endpoint_slice_update(web, endpoint_slice("web-a", "web", "10.244.2.5", node=node))
    h.settle()
    plan = h.proxier.last_plan
    assert plan is not None and not plan.full
    written = set(plan.write.get("nat", {})) | set(plan.write.get("filter", {}))
    deleted = set(plan.delete.get("nat", ()))
    if node == NODE.name:  # a local endpoint has its own NP-SEP chain (the hairpin rule)
        assert len(deleted) == 1 and next(iter(deleted)).startswith("NP-SEP-")
    else:  # another node's endpoint is a DNAT rule inside the service chain
        assert not deleted
    assert all(c.startswith("NP-SVC-") for c in written)  # the web SVC chain only
    after = h.kernel_rules()
    assert after == normalise_ruleset(h.proxier.applied)
    changed = {c for c in set(before.chains("nat")) | set(after.chains("nat"))
               if before.chains("nat").get(c) != after.chains("nat").get(c)}
    assert changed == written | deleted
    assert "10.244.2.6" not in h.kernel.save("nat")
    assert "10.244.3.5" in h.kernel.save("nat")


def test_canary_gone_forces_a_full_resync_that_restores_everything() -> None:
    h = Harness()
    h.start(service("web", "10.96.0.1"), endpoint_slice("web-a", "web", "10.244.2.5"))
    good = h.kernel_rules()
    h.kernel.flush_everything()
    h.proxier.sync()
    h.settle()
    assert h.proxier.last_plan is not None and h.proxier.last_plan.full
    assert h.kernel_rules() == good
    for table, chain, rule in HOOK_JUMPS:
        assert rule in h.kernel.rules(table, chain)


def test_a_failed_partial_restore_is_counted_and_the_retry_is_full() -> None:
    h = Harness()
    web = endpoint_slice("web-a", "web", "10.244.2.5")
    h.start(service("web", "10.96.0.1"), web)
    h.kernel.fail_next_restore("iptables-nft-restore: line 3 failed")
    h.proxier.on_endpoint_slice_update(web, endpoint_slice("web-a", "web", "10.244.2.7"))
    h.settle()
    assert h.proxier.metrics.partial_restore_failures.value() == 1
    assert "10.244.2.7" not in h.kernel.save("nat")
    h.clock.advance(5.0)  # retry interval
    h.proxier.runner.tick()
    assert h.proxier.last_plan is not None and h.proxier.last_plan.full
    assert "10.244.2.7" in h.kernel.save("nat") and "10.244.2.5" not in h.kernel.save("nat")
    assert h.kernel_rules() == normalise_ruleset(h.proxier.applied)


def test_leftover_chains_of_an_earlier_process_are_deleted_on_the_first_sync() -> None:
    kernel = FakeIptables()
    old = Harness(kernel)
    old.start(service("old", "10.96.0.9"), endpoint_slice("old-a", "old", "10.244.9.9"))
    kernel.restore("*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j RETURN\n-A PREROUTING -j FOREIGN\nCOMMIT\n")
    new = Harness(kernel)  # a restarted proxy: knows nothing of what is applied
    new.start(service("web", "10.96.0.1"), endpoint_slice("web-a", "web", "10.244.2.5"))
    assert "10.244.9.9" not in kernel.save("nat")
    assert new.kernel_rules() == normalise_ruleset(new.proxier.applied)
    assert kernel.rules("nat", "FOREIGN") == ["-j RETURN"]
    assert "-j FOREIGN" in kernel.rules("nat", "PREROUTING")
    assert [r for r in kernel.rules("nat", "PREROUTING") if "NP-SERVICES" in r] == [HOOK_JUMPS[0][2]]


def test_rule_count_metrics() -> None:
    h = Harness()
    h.start(service("web", "10.96.0.1"), endpoint_slice("web-a", "web", "10.244.2.5"))
    nat_total = sum(len(r) for r in h.proxier.applied.chains("nat").values())
    assert h.proxier.metrics.iptables_rules_total._values[("nat",)] == nat_total
    assert h.proxier.metrics.iptables_rules_last._values[("nat",)] == nat_total
    h.proxier.sync()
    h.settle()
    assert h.proxier.metrics.iptables_rules_last._values[("nat",)] == 0
    assert h.proxier.metrics.sync_full_duration.count() == 1
    assert h.proxier.metrics.sync_partial_duration.count() == 1


def test_node_change_rebuilds_the_compiler_and_resyncs_fully() -> None:
    h = Harness()
    h.start(service("web", "10.96.0.1", type="NodePort", ports=[
        {"name": "p", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]),
        endpoint_slice("web-a", "web", "10.244.2.5"))
    h.proxier.on_node_update(Node.from_dict({
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]}}))
    h.settle()
    assert h.proxier.last_plan is not None and h.proxier.last_plan.full
    assert h.proxier._compiler.node.node_ips == ("172.18.0.3",)
    assert h.kernel_rules() == normalise_ruleset(h.proxier.applied)


@pytest.mark.parametrize("change", ["remove endpoint", "tcp only"])
def test_conntrack_cleanup_runs_for_udp_changes_only(change: str) -> None:
    calls: list[list[str]] = []

    def run(argv, **_):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    h = Harness(conntrack=ConntrackCleaner(run=run))
    dns = endpoint_slice("dns-a", "dns", "10.244.2.5", "10.244.2.6", proto="UDP")
    h.start(service("dns", "10.96.0.10", 53, "UDP"), dns, service("web", "10.96.0.1"),
            endpoint_slice("web-a", "web", "10.244.2.7"))
    assert calls == [["conntrack", "-L", "-p", "udp"]]  # start-up: every UDP service
    calls.clear()
    if change == "remove endpoint":
        h.proxier.on_endpoint_slice_update(dns, endpoint_slice("dns-a", "dns", "10.244.2.5", proto="UDP"))
    else:
        h.proxier.on_endpoint_slice_update(endpoint_slice("web-a", "web", "10.244.2.7"),
                                           endpoint_slice("web-a", "web", "10.244.2.8"))
    h.settle()
    assert calls == ([["conntrack", "-L", "-p", "udp"]] if change == "remove endpoint" else [])
