"""Incremental compiles equal full compiles, byte for byte, and never alter earlier snapshots."""

from __future__ import annotations

import random

from netplane.proxy.iptables.rules import RuleCompiler
from netplane.proxy.iptables.ruleset import diff, missing_jump_targets, render_restore
from netplane.proxy.model import (
    EndpointInfo,
    NodeContext,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
)

NODE = NodeContext("node1", zone="z1", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")


def random_service(rng: random.Random, name: ServicePortName) -> ServicePortInfo:
    ext = rng.random() < 0.3
    return ServicePortInfo(
        name, f"10.96.{rng.randrange(4)}.{rng.randrange(1, 255)}", rng.choice((53, 80, 443)),
        name.protocol, 80,
        node_port=rng.randrange(30000, 30100) if rng.random() < 0.4 else 0,
        external_ips=(f"192.168.9.{rng.randrange(1, 30)}",) if ext else (),
        load_balancer_ips=(f"1.2.3.{rng.randrange(1, 9)}",) if rng.random() < 0.2 else (),
        load_balancer_source_ranges=("1.2.0.0/16",) if rng.random() < 0.3 else (),
        affinity_timeout=rng.choice((0, 0, 60)),
        external_policy_local=rng.random() < 0.3,
        internal_policy_local=rng.random() < 0.2,
        health_check_node_port=rng.randrange(31000, 31010) if rng.random() < 0.2 else 0,
        topology_aware=rng.random() < 0.2)


def random_endpoints(rng: random.Random) -> tuple[EndpointInfo, ...]:
    eps = {}
    for _ in range(rng.randrange(0, 6)):
        ip = f"10.244.{rng.randrange(3)}.{rng.randrange(1, 40)}"
        eps[ip] = EndpointInfo(ip, 8080, ready=rng.random() < 0.8, serving=rng.random() < 0.9,
                               terminating=rng.random() < 0.2,
                               node_name=rng.choice(("node1", "node2", "")),
                               zone=rng.choice(("z1", "z2")),
                               zone_hints=rng.choice((None, ("z1",), ("z2",))))
    return tuple(sorted(eps.values(), key=lambda e: (e.ip, e.port)))


def snapshot_text(ruleset) -> str:
    return render_restore(diff(None, ruleset))


def test_randomised_incremental_compiles_equal_full_compiles():
    rng = random.Random(2024)
    names = [ServicePortName(f"ns{i % 4}", f"svc{i}", rng.choice(("", "http")),
                             rng.choice(("TCP", "UDP", "SCTP"))) for i in range(60)]
    services: dict = {}
    endpoints: dict = {}
    incremental = RuleCompiler(NODE, large_cluster_threshold=90)
    previous = None
    previous_text = ""
    for step in range(80):
        changed = set()
        for _ in range(rng.randrange(1, 8)):
            name = rng.choice(names)
            roll = rng.random()
            if roll < 0.35:
                services[name] = random_service(rng, name)
            elif roll < 0.45:
                services.pop(name, None)
            elif roll < 0.9:
                endpoints[name] = random_endpoints(rng)
            else:
                endpoints.pop(name, None)
            changed.add(name)
        st = ProxyState(dict(services), dict(endpoints), frozenset(changed))
        got = incremental.compile(st, full=False)
        want = RuleCompiler(NODE, large_cluster_threshold=90).compile(st, full=True)
        assert snapshot_text(got) == snapshot_text(want), f"step {step}"
        assert not missing_jump_targets(got)
        if previous is not None:
            # The plan between two incremental snapshots is the plan between the full ones,
            # and compiling did not modify the snapshot handed out before.
            assert snapshot_text(previous) == previous_text
            step_plan = diff(previous, got)
            assert {t: dict(c) for t, c in step_plan.write.items()} == {
                t: dict(c) for t, c in diff(previous, want).write.items()}
        previous, previous_text = got, snapshot_text(got)


def test_large_cluster_mode_flips_in_both_directions():
    names = [ServicePortName("ns", f"s{i}", "", "TCP") for i in range(5)]
    services = {n: ServicePortInfo(n, f"10.96.0.{i + 1}", 80, "TCP", 80)
                for i, n in enumerate(names)}

    def eps(count: int) -> tuple[EndpointInfo, ...]:
        return tuple(EndpointInfo(f"10.244.0.{j + 1}", 80) for j in range(count))

    endpoints = {n: eps(2) for n in names}
    compiler = RuleCompiler(NODE, large_cluster_threshold=10)
    compiler.compile(ProxyState(services, endpoints, frozenset(names)), full=True)
    assert not compiler.large_cluster_mode
    for count, large in ((3, True), (1, False)):
        endpoints = dict(endpoints)
        endpoints[names[0]] = eps(count)
        st = ProxyState(services, endpoints, frozenset({names[0]}))
        got = compiler.compile(st, full=False)
        assert compiler.large_cluster_mode is large
        full = RuleCompiler(NODE, large_cluster_threshold=10).compile(st, full=True)
        assert snapshot_text(got) == snapshot_text(full)


def test_unchanged_state_compiles_to_an_empty_plan():
    name = ServicePortName("ns", "web", "", "TCP")
    services = {name: ServicePortInfo(name, "10.96.0.1", 80, "TCP", 80, node_port=30001)}
    endpoints = {name: (EndpointInfo("10.244.0.1", 80),)}
    compiler = RuleCompiler(NODE)
    first = compiler.compile(ProxyState(services, endpoints, frozenset({name})), full=True)
    again = compiler.compile(ProxyState(services, endpoints, frozenset()), full=False)
    assert diff(first, again).empty()
    gone = compiler.compile(ProxyState({}, {}, frozenset({name})), full=False)
    plan = diff(again, gone)
    assert {c[:7] for c in plan.delete["nat"]} == {"NP-SVC-", "NP-SEP-", "NP-EXT-"}
    assert gone == RuleCompiler(NODE).compile(ProxyState({}, {}, frozenset()), full=True)
