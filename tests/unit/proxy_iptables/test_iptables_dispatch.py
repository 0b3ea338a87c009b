"""The dispatch tries: bounded chains, first-match equivalence with a flat list, incremental
flushes that equal a fresh build and touch only the path that changed."""

from __future__ import annotations

import ipaddress
import random

from netplane.proxy.iptables.dispatch import LEAF, IpDispatchTree, PortDispatchTree, ip_key

TAIL = "-m addrtype --dst-type LOCAL -j NP-NODEPORTS"


def ip_rule(ip: str, port: int, target: str = "NP-SVC-X", proto: str = "tcp") -> str:
    return f"-d {ip}/32 -p {proto} -m {proto} --dport {port} -j {target}"


def walk_ip(chains: dict[str, tuple[str, ...]], root: str, ip: str, port: int) -> tuple[str, int]:
    """First leaf rule matching (ip, tcp, port), following -d prefix jumps; also the number of
    rules evaluated on the way."""
    addr = ipaddress.IPv4Address(ip)
    evaluated = 0

    def run(chain: str) -> str | None:
        nonlocal evaluated
        for rule in chains[chain]:
            evaluated += 1
            tokens = rule.split()
            if "-d" in tokens:
                net = ipaddress.IPv4Network(tokens[tokens.index("-d") + 1])
                if addr not in net:
                    continue
            if "--dport" in tokens:
                lo, _, hi = tokens[tokens.index("--dport") + 1].partition(":")
                if not int(lo) <= port <= int(hi or lo):
                    continue
            target = tokens[tokens.index("-j") + 1]
            if target == "NP-NODEPORTS":  # the tail: not a VIP match
                continue
            if target.startswith("NP-D-"):
                found = run(target)
                if found:
                    return found
                continue
            return rule
        return None

    return run(root) or "", evaluated


def linear_first(rules: list[str], ip: str, port: int) -> str:
    for rule in rules:
        if rule.startswith(f"-d {ip}/32 ") and f"--dport {port} " in rule:
            return rule
    return ""


def test_small_tree_is_a_single_sorted_root_chain_with_the_tail_last():
    tree = IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,))
    for ip in ("10.96.0.10", "10.96.0.1", "172.30.0.41"):
        tree.add(ip_key(ip), ip_rule(ip, 80))
    chains = tree.chains()
    assert chains == {"NP-SERVICES": (ip_rule("10.96.0.1", 80), ip_rule("10.96.0.10", 80),
                                      ip_rule("172.30.0.41", 80), TAIL)}


def test_empty_tree_still_has_its_root_with_the_tail():
    assert IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,)).chains() == {"NP-SERVICES": (TAIL,)}


def test_big_tree_is_bounded_and_matches_like_a_flat_list():
    rng = random.Random(5)
    tree = IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,))
    flat = []
    ips = {f"10.96.{rng.randrange(64)}.{rng.randrange(256)}" for _ in range(3000)}
    ips |= {f"192.168.{i}.1" for i in range(40)}  # a second, separate subtree
    for ip in sorted(ips):
        for port in (80, 443) if ip.endswith(".1") else (80,):
            rule = ip_rule(ip, port, target=f"NP-SVC-{ip.replace('.', '')}{port}")
            tree.add(ip_key(ip), rule)
            flat.append(rule)
    chains = tree.chains()
    for name, rules in chains.items():
        assert len(name) <= 28
        own = [r for r in rules if r != TAIL]
        assert len(own) <= LEAF, (name, len(own))
    assert chains["NP-SERVICES"][-1] == TAIL
    # Path compression: the root jumps straight to the /12 (or deeper) of 10.96.x.x.
    assert not any(r.startswith("-d 0.0.0.0/4") for r in chains["NP-SERVICES"])
    worst = 0
    for ip in rng.sample(sorted(ips), 300) + ["10.96.200.1", "8.8.8.8"]:
        for port in (80, 443, 53):
            found, evaluated = walk_ip(chains, "NP-SERVICES", ip, port)
            assert found == linear_first(flat, ip, port)
            worst = max(worst, evaluated)
    assert worst <= 8 * (LEAF + 1)  # vs ~3,000 rules for the same lookups in a flat chain


