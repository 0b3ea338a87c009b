"""ExecIptables and detect_mode with an injected runner standing in for the binaries: which
binaries and arguments run, how failures become IptablesError, and the nft split."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

import pytest

from netplane.proxy.iptables.port import ExecIptables, FakeIptables, IptablesError, detect_mode
from netplane.proxy.iptables.ruleset import HOOK_JUMPS


class Binaries:
    """A runner: argv → (returncode, stdout, stderr); records every call. Restores are applied
    to a FakeIptables so the split output is checked by real semantics."""

    def __init__(self, outputs: Mapping[str, tuple[int, str, str]] | None = None) -> None:
        self.outputs = dict(outputs or {})
        self.calls: list[list[str]] = []
        self.inputs: list[str] = []
        self.kernel = FakeIptables()

    def __call__(self, argv: list[str], *, input: str | None = None, **_: Any):
        self.calls.append(list(argv))
        key = " ".join(argv)
        for prefix, (rc, out, err) in self.outputs.items():
            if key.startswith(prefix):
                return subprocess.CompletedProcess(argv, rc, out, err)
        if argv[:3] == ["ip", "netns", "exec"]:
            argv = argv[4:]  # the namespace prefix of one test
        if argv[0].endswith("-restore"):
            self.inputs.append(input or "")
            try:
                self.kernel.restore(input or "")
            except IptablesError as e:
                return subprocess.CompletedProcess(argv, 1, "", e.stderr)
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, self.kernel.save(argv[-1]), "")
        raise AssertionError(f"unexpected command {argv}")


LEGACY_KUBE = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n"
NFT_NP = "*nat\n:NP-SERVICES - [0:0]\n-A PREROUTING -j NP-SERVICES\nCOMMIT\n"
KUBELET = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"


@pytest.mark.parametrize("outputs, expected", [
    ({"iptables-nft-save -t mangle": (0, KUBELET, "")}, "nft"),
    ({"iptables-legacy-save": (0, KUBELET, "")}, "legacy"),
    ({"iptables-legacy-save": (0, LEGACY_KUBE, ""), "iptables-nft-save": (0, NFT_NP, "")},
     "legacy"),
    ({"iptables-legacy-save": (0, "", ""), "iptables-nft-save": (0, NFT_NP, "")}, "nft"),
    ({"iptables-legacy-save": (0, "", ""), "iptables-nft-save": (0, "", ""),
      "iptables --version": (0, "iptables v1.8.9 (legacy)\n", "")}, "legacy"),
    ({"iptables-legacy-save": (0, "", ""), "iptables-nft-save": (0, "", ""),
      "iptables --version": (0, "iptables v1.8.9 (nf_tables)\n", "")}, "nft"),
    ({"iptables-legacy-save": (1, LEGACY_KUBE, "no legacy here"), "iptables-nft-save": (0, "", ""),
      "iptables --version": (0, "iptables v1.8.9 (nf_tables)\n", "")}, "nft"),
])
def test_detect_mode(outputs, expected) -> None:
    runner = Binaries({"iptables-nft-save -t mangle": (0, "", ""), **outputs})
    assert detect_mode(runner) == expected


def test_detect_mode_counts_rules_not_chains_and_survives_missing_binaries() -> None:
    def run(argv, **_):
        if argv[0] == "iptables-legacy-save":
            raise FileNotFoundError(argv[0])
        if argv[0] == "iptables-nft-save":
            return subprocess.CompletedProcess(argv, 0, ":KUBE-X - [0:0]\n:KUBE-Y - [0:0]\n", "")
        return subprocess.CompletedProcess(argv, 0, "iptables v1.8.9 (legacy)", "")
    assert detect_mode(run) == "legacy"  # zero rules each: the alternative decides


def test_every_command_uses_the_chosen_modes_binaries_and_the_prefix() -> None:
    runner = Binaries()
    ipt = ExecIptables("legacy", run=runner, prefix=("ip", "netns", "exec", "x"))
    ipt.restore("*nat\n:NP-A - [0:0]\nCOMMIT\n")
    ipt.save("nat")
    runner.outputs["ip netns exec x iptables-legacy -w 5 -t nat -S"] = (0, "-N NP-A\n", "")
    assert ipt.chain_exists("nat", "NP-A")
    assert [c[:5] for c in runner.calls] == [
        ["ip", "netns", "exec", "x", "iptables-legacy-restore"],
        ["ip", "netns", "exec", "x", "iptables-legacy-save"],
        ["ip", "netns", "exec", "x", "iptables-legacy"]]
    assert runner.calls[0][5:] == ["-w", "5", "--noflush"]


def test_restore_failure_shows_stderr_and_the_failing_line() -> None:
    runner = Binaries({"iptables-nft-restore": (1, "", "iptables-nft-restore: line 3 failed\n")})
    ipt = ExecIptables("nft", run=runner)
    with pytest.raises(IptablesError) as err:
        ipt.restore("*nat\n:NP-A - [0:0]\n-A NP-A -j BOGUS\nCOMMIT\n")
    msg = str(err.value)
    assert "iptables-nft-restore -w 5 --noflush" in msg
    assert "line 3 failed" in msg and "input line 3: -A NP-A -j BOGUS" in msg
    assert err.value.line_number == 3


def test_chain_exists_distinguishes_missing_from_broken() -> None:
    runner = Binaries({
        "iptables-nft -w 5 -t nat -S NP-GONE": (1, "", "iptables v1.8.9 (nf_tables): chain `NP-GONE' in table `nat' is incompatible, use 'nft' tool.\nNo chain/target/match by that name.\n"),
        "iptables-nft -w 5 -t nat -S NP-BROKEN": (4, "", "Another app is currently holding the xtables lock"),
    })
    ipt = ExecIptables("nft", run=runner)
    assert not ipt.chain_exists("nat", "NP-GONE")
    with pytest.raises(IptablesError, match="xtables lock"):
        ipt.chain_exists("nat", "NP-BROKEN")


def test_chains_exist_runs_the_checks_side_by_side_and_keeps_their_order() -> None:
    import threading
    import time
    both_running = threading.Barrier(2, timeout=5)

    def run(argv, **kw):
        both_running.wait()  # deadlocks (BrokenBarrierError) unless the two run at once
        time.sleep(0.01)
        code = 0 if argv[-1] == "NP-HERE" else 1
        return subprocess.CompletedProcess(argv, code, "", "")

    ipt = ExecIptables("nft", run=run)
    assert ipt.chains_exist([("nat", "NP-GONE"), ("filter", "NP-HERE")]) == [False, True]
    broken = Binaries({
        "iptables-nft -w 5 -t nat -S NP-A": (0, "", ""),
        "iptables-nft -w 5 -t filter -S NP-A": (4, "", "Another app is currently holding the xtables lock"),
    })
    with pytest.raises(IptablesError, match="xtables lock"):
        ExecIptables("nft", run=broken).chains_exist([("nat", "NP-A"), ("filter", "NP-A")])


def test_ensure_jumps_checks_then_inserts_at_the_top_only_when_missing() -> None:
    present = HOOK_JUMPS[0]
    runner = Binaries({
        "iptables-nft -w 5 -t nat -C PREROUTING": (0, "", ""),
        "iptables-nft -w 5 -t nat -C POSTROUTING": (
            1, "", "Bad rule (does a matching rule exist in that chain?)."),
        "iptables-nft -w 5 -t nat -I POSTROUTING 1": (0, "", ""),
    })
    ExecIptables("nft", run=runner).ensure_jumps([present, HOOK_JUMPS[2]])
    ops = [(c[5], c[6]) for c in runner.calls]
    assert ops == [("-C", "POSTROUTING"), ("-I", "POSTROUTING"), ("-C", "PREROUTING")]
    insert = runner.calls[1]
    assert insert[7] == "1" and insert[-2:] == ["-j", "NP-POSTROUTING"]
    assert "netplane postrouting rules" in insert  # the quoted comment is one argument


def _big_restore(chains: int, rules_each: int) -> str:
    decl = [":NP-TOP - [0:0]"] + [f":NP-C{i} - [0:0]" for i in range(chains)]
    rules = [f"-A NP-TOP -j NP-C{i}" for i in range(chains)]
    rules += [f"-A NP-C{i} -s 10.0.0.{j}/32 -j RETURN" for i in range(chains) for j in range(rules_each)]
    return "*nat\n" + "\n".join(decl + rules) + "\nCOMMIT\n"


def test_nft_splits_large_restores_and_legacy_never_does() -> None:
    text = _big_restore(50, 10)
    nft = Binaries()
    ExecIptables("nft", run=nft, chunk_rules=100).restore(text)
    assert len(nft.inputs) >= 5
    legacy = Binaries()
    ExecIptables("legacy", run=legacy, chunk_rules=100).restore(text)
    assert legacy.inputs == [text]
    assert nft.kernel.tables == legacy.kernel.tables
    small = Binaries()
    ExecIptables("nft", run=small, chunk_rules=10_000).restore(text)
    assert small.inputs == [text]


def test_empty_restore_runs_nothing() -> None:
    runner = Binaries()
    ExecIptables("nft", run=runner).restore("")
    assert runner.calls == []


def test_cleanup_through_save_and_restore() -> None:
    runner = Binaries()
    runner.kernel.restore("*nat\n:NP-SERVICES - [0:0]\n-A PREROUTING -m comment --comment "
                          "\"netplane service portals\" -j NP-SERVICES\n-A PREROUTING -j RETURN\n"
                          "COMMIT\n")
    removed = ExecIptables("nft", run=runner).cleanup()
    assert removed == ['nat: rule PREROUTING -m comment --comment "netplane service portals" '
                       "-j NP-SERVICES", "nat: chain NP-SERVICES"]
    assert runner.kernel.rules("nat", "PREROUTING") == ["-j RETURN"]
