"""FakeIptables applies iptables-restore --noflush text like the real binaries; split_restore and
cleanup_restore are checked by applying their output to it (it refuses jumps to missing chains
and deleting referenced chains, as the kernel does)."""

from __future__ import annotations

import pytest

from netplane.proxy.iptables.port import (
    FakeIptables,
    IptablesError,
    cleanup_restore,
    split_restore,
)
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, make_ruleset, parse_save


def test_declaring_a_chain_creates_then_flushes_it_but_never_a_builtin() -> None:
    ipt = FakeIptables()
    ipt.restore("*nat\n:PREROUTING ACCEPT [0:0]\n:NP-A - [0:0]\n-A NP-A -j RETURN\n"
                "-A PREROUTING -j NP-A\nCOMMIT\n")
    assert ipt.rules("nat", "NP-A") == ["-j RETURN"]
    ipt.restore("*nat\n:PREROUTING ACCEPT [0:0]\n:NP-A - [0:0]\n-A NP-A -j ACCEPT\nCOMMIT\n")
    assert ipt.rules("nat", "NP-A") == ["-j ACCEPT"]  # flushed, then refilled
    assert ipt.rules("nat", "PREROUTING") == ["-j NP-A"]  # noflush: built-ins keep their rules


def test_a_failing_line_names_its_number_and_leaves_the_table_unchanged() -> None:
    ipt = FakeIptables()
    ipt.restore("*nat\n:NP-A - [0:0]\n-A NP-A -j RETURN\nCOMMIT\n")
    text = "*nat\n:NP-A - [0:0]\n-A NP-A -j ACCEPT\n-A NP-A -j NP-MISSING\nCOMMIT\n"
    with pytest.raises(IptablesError) as err:
        ipt.restore(text)
    assert err.value.line_number == 4
    assert err.value.line == "-A NP-A -j NP-MISSING"
    assert "line 4 failed" in str(err.value) and "NP-MISSING" in str(err.value)
    assert ipt.rules("nat", "NP-A") == ["-j RETURN"]


def test_tables_commit_one_after_another() -> None:
    ipt = FakeIptables()
    with pytest.raises(IptablesError):
        ipt.restore("*filter\n:NP-F - [0:0]\nCOMMIT\n*nat\n-A NP-NOPE -j RETURN\nCOMMIT\n")
    assert ipt.chain_exists("filter", "NP-F")  # the first table was committed
    assert not ipt.chain_exists("nat", "NP-NOPE")


def test_delete_needs_an_empty_unreferenced_chain() -> None:
    ipt = FakeIptables()
    ipt.restore("*nat\n:NP-A - [0:0]\n:NP-B - [0:0]\n-A NP-A -j NP-B\nCOMMIT\n")
    with pytest.raises(IptablesError, match="referenced"):
        ipt.restore("*nat\n-X NP-B\nCOMMIT\n")
    with pytest.raises(IptablesError, match="not empty"):
        ipt.restore("*nat\n-X NP-A\nCOMMIT\n")
    ipt.restore("*nat\n:NP-A - [0:0]\n:NP-B - [0:0]\n-X NP-A\n-X NP-B\nCOMMIT\n")
    assert not ipt.chain_exists("nat", "NP-A") and not ipt.chain_exists("nat", "NP-B")


def test_simulated_failures_and_outside_flush() -> None:
    ipt = FakeIptables()
    ipt.fail_next_restore("iptables-restore: line 2 failed")
    text = "*nat\n:NP-A - [0:0]\nCOMMIT\n"
    with pytest.raises(IptablesError) as err:
        ipt.restore(text)
    assert err.value.line == ":NP-A - [0:0]"
    assert not ipt.chain_exists("nat", "NP-A")
    ipt.restore(text)
    assert ipt.chain_exists("nat", "NP-A")
    ipt.flush_everything()
    assert not ipt.chain_exists("nat", "NP-A") and ipt.chain_exists("nat", "PREROUTING")


def test_save_round_trips_through_parse_save() -> None:
    ipt = FakeIptables()
    ipt.restore('*nat\n:NP-A - [0:0]\n:NP-B - [0:0]\n-A NP-A -d 10.0.0.1/32 -p tcp -m tcp '
                '--dport 80 -j NP-B\n-A NP-B -j RETURN\n:FOREIGN - [0:0]\n-A FOREIGN -j RETURN\n'
                'COMMIT\n')
    assert parse_save(ipt.save("nat"), normalise=False) == make_ruleset({"nat": {
        "NP-A": ["-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j NP-B"], "NP-B": ["-j RETURN"]}})


def _hooked() -> FakeIptables:
    ipt = FakeIptables()
    chains = sorted({rule.split("-j ")[-1] for _, _, rule in HOOK_JUMPS})
    text = {"nat": [], "filter": []}
    for table, _, rule in HOOK_JUMPS:
        target = rule.split("-j ")[-1]
        if f":{target} - [0:0]" not in text[table]:
            text[table].append(f":{target} - [0:0]")
    ipt.restore("".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in text.items()))
    assert chains
    return ipt