def test_one_ip_with_many_ports_stays_one_leaf():
    tree = IpDispatchTree("NP-SERVICES", "NP-D-")
    for port in range(1, 41):
        tree.add(ip_key("10.0.0.1"), ip_rule("10.0.0.1", port))
    tree.add(ip_key("10.0.0.2"), ip_rule("10.0.0.2", 80))
    chains = tree.chains()
    leaf = [rules for rules in chains.values() if len(rules) == 40]
    assert len(leaf) == 1 and all(r.startswith("-d 10.0.0.1/32") for r in leaf[0])


def _apply(view: dict, flushed: tuple[dict, set]) -> None:
    updated, removed = flushed
    assert not set(updated) & removed
    for name in removed:
        del view[name]
    view.update(updated)


def test_incremental_flushes_equal_a_fresh_build():
    rng = random.Random(11)
    tree = IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,))
    live: list[tuple[int, str]] = []
    view: dict = {}
    for step in range(60):
        for _ in range(rng.randrange(1, 120)):
            if live and rng.random() < 0.45:
                key, rule = live.pop(rng.randrange(len(live)))
                tree.remove(key, rule)
            else:
                ip = f"10.{rng.choice((96, 97))}.{rng.randrange(8)}.{rng.randrange(256)}"
                rule = ip_rule(ip, rng.choice((53, 80, 443)))
                live.append((ip_key(ip), rule))
                tree.add(ip_key(ip), rule)
        _apply(view, tree.flush())
        fresh = IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,))
        for key, rule in live:
            fresh.add(key, rule)
        assert view == fresh.chains(), f"diverged at step {step}"
    assert tree.flush() == ({}, set())  # nothing pending: nothing rendered


def test_one_change_rewrites_only_its_leaf_unless_the_shape_changes():
    tree = IpDispatchTree("NP-SERVICES", "NP-D-", (TAIL,))
    for i in range(4000):
        ip = str(ipaddress.IPv4Address(ip_key("10.96.0.0") + i * 7))
        tree.add(ip_key(ip), ip_rule(ip, 80))
    total = len(tree.chains())
    # Swap one entry for another in the same leaf: counts on the path are unchanged.
    tree.remove(ip_key("10.96.0.7"), ip_rule("10.96.0.7", 80))
    tree.add(ip_key("10.96.0.8"), ip_rule("10.96.0.8", 80))
    updated, removed = tree.flush()
    assert len(updated) == 1 and not removed and total > 200
    # A brand-new /8 adds one rule to the root and one leaf, nothing else.
    tree.add(ip_key("172.16.0.1"), ip_rule("172.16.0.1", 80))
    updated, removed = tree.flush()
    assert set(updated) == {"NP-SERVICES", "NP-D-a0000000-4"}, updated
    assert not removed


def test_port_tree_dispatches_per_protocol_ranges():
    tree = PortDispatchTree("NP-NODEPORTS", "NP-P-")
    for port in range(30000, 30100):
        proto = "udp" if port % 10 == 0 else "tcp"
        tree.add(port, f"-p {proto} -m {proto} --dport {port} -j NP-EXT-{port}", proto)
    chains = tree.chains()
    root = chains["NP-NODEPORTS"]
    assert all(len(rules) <= LEAF for rules in chains.values())
    # Children carry a --dport range per protocol present below them.
    assert any(r.startswith("-p udp -m udp --dport ") and ":" in r for r in root)
    assert any(r.startswith("-p tcp -m tcp --dport ") and ":" in r for r in root)
    for rule in root:
        lo, hi = map(int, rule.split("--dport ")[1].split()[0].split(":"))
        assert rule.split("-j ")[1] == f"NP-P-{lo}-{hi}" and hi - lo + 1 in (16, 256, 4096)
    tree.remove(30010, "-p udp -m udp --dport 30010 -j NP-EXT-30010", "udp")
    fresh = PortDispatchTree("NP-NODEPORTS", "NP-P-")
    for port in range(30000, 30100):
        proto = "udp" if port % 10 == 0 else "tcp"
        if port != 30010:
            fresh.add(port, f"-p {proto} -m {proto} --dport {port} -j NP-EXT-{port}", proto)
    view = dict(chains)
    _apply(view, tree.flush())
    assert view == fresh.chains()
