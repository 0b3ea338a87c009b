"""`netplane proxy` command-line handling: flags, validation errors that name the flag, the
ebpf refusal, --cleanup through the port, and that --help lists the command."""

from __future__ import annotations

import argparse

import pytest

from netplane import cli
from netplane.errors import ConfigError
from netplane.proxy import main
from netplane.proxy.iptables.port import FakeIptables


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["proxy", *argv])


def test_defaults_match_kube_proxy() -> None:
    args = parse("--node-name", "n1")
    assert (args.backend, args.min_sync_period, args.sync_period) == ("iptables", "1s", "30s")
    assert (args.metrics_addr, args.healthz_addr) == ("127.0.0.1:10249", "0.0.0.0:10256")
    assert args.iptables_mode == "auto" and not args.cleanup and not args.masquerade_all


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0),
                                           ("1.5", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert main.parse_duration(text, "--sync-period") == seconds


@pytest.mark.parametrize("bad", ["", "1d", "-1s", "fast"])
def test_bad_durations_name_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match="--min-sync-period"):
        main.parse_duration(bad, "--min-sync-period")


def test_addresses_and_cidrs() -> None:
    assert main.parse_address("127.0.0.1:10249", "--metrics-addr") == ("127.0.0.1", 10249)
    assert main.parse_address(":10256", "--healthz-addr") == ("0.0.0.0", 10256)
    with pytest.raises(ConfigError, match="--metrics-addr"):
        main.parse_address("127.0.0.1", "--metrics-addr")
    assert main.parse_cidrs("10.0.0.1/8, 192.168.0.0/16", "--nodeport-addresses") == (
        "10.0.0.0/8", "192.168.0.0/16")
    with pytest.raises(ConfigError, match="only IPv4"):
        main.parse_cidrs("fd00::/64", "--nodeport-addresses")
    with pytest.raises(ConfigError, match="'10.0.0.0/33'"):
        main.parse_cidrs("10.0.0.0/33", "--cluster-cidr")


def test_ebpf_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="ebpf: not implemented yet"):
        main.run(parse("--backend", "ebpf", "--node-name", "n1"))


def test_node_name_is_required_to_run() -> None:
    with pytest.raises(ConfigError, match="--node-name"):
        main.run(parse())


def test_invalid_settings_fail_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="--sync-period 1s is shorter"):
        main.ProxyServer(parse("--node-name", "n1", "--sync-period", "1s", "--min-sync-period", "2s"), "nft")
    with pytest.raises(ConfigError, match="--cluster-cidr"):
        main.ProxyServer(parse("--node-name", "n1", "--cluster-cidr", "nope"), "nft")


def test_cleanup_prints_what_it_removed(monkeypatch, capsys) -> None:
    kernels = {"legacy": FakeIptables("legacy"), "nft": FakeIptables("nft")}
    kernels["nft"].restore("*nat\n:NP-SERVICES - [0:0]\n-A PREROUTING -j NP-SERVICES\nCOMMIT\n")
    monkeypatch.setattr("netplane.proxy.iptables.port.ExecIptables", lambda mode: kernels[mode])
    assert main.run(parse("--cleanup")) == 0
    out = capsys.readouterr().out
    assert "removed (nft) nat: rule PREROUTING -j NP-SERVICES" in out
    assert "removed (nft) nat: chain NP-SERVICES" in out
    assert kernels["nft"].rules("nat", "PREROUTING") == []
    assert main.run(parse("--cleanup", "--iptables-mode", "legacy")) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_help_lists_the_command(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    assert "proxy" in capsys.readouterr().out