def test_ensure_jumps_inserts_once_in_the_listed_order() -> None:
    ipt = _hooked()
    ipt.restore("*filter\n-A INPUT -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n")  # someone else's
    ipt.ensure_jumps(HOOK_JUMPS)
    ipt.ensure_jumps(HOOK_JUMPS)
    for table, chain in {(t, c) for t, c, _ in HOOK_JUMPS}:
        wanted = [r for t, c, r in HOOK_JUMPS if (t, c) == (table, chain)]
        assert ipt.rules(table, chain)[:len(wanted)] == wanted
    assert ipt.rules("filter", "INPUT")[-1] == "-s 192.0.2.1/32 -j ACCEPT"
    assert len(ipt.rules("filter", "INPUT")) == 4


def test_cleanup_removes_owned_chains_and_jumps_and_nothing_else() -> None:
    ipt = _hooked()
    ipt.ensure_jumps(HOOK_JUMPS)
    ipt.restore("*nat\n:NP-SVC-X - [0:0]\n:NP-SEP-Y - [0:0]\n-A NP-SVC-X -j NP-SEP-Y\n"
                "-A NP-SEP-Y -p tcp -j DNAT --to-destination 10.0.0.2:80\n"
                "-A NP-SERVICES -d 10.96.0.1/32 -j NP-SVC-X\n"
                ":NETPLANE-CNI-MASQ - [0:0]\n-A NETPLANE-CNI-MASQ -j MASQUERADE\n"
                "-A POSTROUTING -j NETPLANE-CNI-MASQ\nCOMMIT\n"
                "*filter\n-A INPUT -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n")
    removed = ipt.cleanup()
    assert any("chain NP-SVC-X" in r for r in removed)
    assert any("PREROUTING" in r for r in removed)
    for table in ("nat", "filter"):
        assert not [c for c in ipt.tables[table] if c.startswith("NP-")]
    assert ipt.rules("nat", "POSTROUTING") == ["-j NETPLANE-CNI-MASQ"]
    assert ipt.rules("nat", "NETPLANE-CNI-MASQ") == ["-j MASQUERADE"]
    assert ipt.rules("filter", "INPUT") == ["-s 192.0.2.1/32 -j ACCEPT"]
    assert ipt.rules("nat", "PREROUTING") == [] and ipt.rules("nat", "OUTPUT") == []
    assert ipt.cleanup() == []  # nothing left: nothing done


def test_cleanup_only_chains_are_removed_too() -> None:
    ipt = FakeIptables()
    ipt.restore("*nat\n:OLD-NAME - [0:0]\n-A OLD-NAME -j RETURN\n-A PREROUTING -j OLD-NAME\n"
                ":KEEP - [0:0]\nCOMMIT\n")
    text, removed = cleanup_restore("nat", ipt.save("nat"), cleanup_only=[("nat", "OLD-NAME")])
    ipt.restore(text)
    assert not ipt.chain_exists("nat", "OLD-NAME") and ipt.chain_exists("nat", "KEEP")
    assert ipt.rules("nat", "PREROUTING") == []
    assert removed == ["nat: rule PREROUTING -j OLD-NAME", "nat: chain OLD-NAME"]


def _tree_restore(services: int, endpoints: int, *, delete: tuple[str, ...] = ()) -> str:
    """A kube-proxy-shaped restore: NP-SERVICES → NP-SVC-i → NP-SEP-i-j (declared root first,
    the worst order for a split), plus deletions."""
    decl, rules = [":NP-SERVICES - [0:0]", ":NP-MARK-MASQ - [0:0]"], ["-A NP-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    for i in range(services):
        decl.append(f":NP-SVC-{i} - [0:0]")
        rules.append(f"-A NP-SERVICES -d 10.96.0.{i}/32 -j NP-SVC-{i}")
        for j in range(endpoints):
            decl.append(f":NP-SEP-{i}-{j} - [0:0]")
            rules.append(f"-A NP-SVC-{i} -j NP-SEP-{i}-{j}")
            rules.append(f"-A NP-SEP-{i}-{j} -s 10.0.{i}.{j}/32 -j NP-MARK-MASQ")
    decl += [f":{c} - [0:0]" for c in delete]
    return "*nat\n" + "\n".join(decl + rules + [f"-X {c}" for c in delete]) + "\nCOMMIT\n"


def test_split_keeps_small_inputs_whole() -> None:
    text = _tree_restore(2, 2)
    assert split_restore(text, 1000) == [text]
    odd = "*nat\n-I PREROUTING 1 -j NP-A\nCOMMIT\n" + text
    assert split_restore(odd, 1) == [odd]  # anything but :C/-A/-X: never reordered


def test_split_parts_apply_in_order_to_the_same_state_as_the_whole() -> None:
    base = _tree_restore(3, 2)
    whole, parts_target = FakeIptables(), FakeIptables()
    for ipt in (whole, parts_target):
        ipt.restore(base)
        ipt.restore("*nat\n:NP-OLD - [0:0]\n:NP-OLDER - [0:0]\n-A NP-OLD -j NP-OLDER\n"
                    "-A NP-SERVICES -j NP-OLD\nCOMMIT\n")
    text = _tree_restore(20, 5, delete=("NP-OLD", "NP-OLDER"))
    parts = split_restore(text, 30)
    assert len(parts) > 3
    assert all(p.count("\n-A ") <= 30 + 6 for p in parts)
    whole.restore(text)
    for part in parts:
        parts_target.restore(part)  # the fake refuses jumps to chains not created yet
    assert parts_target.tables == whole.tables
    assert not whole.chain_exists("nat", "NP-OLD")
